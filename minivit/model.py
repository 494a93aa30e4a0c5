"""The Vision Transformer (Dosovitskiy et al., ICLR 2021, section 3.1, eqs. 1-4)
as a list of **units** with explicit forward/backward pairs.

``ViT.units`` = ``[embed, blocks.0, ..., blocks.{L-1}, head]``.  A unit is any
object with ``forward(x) -> (y, ctx)``, ``backward(dy, ctx) -> dx`` and
``parameters()``; ``ViT.forward`` only chains them, so ZeRO-3 or a pipeline
stage can replace a unit with a wrapper of the same interface.  Parameter names
and shapes are timm's ``VisionTransformer`` ones, and the flat buffer holds the
parameters of one unit contiguously, units in model order.
"""
import numpy as np

from .attention import MultiHeadAttention
from .config import ViTConfig
from .layers import (MLP, LayerNorm, Linear, Module, Residual, Sequential,
                     chain_backward_input, chain_backward_weight)
from .params import FlatParams, make_param


class Block(Sequential):
    """Pre-LN transformer block: x + Attn(LN1(x)), then x + MLP(LN2(x)); (B, T, D) -> (B, T, D).

    selective : the attention core keeps the row log-sum-exp, not P
    (``MultiHeadAttention``; selective activation recompute)."""

    def __init__(self, name, config, seed, selective=False):
        c, dt = config, config.dtype
        self.name = name
        self.norm1 = LayerNorm(f"{name}.norm1", c.dim, dt, seed, c.ln_eps)
        self.attn = MultiHeadAttention(f"{name}.attn", c.dim, c.heads, dt, seed, selective)
        self.norm2 = LayerNorm(f"{name}.norm2", c.dim, dt, seed, c.ln_eps)
        self.mlp = MLP(f"{name}.mlp", c.dim, c.mlp_dim, dt, seed)
        super().__init__([Residual(Sequential([self.norm1, self.attn])),
                          Residual(Sequential([self.norm2, self.mlp]))])


class Embed(Module):
    """Patchify + linear projection (a conv with stride = patch), class token, position embedding.

    x: (B, C, H, W) -> (B, T, D) with T = N + 1 (class token) or N.
    Parameters (timm order): ``cls_token`` (1, 1, D), ``pos_embed`` (1, T, D),
    ``patch_embed.proj.weight`` (D, C, p, p), ``patch_embed.proj.bias`` (D,).
    """

    name = "embed"

    def __init__(self, config, seed):
        c, dt = config, config.dtype
        self.config = c
        self.cls_token = (make_param(seed, "cls_token", (1, 1, c.dim), "trunc_normal", dt,
                                     decay=False) if c.class_token else None)
        self.pos_embed = make_param(seed, "pos_embed", (1, c.seq_len, c.dim), "trunc_normal",
                                    dt, decay=False)
        p = c.patch_size
        self.weight = make_param(seed, "patch_embed.proj.weight", (c.dim, c.in_chans, p, p),
                                 "trunc_normal", dt, decay=True)
        self.bias = make_param(seed, "patch_embed.proj.bias", (c.dim,), "zeros", dt, decay=False)

    def parameters(self):
        head = [self.cls_token] if self.cls_token is not None else []
        return head + [self.pos_embed, self.weight, self.bias]

    def _patchify(self, x):
        # (B, C, gh, p, gw, p) -> (B, gh, gw, C, p, p): flattened in the (C, p, p)
        # order of the conv weight, so weight.reshape(D, C*p*p) is the linear map.
        b, ch, hgt, wid = x.shape
        p = self.config.patch_size
        g_h, g_w = hgt // p, wid // p
        x6 = x.reshape(b, ch, g_h, p, g_w, p).transpose(0, 2, 4, 1, 3, 5)
        return x6.reshape(b * g_h * g_w, ch * p * p)

    def forward(self, x):
        c = self.config
        b = x.shape[0]
        patches = self._patchify(x)                                  # (B*N, C*p*p)
        w2d = self.weight.data.reshape(c.dim, -1)
        emb = (patches @ w2d.T + self.bias.data).reshape(b, c.num_patches, c.dim)
        if self.cls_token is not None:
            cls = np.broadcast_to(self.cls_token.data, (b, 1, c.dim))
            emb = np.concatenate([cls, emb], axis=1)
        emb += self.pos_embed.data
        return emb, (patches, x.shape)

    def backward(self, dy, ctx):
        # forward: y = concat(cls, patchify(x) @ W.T + b) + pos
        dx, wctx = self.backward_input(dy, ctx)
        self.backward_weight(wctx)
        return dx

    def backward_weight(self, wctx):
        # forward: emb = patches @ W.T + b  ->  dW = demb^T patches, db = sum of demb
        demb, patches = wctx
        self.weight.grad.reshape(self.config.dim, -1)[...] += demb.T @ patches
        self.bias.grad += demb.sum(axis=0)

    def backward_input(self, dy, ctx):
        # forward: y = concat(cls, patchify(x) @ W.T + b) + pos; the position and class
        # token gradients are cheap sums and stay here, dW and db go to backward_weight
        patches, x_shape = ctx
        c = self.config
        self.pos_embed.grad += dy.sum(axis=0, keepdims=True)
        if self.cls_token is not None:
            self.cls_token.grad += dy[:, :1].sum(axis=0, keepdims=True)
            dy = dy[:, 1:]
        demb = np.ascontiguousarray(dy).reshape(-1, c.dim)            # (B*N, D)
        dpatches = demb @ self.weight.data.reshape(c.dim, -1)
        b, ch, hgt, wid = x_shape
        p = c.patch_size
        dx6 = dpatches.reshape(b, hgt // p, wid // p, ch, p, p).transpose(0, 3, 1, 4, 2, 5)
        return dx6.reshape(x_shape), (demb, patches)


class Head(Module):
    """Pool (class token, or mean of tokens without one), final LN, linear classifier.

    x: (B, T, D) -> logits (B, K).  Parameters ``norm.*`` (``fc_norm.*`` for
    mean pooling, as timm names it) and ``head.weight`` (K, D), ``head.bias`` (K,).
    LN is per token, so normalising only the pooled class token equals timm's
    normalise-all-then-pick, at 1/T of the cost.
    """

    name = "head"

    def __init__(self, config, seed):
        c = config
        self.class_token = c.class_token
        self.norm = LayerNorm("norm" if c.class_token else "fc_norm", c.dim, c.dtype, seed,
                              c.ln_eps)
        self.fc = Linear("head", c.dim, c.num_classes, c.dtype, seed)

    def parameters(self):
        return self.norm.parameters() + self.fc.parameters()

    def forward(self, x):
        pooled = x[:, 0] if self.class_token else x.mean(axis=1)
        h, norm_ctx = self.norm.forward(np.ascontiguousarray(pooled))
        logits, fc_ctx = self.fc.forward(h)
        return logits, (x.shape, norm_ctx, fc_ctx)

    def backward(self, dy, ctx):
        # forward: logits = fc(LN(pool(x)))
        dx, wctx = self.backward_input(dy, ctx)
        self.backward_weight(wctx)
        return dx

    def backward_input(self, dy, ctx):
        # forward: logits = fc(LN(pool(x))); fc's dW and db go to backward_weight
        x_shape, norm_ctx, fc_ctx = ctx
        dh, wctx = self.fc.backward_input(dy, fc_ctx)
        dpooled = self.norm.backward(dh, norm_ctx)
        dx = np.zeros(x_shape, dtype=dpooled.dtype)
        if self.class_token:
            dx[:, 0] = dpooled
        else:
            dx += dpooled[:, None, :] / x_shape[1]
        return dx, wctx

    def backward_weight(self, wctx):
        self.fc.backward_weight(wctx)


class ViT:
    """Vision Transformer built from ``config`` with deterministic init from ``seed``.

    forward(x): x (B, C, H, W) of ``config.dtype`` -> ``(logits (B, K), ctx)``.
    backward(dlogits, ctx): accumulates into ``flat.grad``; returns dx (B, C, H, W).
    selective : every block's attention core keeps only its row log-sum-exp and
    rebuilds P in the backward (selective activation recompute, ``Block``).
    Attributes: ``units``, ``unit_names``, ``flat`` (FlatParams), ``config``.
    Raises ValueError on a wrong input shape or dtype, before any compute.
    """

    def __init__(self, config, seed=0, selective=False):
        if not isinstance(config, ViTConfig):
            raise ValueError(f"config={config!r}: expected a ViTConfig")
        self.config, self.seed = config, seed
        blocks = [Block(f"blocks.{i}", config, seed, selective) for i in range(config.depth)]
        self.units = [Embed(config, seed), *blocks, Head(config, seed)]
        self.unit_names = ["embed", *(b.name for b in blocks), "head"]
        self.flat = FlatParams(self.parameters(), config.dtype)

    def parameters(self):
        """All Parameters in flat-buffer order (unit by unit)."""
        return [p for u in self.units for p in u.parameters()]

    def unit_ranges(self):
        """``[(start, stop)]`` of each unit's contiguous slice of the flat buffer."""
        ranges = []
        for u in self.units:
            ps = u.parameters()
            ranges.append((self.flat.offsets[ps[0].name][0], self.flat.offsets[ps[-1].name][1]))
        return ranges

    @property
    def num_params(self):
        return self.flat.numel

    def zero_grad(self):
        self.flat.zero_grad()

    def check_input(self, x):
        c = self.config
        expected = (c.in_chans, c.image_size, c.image_size)
        if not isinstance(x, np.ndarray):
            raise ValueError(f"input of type {type(x).__name__}: expected a numpy array")
        if x.ndim != 4 or x.shape[1:] != expected or x.shape[0] < 1:
            raise ValueError(f"input shape {x.shape}: expected (B, {', '.join(map(str, expected))})"
                             " with B >= 1")
        if x.dtype != np.dtype(c.dtype):
            raise ValueError(f"input dtype {x.dtype}: expected {c.dtype} (the model's dtype)")

    def forward(self, x):
        self.check_input(x)
        ctxs = []
        for unit in self.units:
            x, ctx = unit.forward(x)
            ctxs.append(ctx)
        return x, ctxs

    def backward(self, dlogits, ctx):
        # forward: logits = head(blocks(embed(x)))
        dy = dlogits
        for unit, c in zip(reversed(self.units), reversed(ctx)):
            dy = unit.backward(dy, c)
        return dy

    def backward_input(self, dlogits, ctx):
        """The input half of :meth:`backward`: ``(dx, wctx)``, the weight gradients
        left in ``wctx`` for :meth:`backward_weight` (zero-bubble pipelines)."""
        # forward: logits = head(blocks(embed(x)))
        return chain_backward_input(self.units, dlogits, ctx)

    def backward_weight(self, wctx):
        """Accumulate the weight gradients :meth:`backward_input` left."""
        chain_backward_weight(self.units, wctx)
