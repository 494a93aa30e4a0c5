"""Augmentation primitives: crop boxes, copied crops, flip, normalisation."""
import numpy as np
import pytest

from minivit.io import Augment
from minivit.io.augment import (Transform, center_box, normalize_into, random_resized_crop_box,
                                resize_crop)


def test_crop_boxes_inside_image_and_within_limits():
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(500):
        top, left, h, w = random_resized_crop_box(40, 60, rng, (0.2, 0.9), (0.5, 2.0))
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60
        areas.append(h * w / 2400)
    # rounding moves the area a little past the nominal bounds
    assert 0.17 < min(areas) < 0.3 and 0.8 < max(areas) < 0.95


def test_crop_fallback_is_central_and_clamped():
    rng = np.random.default_rng(0)   # a 1x100 strip: no sampled crop fits the ratio
    assert random_resized_crop_box(1, 100, rng, (0.5, 1.0), (3 / 4, 4 / 3)) == (0, 49, 1, 1)
    assert center_box(10, 20) == (0, 5, 10, 10)


def test_resize_crop_is_a_copy_and_exact_for_identity_box():
    img = np.random.default_rng(1).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    out = resize_crop(img, (2, 3, 8, 8), 8)
    assert out.shape == (8, 8, 3) and not np.shares_memory(out, img)
    np.testing.assert_array_equal(out, img[2:10, 3:11])
    assert resize_crop(img, (0, 0, 12, 12), 6).shape == (6, 6, 3)


def test_normalize_and_flip():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = np.empty((3, 2, 3), np.float32)
    mean, std = np.array([0.0, 0.5, 1.0], np.float32), np.array([1.0, 0.5, 2.0], np.float32)
    normalize_into(out, img, mean, std, flip=True)
    want = (img[:, ::-1].transpose(2, 0, 1) / 255.0 - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


def test_transform_eval_resizes_center_square():
    img = np.zeros((8, 12, 3), np.uint8)
    img[:, 2:10] = 255        # the central 8x8 square is white, the borders black
    out = np.empty((3, 4, 4), np.float32)
    Transform(4)(img, None, out)
    np.testing.assert_allclose(out, 1.0)


def test_augment_is_deterministic_per_rng_and_validates():
    img = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    t = Transform(8, Augment())
    a, b = np.empty((3, 8, 8), np.float32), np.empty((3, 8, 8), np.float32)
    t(img, np.random.default_rng(7), a)
    t(img, np.random.default_rng(7), b)
    np.testing.assert_array_equal(a, b)
    for bad in (dict(scale=(0, 1)), dict(ratio=(2, 1)), dict(hflip=1.5)):
        with pytest.raises(ValueError, match="Augment"):
            Augment(**bad)
