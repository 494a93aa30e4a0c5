"""Multi-head self-attention with a fused softmax (Vaswani et al., "Attention Is
All You Need", NeurIPS 2017, section 3.2): softmax(Q K^T / sqrt(d_head)) V.

Layout follows timm's ``Attention``: one ``qkv`` Linear (3D, D) whose output
columns are ordered (3, heads, head_dim), then an output ``proj`` Linear (D, D).
Scores and the weighted sum are batched matmuls over (B, H), which NumPy sends
to BLAS per (batch, head) matrix without a Python loop.
"""
import numpy as np

from . import kernels
from .layers import Linear, Module


class MultiHeadAttention(Module):
    """x: (B, T, D) -> (B, T, D).

    Parameters: ``{name}.qkv.weight`` (3D, D), ``{name}.qkv.bias`` (3D,),
    ``{name}.proj.weight`` (D, D), ``{name}.proj.bias`` (D,).
    Raises ValueError if dim is not divisible by heads.
    """

    def __init__(self, name, dim, heads, dtype, seed):
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}: "
                             "expected a multiple of the number of heads")
        self.name, self.dim, self.heads = name, dim, heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = Linear(f"{name}.qkv", dim, 3 * dim, dtype, seed)
        self.proj = Linear(f"{name}.proj", dim, dim, dtype, seed)

    def parameters(self):
        return self.qkv.parameters() + self.proj.parameters()

    def forward(self, x):
        b, t, d = x.shape
        h, hd = self.heads, self.head_dim
        qkv, qkv_ctx = self.qkv.forward(x)
        # (B, T, 3, H, hd) -> (3, B, H, T, hd)
        qkv = qkv.reshape(b, t, 3, h, hd).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = np.matmul(q, k.transpose(0, 1, 3, 2))
        scores *= self.scale
        p = kernels.softmax_forward(scores.reshape(-1, t)).reshape(b, h, t, t)
        o = np.matmul(p, v)                                    # (B, H, T, hd)
        o = np.ascontiguousarray(o.transpose(0, 2, 1, 3)).reshape(b, t, h * hd)
        y, proj_ctx = self.proj.forward(o)
        return y, (qkv_ctx, q, k, v, p, proj_ctx)

    def backward(self, dy, ctx):
        # forward: y = proj(concat_h softmax(q_h k_h^T * scale) v_h), [q, k, v] = qkv(x)
        qkv_ctx, q, k, v, p, proj_ctx = ctx
        b, h, t, hd = q.shape
        do = self.proj.backward(dy, proj_ctx)                  # (B, T, D)
        do = do.reshape(b, t, h, hd).transpose(0, 2, 1, 3)     # (B, H, T, hd)
        dp = np.matmul(do, v.transpose(0, 1, 3, 2))            # (B, H, T, T)
        dv = np.matmul(p.transpose(0, 1, 3, 2), do)
        ds = kernels.softmax_backward(dp.reshape(-1, t), p.reshape(-1, t)).reshape(b, h, t, t)
        ds *= self.scale
        dq = np.matmul(ds, k)
        dk = np.matmul(ds.transpose(0, 1, 3, 2), q)
        # (3, B, H, T, hd) -> (B, T, 3, H, hd), the qkv output layout
        dqkv = np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(b, t, 3 * h * hd)
        return self.qkv.backward(np.ascontiguousarray(dqkv), qkv_ctx)
