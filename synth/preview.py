"""Preview grid: one instance per class, for a quick look at a generator."""
import math

import numpy as np
from PIL import Image


def preview_grid(generator, num_classes=16, instance_id=0, tile=128, columns=None, gap=2,
                 resample=Image.BILINEAR):
    """uint8 (H, W, 3) grid of ``generator.render(c, instance_id)`` for the first
    ``num_classes`` classes (fewer if the generator has fewer).

    Each image is resized to ``tile`` x ``tile`` pixels (Pillow filter
    ``resample``, bilinear by default; ``Image.NEAREST`` shows small training
    images pixel for pixel; no resize if it already has that size); ``gap``
    pixels of black between tiles; ``columns`` defaults to ceil(sqrt(n)).
    """
    n = min(num_classes, generator.num_classes)
    if n < 1 or tile < 1:
        raise ValueError(f"need num_classes >= 1 and tile >= 1, got {num_classes}, {tile}")
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * (tile + gap) - gap, columns * (tile + gap) - gap, 3), np.uint8)
    for c in range(n):
        img = generator.render(c, instance_id)
        if img.shape[0] != tile:
            img = np.asarray(Image.fromarray(img).resize((tile, tile), resample))
        r, q = divmod(c, columns)
        grid[r * (tile + gap):r * (tile + gap) + tile, q * (tile + gap):q * (tile + gap) + tile] = img
    return grid


def save_preview(path, generator, **kwargs):
    """Write ``preview_grid(generator, **kwargs)`` as a PNG to ``path``; returns the grid."""
    grid = preview_grid(generator, **kwargs)
    Image.fromarray(grid).save(path, format="PNG")
    return grid
