"""Tiny Fashion-MNIST folders for tests (no tests here): the four IDX files, written here.

CI never needs the Debian package: ``write_fashion(root, per_class_train,
per_class_test)`` writes 28x28 images whose class is readable from the
pixels (class c lights row band c), labels in shuffled order.
"""
import numpy as np

from minivit.io.fashion_mnist import FILES, write_idx


def fashion_images(labels, seed):
    """uint8 (N, 28, 28): noise plus a bright band at rows 2c..2c+2 for label c."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (len(labels), 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i, 2 * c:2 * c + 3, :] = 250
    return images


def write_fashion(root, per_class_train=12, per_class_test=3, gz=True, seed=0):
    """Write a 10-class IDX folder into ``root``; returns ``{split: labels int64 (N,)}``."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        images_name, labels_name = FILES[split]
        suffix = ".gz" if gz else ""
        write_idx(root / (images_name + suffix), fashion_images(labels, seed + len(out)))
        write_idx(root / (labels_name + suffix), labels)
        out[split] = labels.astype(np.int64)
    return out
