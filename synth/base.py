"""Argument checks shared by every generator (errors are raised before any work)."""
import dataclasses
import numbers

import numpy as np

from .resample import check_resample, downsample

MIN_SIZE = 8


def check_int(name, value, minimum):
    """Return ``int(value)``; ValueError naming the value unless it is an int >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


class GeneratorBase:
    """Common attributes: ``num_classes``, ``size`` (output side, pixels,
    square), ``seed``, ``render_size`` (side the formula is drawn at) and
    ``resample`` (the filter from render_size down to size).

    render_size None means ``max(size, published_render_size)``: the image is
    drawn as the published dataset draws it and shrunk with an antialiased
    filter (synth/resample.py).  ``render_size=size`` draws straight at the
    output size (faster; for speed studies).  Raises ValueError when
    render_size < size (no upsampling) or for an unknown resample filter.

    Subclasses set ``kind``, ``published_render_size`` and
    ``instances_per_class`` (None = unbounded) and implement ``draw`` (the
    image at render_size) and ``metadata``.
    """

    kind = None
    instances_per_class = None
    published_render_size = None

    def __init__(self, num_classes, size, seed=0, render_size=None, resample="box"):
        self.num_classes = check_int("num_classes", num_classes, 1)
        self.size = check_int("size", size, MIN_SIZE)
        self.seed = check_int("seed", seed, 0)
        if render_size is None:
            render_size = max(self.size, self.published_render_size or self.size)
        self.render_size = check_int("render_size", render_size, self.size)
        self.resample = check_resample(resample)

    def _check_ids(self, class_id, instance_id):
        """ValueError unless 0 <= class_id < num_classes and instance_id is in range."""
        check_int("class_id", class_id, 0)
        check_int("instance_id", instance_id, 0)
        if class_id >= self.num_classes:
            raise ValueError(f"class_id must be < num_classes={self.num_classes}, got {class_id}")
        if self.instances_per_class is not None and instance_id >= self.instances_per_class:
            raise ValueError(f"instance_id must be < instances_per_class="
                             f"{self.instances_per_class}, got {instance_id}")
        return int(class_id), int(instance_id)

    def draw(self, class_id, instance_id):
        """The image at ``render_size``: uint8 (R, R) (grey) or (R, R, 3)."""
        raise NotImplementedError

    def metadata(self, class_id, instance_id):
        """JSON-serialisable generation parameters of one image."""
        raise NotImplementedError

    def sizes(self):
        """``{"size", "render_size", "resample"}`` for metadata records."""
        return {"size": self.size, "render_size": self.render_size, "resample": self.resample}

    def render_native(self, class_id, instance_id):
        """The image in its native layout: uint8 (size, size) for grey generators,
        else (size, size, 3): ``draw`` shrunk from render_size to size.  Same
        pixels as ``render``; saves the RGB copy when encoding."""
        class_id, instance_id = self._check_ids(class_id, instance_id)
        return downsample(self.draw(class_id, instance_id), self.size, self.resample)

    def render(self, class_id, instance_id):
        """Image of ``(class_id, instance_id)``: uint8 (size, size, 3)."""
        img = self.render_native(class_id, instance_id)
        return grey_to_rgb(img) if img.ndim == 2 else img

    def render_png(self, class_id, instance_id, compress_level=None):
        """PNG bytes of ``render(class_id, instance_id)`` (greyscale PNG for grey images)."""
        from .png import COMPRESS_LEVEL, encode_png
        level = COMPRESS_LEVEL if compress_level is None else compress_level
        return encode_png(self.render_native(class_id, instance_id), level)

    def __repr__(self):
        return (f"{type(self).__name__}(num_classes={self.num_classes}, size={self.size}, "
                f"seed={self.seed}, render_size={self.render_size})")


def build_params(cls, params, overrides):
    """Instance of dataclass ``cls`` from ``params`` (an instance or None) plus keyword overrides.

    Raises ValueError naming an unknown field.
    """

    base = params if params is not None else cls()
    if not isinstance(base, cls):
        raise ValueError(f"params must be a {cls.__name__}, got {type(base).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; expected some of {sorted(names)}")
    return dataclasses.replace(base, **overrides) if overrides else base


def grey_to_rgb(img):
    """uint8 (H, W) -> (H, W, 3) with three equal channels (fastest of the NumPy ways measured)."""
    out = np.empty(img.shape + (3,), np.uint8)
    out[..., 0] = img
    out[..., 1] = img
    out[..., 2] = img
    return out
