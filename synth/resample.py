"""Downsampling from the render size to the training size (Pillow, antialiased).

The published pipelines render FractalDB at 362 px and VisualAtom at 512 px,
store those images and resize them in the training transform.  Rendering
straight at 32 px instead puts 200,000 chaos-game points on 1,024 pixels
(solid silhouettes) and turns 1-px contours into speckle, so generators render
at the published size and shrink the image here with an area filter.
"""
import numpy as np
from PIL import Image

# name -> Pillow filter; both average over the source footprint (antialiased)
RESAMPLE = {"box": Image.Resampling.BOX, "lanczos": Image.Resampling.LANCZOS}


def check_resample(name):
    """Return ``name`` if it is a known filter; ValueError naming the choices otherwise."""
    if name not in RESAMPLE:
        raise ValueError(f"resample must be one of {sorted(RESAMPLE)}, got {name!r}")
    return name


def downsample(img, size, resample="box"):
    """Shrink a square uint8 image (S, S) or (S, S, 3) to (size, size[, 3]).

    resample: "box" (area average: every source pixel counts once, so thin
    lines become grey instead of vanishing) or "lanczos" (sharper, rings a
    little).  Integer factors with "box" use ``Image.reduce`` (the same
    average, computed faster).  Returns ``img`` itself when S == size.
    Raises ValueError when size > S (no upsampling) or size < 1.
    """
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or img.shape[0] != img.shape[1]:
        raise ValueError(f"expected a square uint8 (S, S) or (S, S, 3) image, got "
                         f"{img.dtype} {img.shape}")
    src = img.shape[0]
    if not 1 <= size <= src:
        raise ValueError(f"downsample size must be in [1, {src}], got {size}")
    if size == src:
        return img
    pil = Image.fromarray(img)
    if resample == "box" and src % size == 0:
        out = pil.reduce(src // size)
    else:
        out = pil.resize((size, size), RESAMPLE[check_resample(resample)])
    return np.asarray(out)
