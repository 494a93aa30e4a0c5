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
        # (B, T, 3, H, hd) -> (3, B, H, T, hd): strided views, no copy; each (T, hd)
        # matrix has unit column stride, so matmul hands it to BLAS as it is
        qkv = qkv.reshape(b, t, 3, h, hd).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = np.matmul(q, k.transpose(0, 1, 3, 2))         # (B, H, T, T)
        # softmax(scale * scores): the scale is fused into the kernel
        p = kernels.softmax_forward(scores.reshape(-1, t), self.scale).reshape(b, h, t, t)
        # write A V straight into the (B, T, H, hd) layout proj reads: no transpose copy
        o = np.empty((b, t, h, hd), dtype=x.dtype)
        np.matmul(p, v, out=o.transpose(0, 2, 1, 3))
        y, proj_ctx = self.proj.forward(o.reshape(b, t, h * hd))
        return y, (qkv_ctx, q, k, v, p, proj_ctx)

    def backward(self, dy, ctx):
        # forward: y = proj(concat_h softmax(q_h k_h^T * scale) v_h), [q, k, v] = qkv(x)
        qkv_ctx, q, k, v, p, proj_ctx = ctx
        b, h, t, hd = q.shape
        do = self.proj.backward(dy, proj_ctx)                  # (B, T, D)
        do = do.reshape(b, t, h, hd).transpose(0, 2, 1, 3)     # (B, H, T, hd) view
        # dq, dk, dv are written into their slots of the qkv gradient (B, T, 3, H, hd)
        dqkv = np.empty((b, t, 3, h, hd), dtype=q.dtype)
        slots = dqkv.transpose(2, 0, 3, 1, 4)                  # (3, B, H, T, hd) view
        dp = np.matmul(do, v.transpose(0, 1, 3, 2))            # (B, H, T, T)
        np.matmul(p.transpose(0, 1, 3, 2), do, out=slots[2])   # dv
        ds = kernels.softmax_backward(dp.reshape(-1, t), p.reshape(-1, t),
                                      self.scale).reshape(b, h, t, t)
        np.matmul(ds, k, out=slots[0])                         # dq
        np.matmul(ds.transpose(0, 1, 3, 2), q, out=slots[1])   # dk
        return self.qkv.backward(dqkv.reshape(b, t, 3 * h * hd), qkv_ctx)
