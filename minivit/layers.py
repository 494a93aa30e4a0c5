"""Primitive modules with paired ``forward(x) -> (y, ctx)`` / ``backward(dy, ctx) -> dx``.

Conventions (DESIGN.md section 2):
- ``ctx`` holds exactly what the backward needs; nothing is kept on the module.
- ``backward`` ACCUMULATES (``+=``) into ``Parameter.grad``, so gradient
  accumulation over micro-batches needs no extra buffer.
- Leading axes are flattened to one 2-D ``(rows, features)`` array so each
  matmul is a single BLAS call; ``x2d @ W.T`` passes the transpose to BLAS
  as a flag, without a copy.
- The backward is also available as two halves, for zero-bubble pipeline
  schedules (Qi et al., "Zero Bubble Pipeline Parallelism", ICLR 2024,
  section 2): ``backward_input(dy, ctx) -> (dx, wctx)`` computes the gradient
  of the input (the critical path between pipeline stages) and returns the
  weight-gradient work left, ``backward_weight(wctx)`` accumulates it later.
  ``backward`` is their composition, and each parameter's gradient is the same
  single ``+=`` either way, so split and unsplit gradients are bitwise equal.
  Only ``Linear`` defers work (``dW = dy^T x`` and the bias sum: half the
  backward FLOPs); a LayerNorm's weight gradient is a cheap reduction fused with
  its ``dx`` in one kernel, so it stays in ``backward_input``.
"""
import numpy as np

from . import kernels
from .params import make_param


class Module:
    """Base: a module lists its Parameters in a stable order via ``parameters()``.

    Default split backward: everything in ``backward_input`` (nothing deferred).
    """

    def parameters(self):
        return []

    def backward_input(self, dy, ctx):
        return self.backward(dy, ctx), None

    def backward_weight(self, wctx):
        pass

    def __call__(self, x):
        return self.forward(x)


class Linear(Module):
    """y = x W^T + b over the last axis.

    x: (..., in_features) -> y: (..., out_features), dtype of the model.
    Parameters ``{name}.weight`` (out, in) and ``{name}.bias`` (out,), timm layout.
    """

    def __init__(self, name, in_features, out_features, dtype, seed, bias=True):
        self.name = name
        self.in_features, self.out_features = in_features, out_features
        self.weight = make_param(seed, f"{name}.weight", (out_features, in_features),
                                 "trunc_normal", dtype, decay=True)
        self.bias = (make_param(seed, f"{name}.bias", (out_features,), "zeros", dtype,
                                decay=False) if bias else None)

    def parameters(self):
        return [self.weight] + ([self.bias] if self.bias is not None else [])

    def forward(self, x):
        x2d = x.reshape(-1, self.in_features)
        y = x2d @ self.weight.data.T
        if self.bias is not None:
            kernels.add_bias_(y, self.bias.data)
        return y.reshape(*x.shape[:-1], self.out_features), x2d

    def backward(self, dy, ctx):
        # forward: y = x @ W.T + b
        dx, wctx = self.backward_input(dy, ctx)
        self.backward_weight(wctx)
        return dx

    def backward_input(self, dy, ctx):
        # forward: y = x @ W.T + b  ->  dx = dy @ W; dW and db are left in wctx
        x2d = ctx
        dy2d = dy.reshape(-1, self.out_features)
        return (dy2d @ self.weight.data).reshape(*dy.shape[:-1], self.in_features), (dy2d, x2d)

    def backward_weight(self, wctx):
        # forward: y = x @ W.T + b  ->  dW = dy^T x, db = sum over rows of dy
        dy2d, x2d = wctx
        self.weight.grad += dy2d.T @ x2d
        if self.bias is not None:
            kernels.bias_grad_(dy2d, self.bias.grad)


class LayerNorm(Module):
    """LayerNorm over the last axis (Ba et al. 2016), fused Numba kernel.

    x: (..., D) -> (..., D).  Parameters ``{name}.weight`` (ones) and
    ``{name}.bias`` (zeros), both (D,), without weight decay.
    """

    def __init__(self, name, dim, dtype, seed, eps=1e-6):
        self.name, self.dim, self.eps = name, dim, eps
        self.weight = make_param(seed, f"{name}.weight", (dim,), "ones", dtype, decay=False)
        self.bias = make_param(seed, f"{name}.bias", (dim,), "zeros", dtype, decay=False)

    def parameters(self):
        return [self.weight, self.bias]

    def forward(self, x):
        x2d = x.reshape(-1, self.dim)
        y, mean, rstd = kernels.layernorm_forward(x2d, self.weight.data, self.bias.data, self.eps)
        return y.reshape(x.shape), (x2d, mean, rstd)

    def backward(self, dy, ctx):
        # forward: y = (x - mean) * rstd * w + b
        x2d, mean, rstd = ctx
        dx = kernels.layernorm_backward(dy.reshape(-1, self.dim), x2d, mean, rstd,
                                        self.weight.data, self.weight.grad, self.bias.grad)
        return dx.reshape(dy.shape)


class GELU(Module):
    """Exact GELU, x * Phi(x) (timm's default ``nn.GELU``); any shape."""

    def forward(self, x):
        return kernels.gelu_forward(x), x

    def backward(self, dy, ctx):
        # forward: y = 0.5 * x * (1 + erf(x / sqrt(2)))
        return kernels.gelu_backward(dy, ctx)


class Sequential(Module):
    """Chain of modules; backward runs the backwards in reverse from the ctx list."""

    def __init__(self, modules):
        self.modules = list(modules)

    def parameters(self):
        return [p for m in self.modules for p in m.parameters()]

    def forward(self, x):
        ctxs = []
        for m in self.modules:
            x, c = m.forward(x)
            ctxs.append(c)
        return x, ctxs

    def backward(self, dy, ctx):
        # forward: y = f_n(... f_1(x))
        for m, c in zip(reversed(self.modules), reversed(ctx)):
            dy = m.backward(dy, c)
        return dy

    def backward_input(self, dy, ctx):
        # forward: y = f_n(... f_1(x))
        return chain_backward_input(self.modules, dy, ctx)

    def backward_weight(self, wctx):
        chain_backward_weight(self.modules, wctx)


def chain_backward_input(modules, dy, ctxs):
    """Input halves of a chain ``y = f_n(... f_1(x))``, last module first: ``(dx, wctxs)``
    with one weight context per module, in that (reversed) order."""
    wctxs = []
    for m, c in zip(reversed(modules), reversed(ctxs)):
        dy, w = m.backward_input(dy, c)
        wctxs.append(w)
    return dy, wctxs


def chain_backward_weight(modules, wctxs):
    """The weight halves left by :func:`chain_backward_input`."""
    for m, w in zip(reversed(modules), wctxs):
        m.backward_weight(w)


class Residual(Module):
    """y = x + inner(x) (the pre-LN residual branch when inner = Sequential([LN, f]))."""

    def __init__(self, inner):
        self.inner = inner

    def parameters(self):
        return self.inner.parameters()

    def forward(self, x):
        h, ctx = self.inner.forward(x)
        # inner's output is a fresh array nobody else holds (contexts keep inputs),
        # so the add goes into it instead of allocating a third (B, T, D) array
        if h.shape != x.shape or h.dtype != x.dtype or np.may_share_memory(h, x):
            return x + h, ctx
        h += x
        return h, ctx

    def backward(self, dy, ctx):
        # forward: y = x + inner(x)
        return self._add_skip(self.inner.backward(dy, ctx), dy)

    def backward_input(self, dy, ctx):
        # forward: y = x + inner(x)
        dx, wctx = self.inner.backward_input(dy, ctx)
        return self._add_skip(dx, dy), wctx

    def backward_weight(self, wctx):
        self.inner.backward_weight(wctx)

    @staticmethod
    def _add_skip(dx, dy):
        # dy may be held by a deferred weight gradient: never write into it
        if dx.shape != dy.shape or dx.dtype != dy.dtype or np.may_share_memory(dx, dy):
            return dy + dx
        dx += dy
        return dx


class MLP(Sequential):
    """fc1 -> GELU -> fc2: (..., D) -> (..., M) -> (..., D); timm names ``{name}.fc1/.fc2``."""

    def __init__(self, name, dim, hidden, dtype, seed):
        self.fc1 = Linear(f"{name}.fc1", dim, hidden, dtype, seed)
        self.act = GELU()
        self.fc2 = Linear(f"{name}.fc2", hidden, dim, dtype, seed)
        super().__init__([self.fc1, self.act, self.fc2])
