"""Multi-head self-attention with a fused softmax (Vaswani et al., "Attention Is
All You Need", NeurIPS 2017, section 3.2): softmax(Q K^T / sqrt(d_head)) V.

Layout follows timm's ``Attention``: one ``qkv`` Linear (3D, D) whose output
columns are ordered (3, heads, head_dim), then an output ``proj`` Linear (D, D).
The core softmax(scale q k^T) v runs in ``minivit.kernels_attention``: one
(batch, head) pair per Numba thread, BLAS GEMMs and the fused softmax inside.
With ``selective=True`` the core keeps only the row log-sum-exp (B, H, T) instead
of the probabilities (B, H, T, T) and rebuilds them in the backward
(``minivit.kernels_attention_lse``; Korthikanti et al. 2023, section 4.2).
"""
from .kernels_attention import attention_backward, attention_forward
from .kernels_attention_lse import attention_backward_lse, attention_forward_lse
from .layers import Linear, Module


class MultiHeadAttention(Module):
    """x: (B, T, D) -> (B, T, D).

    Parameters: ``{name}.qkv.weight`` (3D, D), ``{name}.qkv.bias`` (3D,),
    ``{name}.proj.weight`` (D, D), ``{name}.proj.bias`` (D,).
    selective : keep the row log-sum-exp (B, H, T) float64 for the backward
    instead of the probabilities (B, H, T, T); the gradients equal the
    P-keeping ones to rounding (~1e-13 relative in float64).
    Raises ValueError if dim is not divisible by heads.
    """

    selective = False     # subclasses (tensor_parallel.TensorParallelAttention) set it too

    def __init__(self, name, dim, heads, dtype, seed, selective=False):
        if dim % heads:
            raise ValueError(f"dim={dim} is not divisible by heads={heads}: "
                             "expected a multiple of the number of heads")
        self.name, self.dim, self.heads = name, dim, heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.selective = selective
        self.qkv = Linear(f"{name}.qkv", dim, 3 * dim, dtype, seed)
        self.proj = Linear(f"{name}.proj", dim, dim, dtype, seed)

    def parameters(self):
        return self.qkv.parameters() + self.proj.parameters()

    def forward(self, x):
        qkv, qkv_ctx = self.qkv.forward(x)
        # T from qkv, not x: under sequence parallelism (parallel/sequence_parallel.py)
        # x holds T/t tokens and qkv's all-gather brings all T
        b, t = qkv.shape[:2]
        # (B, T, 3 H hd) -> (B, T, 3, H, hd): a view; the kernel reads each head's q, k, v
        qkv = qkv.reshape(b, t, 3, self.heads, self.head_dim)
        # p: the probabilities (B, H, T, T), or with selective the row log-sum-exp (B, H, T)
        core = attention_forward_lse if self.selective else attention_forward
        o, p = core(qkv, self.scale)                            # o: (B, T, H, hd)
        y, proj_ctx = self.proj.forward(o.reshape(b, t, self.heads * self.head_dim))
        return y, (qkv_ctx, qkv, p, proj_ctx)

    def backward(self, dy, ctx):
        # forward: y = proj(concat_h softmax(q_h k_h^T * scale) v_h), [q, k, v] = qkv(x)
        dx, wctx = self.backward_input(dy, ctx)
        self.backward_weight(wctx)
        return dx

    def backward_input(self, dy, ctx):
        # forward: y = proj(concat_h softmax(q_h k_h^T * scale) v_h), [q, k, v] = qkv(x)
        qkv_ctx, qkv, p, proj_ctx = ctx
        b, t, _, h, hd = qkv.shape
        do, w_proj = self.proj.backward_input(dy, proj_ctx)
        core = attention_backward_lse if self.selective else attention_backward
        dqkv = core(do.reshape(b, t, h, hd), qkv, p, self.scale)    # (B, T, 3, H, hd)
        dx, w_qkv = self.qkv.backward_input(dqkv.reshape(b, t, 3 * h * hd), qkv_ctx)
        return dx, (w_proj, w_qkv)

    def backward_weight(self, wctx):
        w_proj, w_qkv = wctx
        self.proj.backward_weight(w_proj)
        self.qkv.backward_weight(w_qkv)
