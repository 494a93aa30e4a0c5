"""Sharded construction for ZeRO-3: build a model unit by unit, keep only this rank's shards.

ZeRO-3 partitions the parameters (Rajbhandari et al. 2020, "ZeRO", section 5.1,
P_os+g+p), but a model that is first built whole and then sharded needs the
full 4 Psi bytes of parameters (and the gradient and decay-mask buffers) on
every rank at construction.  FSDP meets the same problem with deferred
initialisation (Zhao et al. 2023, "PyTorch FSDP", section 3.1, "Deferred
Initialization"): each module is materialised, sharded and freed in turn.

Here: the flat layout (offsets, unit ranges, ``ShardLayout``) is known from
the parameter shapes alone (``cost.vit_param_specs``), so the shard vectors are
allocated once at their final size.  Then each unit is built, its parameters'
owned elements are copied into the shards, and its arrays are dropped before
the next unit is built.  A rank therefore holds at most one full unit plus its
shards (``tests/parallel/test_zero_init.py`` counts the bytes).  Initialisation
is a pure function of ``(seed, name)`` (``minivit.params.init_tensor``), so the
shards are bitwise the slices ``ShardLayout.extract`` takes of the full model.
"""
import numpy as np

from minivit.params import FlatParams

from .shard import ShardLayout


class ZeroShards:
    """This rank's ZeRO-3 shard vectors of a model built by :func:`build_sharded`.

    Attributes: ``layout`` (``shard.ShardLayout`` over ``p`` ranks),
    ``param_shard`` and ``decay_shard`` (1-D, ``layout.numel`` elements of the
    model dtype; padding zero), ``norm_weight`` (the shard of the 0/1
    gradient-norm weight of a tensor-parallel model, or None).
    ``ZeroOptimizer`` takes them over (and sets the attributes to None).
    """

    def __init__(self, layout, dtype, norm_weight):
        self.layout = layout
        self.param_shard = np.zeros(layout.numel, dtype)
        self.decay_shard = np.zeros(layout.numel, dtype)
        self.norm_weight = np.zeros(layout.numel, dtype) if norm_weight else None

    def nbytes(self):
        """Bytes of the shard vectors still held here."""
        arrays = (self.param_shard, self.decay_shard, self.norm_weight)
        return sum(a.nbytes for a in arrays if a is not None)


def unit_ranges(specs):
    """``[(start, stop)]`` flat ranges of units given as ``[[(name, shape), ...] per unit]``."""
    ranges, start = [], 0
    for unit in specs:
        size = sum(int(np.prod(shape, dtype=np.int64)) for _, shape in unit)
        ranges.append((start, start + size))
        start += size
    return ranges


def build_sharded(builders, specs, dtype, p, rank, norm_counted=None):
    """Build the units one at a time and keep rank ``rank`` of ``p``'s ZeRO-3 shards.

    builders : one zero-argument callable per unit, in flat-buffer order, each
        returning the unit (``parameters()`` in the order of its spec).
    specs : ``[[(name, shape), ...] per unit]``, this rank's parameter shapes
        (after any tensor-parallel slicing), used to allocate the shards once.
    dtype : model dtype.  p, rank : dp size and this rank's dp coordinate.
    norm_counted : None, or ``f(param) -> bool``: whether the parameter counts
        in the global gradient norm (tensor parallelism; ``ModelShard.norm_weight``).
    Returns ``(units, flat, shards)``: the units, whose parameters' ``data``
    and ``grad`` are None (ZeRO-3 gathers them per unit); a buffer-less
    ``FlatParams.layout``; a :class:`ZeroShards`.
    Raises ValueError when a built unit's names or shapes differ from ``specs``.
    """
    layout = ShardLayout(unit_ranges(specs), p, rank)
    shards = ZeroShards(layout, dtype, norm_counted is not None)
    units, params = [], []
    for u, build in enumerate(builders):
        unit = build()
        _take_unit(unit, u, specs[u], shards, norm_counted)
        units.append(unit)       # its parameters' arrays are gone: the next unit may come
        params += unit.parameters()
    shapes = [shape for spec in specs for _, shape in spec]
    return units, FlatParams.layout(params, shapes, dtype), shards


def _take_unit(unit, u, spec, shards, norm_counted):
    """Copy unit ``u``'s owned elements into ``shards``; drop its parameters' arrays."""
    layout = shards.layout
    got = [(prm.name, tuple(prm.shape)) for prm in unit.parameters()]
    want = [(name, tuple(shape)) for name, shape in spec]
    if got != want:
        raise ValueError(f"unit {u}: built parameters {got}, expected {want} (the "
                         "shapes the shards were allocated for)")
    own_lo, own_hi = layout.owned(u)
    views = {key: layout.shard_view(getattr(shards, key), u, owned_only=True)
             for key in ("param_shard", "decay_shard", "norm_weight")
             if getattr(shards, key) is not None}
    start = layout.ranges[u][0]
    for prm in unit.parameters():
        lo, hi = start, start + prm.size
        start = hi
        a, b = max(lo, own_lo), min(hi, own_hi)
        if a < b:       # the part of this tensor inside this rank's block of the unit
            views["param_shard"][a - own_lo:b - own_lo] = prm.data.ravel()[a - lo:b - lo]
            views["decay_shard"][a - own_lo:b - own_lo] = 1.0 if prm.decay else 0.0
            if "norm_weight" in views and norm_counted(prm):
                views["norm_weight"][a - own_lo:b - own_lo] = 1.0
        prm.data = prm.grad = None
