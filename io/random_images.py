"""``--data random``: a deterministic in-memory dataset of random images with fixed labels.

Sample ``i`` has the label ``i % num_classes`` and the image
``prototype[label] + noise_i``, where the per-class prototype and the
per-sample noise are standard normal draws seeded by ``(seed, class)`` and
``(seed, i)``.  The sum is stored as uint8, ``clip(128 + 32 v, 0, 255)``, so it
goes through the ``Loader`` like any other source (the one rule for which
samples a rank reads).  The class signal is as strong as the noise, so the
loss falls within tens of steps: what a smoke test of the training loop needs.
Nothing is stored, so any image size works.
"""
import numpy as np

# pixel = 128 + SCALE * (prototype + noise): 4 standard deviations of the sum
# (std sqrt(2)) stay inside 0..255 for all but a few pixels
SCALE = 32.0


def _normal(seed, stream, index, shape):
    """Standard normal float64 draws of ``shape`` from the stream ``(seed, stream, index)``."""
    return np.random.default_rng([seed, stream, index]).standard_normal(shape)


class RandomImages:
    """Random images with fixed labels: ``ds[i] -> (uint8 (S, S, 3), int label)``.

    num_samples : images in one epoch (>= 1).  image_size : side S in pixels.
    num_classes : labels ``0 .. num_classes - 1``.  seed : int >= 0.
    Raises ValueError for a count below 1 or a negative seed.
    """

    on_error = "raise"

    def __init__(self, num_samples, image_size, num_classes, seed=0):
        for name, value in (("num_samples", num_samples), ("image_size", image_size),
                            ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive integer")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed={seed!r}: expected an integer >= 0")
        self.num_samples, self.num_classes = int(num_samples), int(num_classes)
        self.image_size, self.seed = int(image_size), int(seed)
        self.labels = np.arange(self.num_samples, dtype=np.int64) % self.num_classes

    def __len__(self):
        return self.num_samples

    def __getitem__(self, i):
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range: {self.num_samples} samples")
        shape = (self.image_size, self.image_size, 3)
        label = int(self.labels[i])
        value = _normal(self.seed, 0, label, shape) + _normal(self.seed, 1, int(i), shape)
        return np.clip(np.rint(128.0 + SCALE * value), 0, 255).astype(np.uint8), label
