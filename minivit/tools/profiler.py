"""Time per operator class of a training step (``run/bench.py train --breakdown``).

The hot path carries no profiling code.  ``Profiler`` wraps the ``forward`` and
``backward`` (and the split halves ``backward_input``/``backward_weight``) of
each module *instance* of a model with a timer (an instance
attribute that shadows the class method, removed again on ``close()``).  Times are
**exclusive**: a parent's time excludes the time of the timed calls inside it,
so the classes add up to the step.

Classes:
- ``matmul``: ``Linear`` forward/backward (GEMMs, bias add, bias-gradient sum),
  timed also per GEMM name (``qkv``, ``proj``, ``fc1``, ``fc2``, ``head``:
  ``minivit.flops.linear_gemms``) for the in-step vs isolated comparison;
- ``embed``: the patch embedding (patchify, its GEMMs, class token, positions);
- ``attention``: ``MultiHeadAttention`` less its qkv/proj Linears: the fused
  attention core of ``minivit.kernels_attention`` (Q K^T, softmax, P V and
  their gradients in one kernel, so softmax has no row of its own);
- ``layernorm``, ``gelu``: the fused Numba kernels;
- ``copies``: residual adds, pooling and zero-filled gradients of the head;
- ``optimizer``: gradient norm and the fused AdamW update;
- ``other``: the rest of the step (loss, zero_grad, Python between calls).
"""
import time
from dataclasses import dataclass

import numpy as np

from ..attention import MultiHeadAttention
from ..layers import GELU, LayerNorm, Linear, Module, Residual
from ..model import Embed, Head
from ..optim import clip_grad_norm_
from ..loss import cross_entropy_backward, cross_entropy_forward

CLASSES = ("matmul", "attention", "embed", "layernorm", "gelu", "copies", "optimizer",
           "other")
_KIND = ((Linear, "matmul"), (LayerNorm, "layernorm"), (GELU, "gelu"),
         (MultiHeadAttention, "attention"), (Residual, "copies"), (Embed, "embed"),
         (Head, "copies"))
_METHODS = ("forward", "backward", "backward_input", "backward_weight")


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
        self.gemms = {}             # exclusive seconds per Linear GEMM name (qkv, fc1, ...)
        self._stack = []            # child time accumulated inside each open timer
        self._wrapped = []
        for unit in model.units:
            for m in _modules(unit):
                kind = next((k for cls, k in _KIND if isinstance(m, cls)), None)
                if kind is not None:
                    key = m.name.rsplit(".", 1)[-1] if isinstance(m, Linear) else None
                    # the split halves too: MultiHeadAttention.backward calls its
                    # Linears' backward_input/backward_weight, not their backward
                    for meth in _METHODS:
                        setattr(m, meth, self._timed(getattr(m, meth), kind, key))
                    self._wrapped.append(m)

    def _timed(self, fn, kind, key=None):
        def wrapper(*args, **kwargs):
            self._stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                own = elapsed - self._stack.pop()
                self.totals[kind] += own
                if key is not None:
                    self.gemms[key] = self.gemms.get(key, 0.0) + own
                if self._stack:
                    self._stack[-1] += elapsed
        return wrapper

    def section(self, kind, fn, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` timed as class ``kind``."""
        return self._timed(fn, kind)(*args, **kwargs)

    def close(self):
        """Remove every wrapper (restores the class methods)."""
        for m in self._wrapped:
            for meth in _METHODS:
                delattr(m, meth)
        self._wrapped = []


@dataclass
class Breakdown:
    """Median seconds per step: ``rows`` [(class, s)] in ``CLASSES`` order, ``total``
    (the step), ``gemms`` {Linear GEMM name: s} (forward + backward of those Linears)."""
    rows: list
    total: float
    gemms: dict


def breakdown(model, optimizer, x, y, steps, warmup, clip=1.0):
    """Time the step of ``minivit.train.train_step`` per operator class.

    Runs zero_grad, forward, loss, backward, clip and AdamW ``warmup`` +
    ``steps`` times and returns a :class:`Breakdown` of the timed steps'
    medians, ``other`` being the step time not inside any timer.
    """
    prof = Profiler(model)
    per_step, totals, gemms = [], [], []
    try:
        for i in range(warmup + steps):
            prof.totals, prof.gemms = dict.fromkeys(CLASSES, 0.0), {}
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
                gemms.append(dict(prof.gemms))
                totals.append(total)
    finally:
        prof.close()
    rows = [(k, float(np.median([s[k] for s in per_step]))) for k in CLASSES]
    names = gemms[0] if gemms else {}
    return Breakdown(rows, float(np.median(totals)),
                     {k: float(np.median([g[k] for g in gemms])) for k in names})
