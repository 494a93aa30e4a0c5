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
"""
from math import ceil

import numpy as np


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
