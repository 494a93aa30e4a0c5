"""Per-unit ZeRO partitioning of a flat parameter buffer, padded for any dp size.

Each unit (embed, block i, head) is a contiguous range ``[a, b)`` of the flat
buffer with ``n = b - a`` elements.  It is cut into ``p`` equal blocks of
``k = ceil(n / p)`` elements (the unit is padded with ``p k - n`` zeros at its
end), and rank ``r`` owns block ``r``: flat elements ``[a + r k, min(a + (r+1) k, b))``.
Padding per unit, rather than once for the whole buffer, lets ZeRO-3 gather a
single unit with one equal-block ``MPI_Allgather`` (FSDP's per-module
FlatParameter, Zhao et al. 2023, section 3.2).

The *shard vector* of a rank concatenates its blocks, unit by unit:
``sum_u k_u`` elements, padding included (always zero).  Example, units of
10 and 3 elements over p = 3 (k = 4 and 1)::

    unit 0: rank0 [0:4]  rank1 [4:8]  rank2 [8:10]+2 pad      unit 1: [10] [11] [12]
    rank 2 shard vector: [e8 e9 0 0 | e12]

The second half of the file builds a model straight into these shard vectors,
unit by unit, for ZeRO-3 (:func:`build_sharded`): no rank holds the full model.
"""
from math import ceil

import numpy as np

from minivit.params import FlatParams


class ShardLayout:
    """Where rank ``rank`` of ``p`` finds its blocks.

    unit_ranges : list of ``(start, stop)`` flat-buffer ranges, contiguous and in order.
    Attributes: ``blocks`` (k_u per unit), ``offsets`` (start of unit u in the
    shard vector), ``numel`` (shard-vector length).
    Raises ValueError for p < 1, a rank outside [0, p) or ranges that are not
    contiguous from 0.
    """

    def __init__(self, unit_ranges, p, rank):
        if p < 1 or not 0 <= rank < p:
            raise ValueError(f"rank={rank}, p={p}: expected p >= 1 and 0 <= rank < p")
        expect = 0
        for a, b in unit_ranges:
            if a != expect or b <= a:
                raise ValueError(f"unit range ({a}, {b}): expected contiguous non-empty ranges "
                                 f"starting at {expect}")
            expect = b
        self.ranges = [tuple(r) for r in unit_ranges]
        self.p, self.rank = p, rank
        self.blocks = [ceil((b - a) / p) for a, b in self.ranges]
        self.offsets = list(np.cumsum([0] + self.blocks[:-1]).tolist())
        self.numel = sum(self.blocks)
        self.total = expect

    def owned(self, u):
        """``(lo, hi)``: the flat range of unit ``u`` owned by this rank (may be empty)."""
        a, b = self.ranges[u]
        k = self.blocks[u]
        lo = min(a + self.rank * k, b)
        return lo, min(lo + k, b)

    def shard_view(self, shard, u, owned_only=False):
        """Unit ``u``'s block (``k_u`` elements, or only the owned, non-padding part)."""
        off = self.offsets[u]
        if owned_only:
            lo, hi = self.owned(u)
            return shard[off:off + hi - lo]
        return shard[off:off + self.blocks[u]]

    def extract(self, full, dtype=None):
        """This rank's shard vector of a full flat array (padding filled with zeros)."""
        if full.shape != (self.total,):
            raise ValueError(f"full buffer shape {full.shape}: expected ({self.total},)")
        out = np.zeros(self.numel, dtype=dtype or full.dtype)
        for u in range(len(self.ranges)):
            lo, hi = self.owned(u)
            self.shard_view(out, u, owned_only=True)[...] = full[lo:hi]
        return out

    def gather_unit(self, comm, shard, u, out=None):
        """All-gather unit ``u`` from every rank's shard vector.

        Returns the padded unit, ``p * k_u`` elements; the first ``n_u`` are the
        parameters (``comm`` is the dp :class:`Communicator`).
        """
        k = self.blocks[u]
        if out is None:
            out = np.empty(self.p * k, dtype=shard.dtype)
        return comm.allgather(self.shard_view(shard, u), out)

    def unit_size(self, u):
        a, b = self.ranges[u]
        return b - a


# ------------------------------ sharded construction (ZeRO-3)
# ZeRO-3 partitions the parameters (Rajbhandari et al. 2020, "ZeRO", section 5.1,
# P_os+g+p), but a model that is first built whole and then sharded needs the
# full 4 Psi bytes of parameters (and the gradient and decay-mask buffers) on
# every rank at construction.  FSDP meets the same problem with deferred
# initialisation (Zhao et al. 2023, "PyTorch FSDP", section 3.1, "Deferred
# Initialization"): each module is materialised, sharded and freed in turn.
#
# Here: the flat layout (offsets, unit ranges, ``ShardLayout``) is known from
# the parameter shapes alone (``cost.vit_param_specs``), so the shard vectors are
# allocated once at their final size.  Then each unit is built, its parameters'
# owned elements are copied into the shards, and its arrays are dropped before
# the next unit is built.  A rank therefore holds at most one full unit plus its
# shards (``tests/parallel/test_zero_init.py`` counts the bytes).  Initialisation
# is a pure function of ``(seed, name)`` (``minivit.params.init_tensor``), so the
# shards are bitwise the slices ``ShardLayout.extract`` takes of the full model.


class ZeroShards:
    """This rank's ZeRO-3 shard vectors of a model built by :func:`build_sharded`.

    Attributes: ``layout`` (``shard.ShardLayout`` over ``p`` ranks),
    ``param_shard`` (1-D, ``layout.numel`` elements of the model dtype; padding
    zero) and ``decay_shard`` (the same length, numpy bool like
    ``FlatParams.decay_mask``; padding False), ``norm_weight`` (the shard of the 0/1
    gradient-norm weight of a tensor-parallel model, or None).
    ``ZeroOptimizer`` takes them over (and sets the attributes to None).
    """

    def __init__(self, layout, dtype, norm_weight):
        self.layout = layout
        self.param_shard = np.zeros(layout.numel, dtype)
        self.decay_shard = np.zeros(layout.numel, bool)
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
            views["decay_shard"][a - own_lo:b - own_lo] = prm.decay
            if "norm_weight" in views and norm_counted(prm):
                views["norm_weight"][a - own_lo:b - own_lo] = 1.0
        prm.data = prm.grad = None
