"""minivit.synth: formula-driven image generators.

Every generator is a pure function ``(dataset_seed, class_id, instance_id) ->
uint8 image (H, W, 3)``.  Imports nothing from ``minivit`` model code,
``minivit.parallel`` or mpi4py (DESIGN.md section 1).  The Numba kernels
release the GIL (``nogil=True``), so a loader's thread pool renders in
parallel; generator objects may be shared between threads (their caches only
ever gain entries that are the same whoever computes them).

    >>> gen = make_generator("fractaldb", num_classes=10, size=64, seed=0)
    >>> img = gen.render(3, 17)          # uint8 (64, 64, 3)
    >>> meta = gen.metadata(3, 17)       # JSON-serialisable parameters
"""
from .base import GeneratorBase
from .fractaldb import CategorySearchError, FractalDBGenerator, FractalDBParams
from .newton import NewtonGenerator, NewtonParams
from .onepfrac import OnePFracGenerator, OnePFracParams
from .png import decode_png, encode_png
from .visualatom import VisualAtomGenerator, VisualAtomParams

# kind -> generator class
GENERATORS = {
    "fractaldb": FractalDBGenerator,
    "visualatom": VisualAtomGenerator,
    "newton": NewtonGenerator,
    "onepfrac": OnePFracGenerator,
}


def make_generator(kind, num_classes, size, seed=0, **params):
    """Build the generator of ``kind`` ("fractaldb", "visualatom", "newton" or "onepfrac").

    num_classes: int >= 1; size: output image side in pixels, int >= 8; seed:
    dataset seed, int >= 0; params: fields of the kind's parameter dataclass
    (FractalDBParams, VisualAtomParams, NewtonParams, OnePFracParams) or options:
    ``render_size`` (side drawn at; default the published one, see
    GeneratorBase), ``resample`` ("box" or "lanczos"), FractalDB's
    ``categories`` / ``categories_dir``.
    Raises ValueError naming the bad value (unknown kind, num_classes <= 0,
    size < 8, render_size < size, unknown parameter).
    """
    if kind not in GENERATORS:
        raise ValueError(f"unknown generator kind {kind!r}; expected one of {sorted(GENERATORS)}")
    return GENERATORS[kind](num_classes, size, seed, **params)


__all__ = ["GENERATORS", "make_generator", "GeneratorBase", "CategorySearchError",
           "FractalDBGenerator", "FractalDBParams", "VisualAtomGenerator", "VisualAtomParams",
           "NewtonGenerator", "NewtonParams",
           "OnePFracGenerator", "OnePFracParams", "encode_png", "decode_png"]
