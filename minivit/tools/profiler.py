"""Time per operator class of a training step (``run/bench.py train --breakdown``).

The hot path carries no profiling code.  ``Profiler`` wraps the ``forward`` and
``backward`` of each module *instance* of a model with a timer (an instance
attribute that shadows the class method, removed again on ``close()``).  Times are
**exclusive**: a parent's time excludes the time of the timed calls inside it,
so the classes add up to the step.

Classes:
- ``matmul``: ``Linear`` forward/backward (GEMMs, bias add, bias-gradient sum)
  and the patch-embedding GEMMs;
- ``attention``: ``MultiHeadAttention`` less its qkv/proj Linears: the fused
  attention core of ``minivit.kernels_attention`` (Q K^T, softmax, P V and
  their gradients in one kernel, so softmax has no row of its own);
- ``layernorm``, ``gelu``: the fused Numba kernels;
- ``copies``: residual adds, patchify/concatenate/position add of the
  embedding, pooling and zero-filled gradients of the head;
- ``optimizer``: gradient norm and the fused AdamW update;
- ``other``: the rest of the step (loss, zero_grad, Python between calls).
"""
import time

import numpy as np

from ..attention import MultiHeadAttention
from ..layers import GELU, LayerNorm, Linear, Module, Residual
from ..model import Embed, Head
from ..optim import clip_grad_norm_
from ..loss import cross_entropy_backward, cross_entropy_forward

CLASSES = ("matmul", "attention", "layernorm", "gelu", "copies", "optimizer",
           "other")
_KIND = ((Linear, "matmul"), (LayerNorm, "layernorm"), (GELU, "gelu"),
         (MultiHeadAttention, "attention"), (Residual, "copies"), (Embed, "copies"),
         (Head, "copies"))


def _modules(root):
    """Every Module reachable from ``root`` through attributes and lists, once each."""
    seen, order, todo = set(), [], [root]
    while todo:
        m = todo.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        order.append(m)
        for value in vars(m).values():
            items = value if isinstance(value, (list, tuple)) else [value]
            todo.extend(v for v in items if isinstance(v, Module))
    return order


class Profiler:
    """Exclusive timers per operator class over the modules of ``model`` (a ViT)."""

    def __init__(self, model):
        self.totals = dict.fromkeys(CLASSES, 0.0)
        self._stack = []            # child time accumulated inside each open timer
        self._wrapped = []
        for unit in model.units:
            for m in _modules(unit):
                kind = next((k for cls, k in _KIND if isinstance(m, cls)), None)
                if kind is not None:
                    for meth in ("forward", "backward"):
                        setattr(m, meth, self._timed(getattr(m, meth), kind))
                    self._wrapped.append(m)

    def _timed(self, fn, kind):
        def wrapper(*args, **kwargs):
            self._stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                children = self._stack.pop()
                self.totals[kind] += elapsed - children
                if self._stack:
                    self._stack[-1] += elapsed
        return wrapper

    def section(self, kind, fn, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` timed as class ``kind``."""
        return self._timed(fn, kind)(*args, **kwargs)

    def close(self):
        """Remove every wrapper (restores the class methods)."""
        for m in self._wrapped:
            del m.forward, m.backward
        self._wrapped = []


def breakdown(model, optimizer, x, y, steps, warmup, clip=1.0):
    """Median seconds per step of each operator class, and the median step time.

    Runs the step of ``minivit.train.train_step`` (zero_grad, forward, loss,
    backward, clip, AdamW) ``warmup`` + ``steps`` times.  Returns
    ``([(class, seconds)], total_seconds)``, ``other`` being the step time
    not inside any timer.
    """
    prof = Profiler(model)
    per_step, totals = [], []
    try:
        for i in range(warmup + steps):
            prof.totals = dict.fromkeys(CLASSES, 0.0)
            t0 = time.perf_counter()
            model.zero_grad()
            logits, ctx = model.forward(x)
            loss, lctx = cross_entropy_forward(logits, y)
            model.backward(cross_entropy_backward(lctx), ctx)
            prof.section("optimizer", clip_grad_norm_, model.flat.grad, clip)
            prof.section("optimizer", optimizer.step, 1e-4)
            total = time.perf_counter() - t0
            if i >= warmup:
                prof.totals["other"] = total - sum(prof.totals.values())
                per_step.append(dict(prof.totals))
                totals.append(total)
    finally:
        prof.close()
    rows = [(k, float(np.median([s[k] for s in per_step]))) for k in CLASSES]
    return rows, float(np.median(totals))
