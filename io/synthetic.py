"""``SyntheticSource``: the dataset interface over on-the-fly synthetic images.

No storage: ``source[i]`` renders the image with a ``minivit.synth``
generator.  Sample ``i`` is class ``i // n`` and instance ``instances[i % n]``
with ``n = len(instances)``, so disjoint instance ranges give disjoint splits,
e.g. ``instances=range(0, 900)`` to train and ``range(900, 1000)`` to evaluate.
The generators are pure functions of ``(seed, class_id, instance_id)``, so
the samples do not depend on thread or rank counts.
"""
import numpy as np


def _resolve_instances(instances, per_class):
    if instances is None:
        if per_class is None:
            raise ValueError("this generator has unbounded instances per class: "
                             "pass instances=N or a range")
        instances = range(per_class)
    elif isinstance(instances, (int, np.integer)) and not isinstance(instances, bool):
        instances = range(int(instances))
    try:
        instances = range(instances.start, instances.stop, instances.step) \
            if isinstance(instances, range) else np.asarray(instances, dtype=np.int64)
    except (TypeError, ValueError):
        raise ValueError(f"instances must be None, an int or a sequence of ints, "
                         f"got {instances!r}") from None
    if len(instances) == 0:
        raise ValueError("instances is empty: no samples to render")
    lo, hi = min(instances), max(instances)
    if lo < 0 or (per_class is not None and hi >= per_class):
        raise ValueError(f"instances must lie in [0, {per_class}), got {lo}..{hi}")
    return instances


class SyntheticSource:
    """Synthetic samples with the ``ShardDataset`` interface.

    Args:
        kind: generator name for ``minivit.synth.make_generator``.
        classes: number of classes.
        size: image side in pixels.
        seed: dataset seed.
        instances: ``None`` (all the generator has), an int ``n`` (``range(n)``)
            or a sequence/range of instance ids.
        generator: an already built generator (``render(class_id, instance_id)
            -> uint8 (size, size, 3)`` and ``instances_per_class``); then
            ``kind`` and ``params`` are not used.
        **params: passed to ``make_generator``; e.g. ``render_size=size``
            draws straight at ``size`` instead of at the published render
            size followed by downsampling (see docs/data.md).

    ``source[i] -> (uint8 (size, size, 3), label int)``.  Raises
    ``ValueError`` for bad arguments, ``IndexError`` for ``i`` out of range.
    """

    on_error = "raise"   # rendering has no damaged samples to skip

    def __init__(self, kind, classes, size, seed=0, instances=None, generator=None, **params):
        if generator is None:
            from minivit.synth import make_generator  # lazy: io must not need synth
            generator = make_generator(kind, classes, size, seed=seed, **params)
        self.kind, self.generator = kind, generator
        self.num_classes, self.image_size, self.seed = int(classes), int(size), seed
        self.instances = _resolve_instances(instances,
                                            getattr(generator, "instances_per_class", None))
        self._n = len(self.instances)

    def __len__(self):
        return self.num_classes * self._n

    @property
    def labels(self):
        """``int64 (N,)`` class of every sample, without rendering."""
        return np.arange(len(self), dtype=np.int64) // self._n

    def __getitem__(self, i):
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"sample index must be an int, got {type(i).__name__}")
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample index {i} out of range for {len(self)} samples")
        class_id, k = divmod(int(i) % len(self), self._n)
        image = self.generator.render(class_id, int(self.instances[k]))
        if image.dtype != np.uint8 or image.shape != (self.image_size, self.image_size, 3):
            raise ValueError(f"generator {self.kind!r} returned {image.dtype} {image.shape}, "
                             f"expected uint8 ({self.image_size}, {self.image_size}, 3)")
        return image, class_id

    def __repr__(self):
        return (f"SyntheticSource({self.kind!r}, classes={self.num_classes}, "
                f"size={self.image_size}, seed={self.seed}, instances={len(self.instances)})")
