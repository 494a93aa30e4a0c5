"""Per-sample transforms: random-resized-crop, horizontal flip, normalisation.

Random-resized-crop is the Inception crop (Szegedy et al., "Going deeper with
convolutions", CVPR 2015, section 6) with the parameters torchvision and timm
use: area fraction uniform in ``scale``, log aspect ratio uniform in
``log(ratio)``, ten attempts, then a central crop clamped to ``ratio``.

A crop is resampled by Pillow into a new image, so it never is a view that
keeps the whole decoded image alive.  The flip and the uint8 -> float32
normalisation happen in one pass that writes into the caller's batch slot.
"""
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Augment:
    """Training augmentation settings.

    ``scale``: crop area as a fraction of the image area; ``ratio``: crop
    width / height; ``hflip``: probability of a horizontal flip.
    """
    scale: tuple = (0.08, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    hflip: float = 0.5

    def __post_init__(self):
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"Augment.scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")
        lo, hi = self.ratio
        if not 0 < lo <= hi:
            raise ValueError(f"Augment.ratio must satisfy 0 < lo <= hi, got {self.ratio}")
        if not 0 <= self.hflip <= 1:
            raise ValueError(f"Augment.hflip must be a probability, got {self.hflip}")


def random_resized_crop_box(height, width, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """``(top, left, crop_h, crop_w)`` in pixels for an image of ``height x width``.

    ``rng`` is a ``numpy.random.Generator``.  Same sampling rule as
    ``torchvision.transforms.RandomResizedCrop.get_params``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    aspect = width / height  # fallback: the largest central crop within ``ratio``
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def center_box(height, width):
    """``(top, left, side, side)`` of the largest central square (evaluation crop)."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def resize_crop(image, box, size):
    """Crop ``box`` of ``image`` (uint8 (H, W, 3)) resized to a new uint8 (size, size, 3).

    Bilinear resampling with Pillow; the result never shares memory with
    ``image``.
    """
    top, left, h, w = box
    # Crop first: Pillow's ``resize(box=...)`` would let the filter support
    # reach pixels outside the box when downsampling.
    crop = Image.fromarray(np.ascontiguousarray(image[top:top + h, left:left + w]))
    if (h, w) != (size, size):
        crop = crop.resize((size, size), Image.BILINEAR)
    return np.array(crop)


def normalize_into(out, image, mean, std, flip=False):
    """Write ``(image / 255 - mean) / std`` as channel-first float32 into ``out``.

    ``out``: float32 ``(3, S, S)``; ``image``: uint8 ``(S, S, 3)``; ``mean``,
    ``std``: float32 ``(3,)`` in [0, 1] units.  ``flip`` mirrors left-right.
    """
    src = image[:, ::-1] if flip else image
    np.copyto(out, src.transpose(2, 0, 1), casting="unsafe")
    out -= (mean * 255.0)[:, None, None]
    out *= (1.0 / (std * 255.0))[:, None, None]


class Transform:
    """uint8 ``(H, W, 3)`` -> float32 ``(3, size, size)`` written in place.

    ``augment``: an ``Augment`` for training, or ``None`` for evaluation
    (largest central square, resized to ``size`` only if it differs).
    """

    def __init__(self, size, augment=None, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
        self.size, self.augment = size, augment
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        if self.mean.shape != (3,) or self.std.shape != (3,) or np.any(self.std <= 0):
            raise ValueError(f"mean and std must be 3 values with std > 0, got {mean}, {std}")

    def __call__(self, image, rng, out):
        """Transform ``image``; ``rng`` (a Generator) is used only when augmenting."""
        h, w = image.shape[:2]
        flip = False
        if self.augment is not None:
            a = self.augment
            box = random_resized_crop_box(h, w, rng, a.scale, a.ratio)
            image = resize_crop(image, box, self.size)
            flip = a.hflip > 0 and rng.random() < a.hflip
        elif (h, w) != (self.size, self.size):
            image = resize_crop(image, center_box(h, w), self.size)
        normalize_into(out, image, self.mean, self.std, flip)
