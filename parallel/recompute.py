"""Activation recomputation (checkpointing) per transformer block.

Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost", section 3;
used per layer by Megatron-LM (Shoeybi et al. 2019; Korthikanti et al. 2022,
section 4 "full recomputation").

A wrapped block keeps only its input ``x`` (B, T, D) as ``ctx`` and rebuilds
the full context by running its forward again at the top of its backward.
The forward is deterministic, so the rebuilt context, and therefore every
gradient, is bitwise equal to the run without recompute.  Cost: one extra
block forward per micro-batch (and, under tensor parallelism, its 2 extra
all-reduces, ``cost.tp_comm_elements(recompute=True)``).
"""
import numpy as np

from .units import UnitWrapper


class Recompute(UnitWrapper):
    """Wrap a unit (``forward(x) -> (y, ctx)``, ``backward(dy, ctx) -> dx``).

    forward(x): runs the unit, drops its ctx, returns ``(y, x)``.
    backward(dy, x): re-runs ``unit.forward(x)`` and differentiates it.
    """

    def forward(self, x):
        y, _ = self.unit.forward(x)
        return y, x

    def backward(self, dy, ctx):
        # forward: y = unit(x); ctx = x only, so rebuild unit's ctx first
        _, inner = self.unit.forward(ctx)
        return self.unit.backward(dy, inner)

    def backward_input(self, dy, ctx):
        # forward: y = unit(x); the rebuilt ctx lives on in the weight work until W
        _, inner = self.unit.forward(ctx)
        return self.unit.backward_input(dy, inner)


def ctx_nbytes(ctx):
    """Bytes of the distinct arrays referenced by ``ctx`` (nested tuples/lists/dicts).

    Views are charged to their base array once, so ``x`` and ``x.reshape(...)``
    count once.  Non-array leaves (shapes, None) count 0.
    """
    seen = {}
    stack = [ctx]
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray):
            base = item
            while isinstance(base.base, np.ndarray):
                base = base.base
            seen[id(base)] = base.nbytes
        elif isinstance(item, (tuple, list)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return sum(seen.values())
