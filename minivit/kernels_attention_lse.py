"""The attention core with selective activation recomputation: the forward keeps
only the row log-sum-exp L of the scores, the backward rebuilds the
probabilities P from q, k and L.

Korthikanti et al., "Reducing Activation Recomputation in Large Transformer
Models", MLSys 2023, section 4.2 (selective recomputation; Megatron-LM's
``--recompute-granularity selective``) drop the attention core's (T, T)
tensors and recompute them in the backward.  The rebuild follows
FlashAttention's backward (Dao et al., NeurIPS 2022, section 3.1 and
Algorithm 4): with L = scale * max_j S_ij + log sum_j exp(scale (S_ij - max)),
P = exp(scale * S - L), one pass over S instead of the softmax's three.

Why: P (B, H, T, T) is the ``H T`` term of ``parallel.cost.block_ctx_bytes``,
16% of a vit-tiny block's context at T = 197 and 36% at 384 px (T = 577), and
it grows as T^2.  L is (B, H, T) float64, T times smaller.  Cost: one more
(T, hd) x (hd, T) GEMM and one exp pass per (batch, head) pair in the
backward (docs/parallelism.md, "Selective recompute", for the measured time).

The forward is ``minivit.kernels_attention``'s own kernel (it writes L
instead of P), so o is bitwise the P-keeping path's.  The backward is that
module's, with P rebuilt into per-unit scratch; the rebuilt P differs from
the kept one by rounding only (float64: ~1e-16 relative; float32, whose
forward uses ``minivit.math32``'s polynomial exp: ~1e-6), so dqkv equals the
P-keeping path's to ~1e-13 (float64).  Results do not depend on the thread
count (no sum crosses a (batch, head) pair).
"""
import math

import numpy as np
from numba import njit, prange

from . import math32 as m32
from .blas import NOTRANS, TRANS, addr, gemm
from .kernels import _check_scale
from .kernels_attention import _PAIRS, _check_backward, _in_qkv, _pair_backward, _forward


@njit(cache=True, error_model="numpy")
def _probs_from_lse(s, scale, lse, p):
    # P = exp(scale * S - L) per row, in float64 as _softmax_fwd's exponentials
    rows, n = s.shape
    for r in range(rows):
        lr = lse[r]
        for j in range(n):
            p[r, j] = math.exp(s[r, j] * scale - lr)


@njit(cache=True, fastmath=True, error_model="numpy")
def _probs_from_lse_fast(s, scale, lse, p):
    # float32: the polynomial exp of _softmax_fwd_fast, with its float32 scale
    # (L was taken with it); scale * S - L <= 0 up to rounding, which exp32_split's
    # truncation maps to k = 0
    rows, n = s.shape
    sc = np.float32(scale)
    bits = np.empty(n, np.int32)
    pow2 = bits.view(np.float32)
    for r in range(rows):
        lr = np.float32(lse[r])
        for j in range(n):
            y, k = m32.exp32_split(s[r, j] * sc - lr)
            p[r, j] = y
            bits[j] = m32.pow2_bits(k)
        for j in range(n):
            p[r, j] *= pow2[j]


@njit(cache=True, parallel=True, error_model="numpy")
def _attention_bwd_lse(qkv, lse, do, scale, fast, dqkv):
    nb, t, _, nh, hd = qkv.shape
    one, zero = np.ones(1, qkv.dtype), np.zeros(1, qkv.dtype)
    for unit in prange((nb * nh + _PAIRS - 1) // _PAIRS):
        # per-unit scratch (kernels_attention._attention_fwd says why): S then dP
        # share sd, P and dS have their own (a softmax in place runs scalar)
        sd = np.empty((t, t), qkv.dtype)
        pr = np.empty((t, t), qkv.dtype)
        ds = np.empty((t, t), qkv.dtype)
        for bh in range(unit * _PAIRS, min(nb * nh, (unit + 1) * _PAIRS)):
            b, h = bh // nh, bh % nh
            q, k = _in_qkv(qkv, b, 0, h), _in_qkv(qkv, b, 1, h)
            ld3 = 3 * nh * hd
            gemm(NOTRANS, TRANS, t, t, hd, one, q, ld3, k, ld3, zero, addr(sd, 0), t)  # S = q k^T
            if fast:
                _probs_from_lse_fast(sd, scale, lse[b, h], pr)     # P = exp(scale S - L)
            else:
                _probs_from_lse(sd, scale, lse[b, h], pr)
            _pair_backward(pr, qkv, do, dqkv, b, h, scale, sd, ds)   # as with a kept P


def attention_forward_lse(qkv, scale):
    """Scaled dot-product attention keeping only the row log-sum-exp for the backward.

    qkv: (B, T, 3, H, hd) float32/float64 (as ``kernels_attention.attention_forward``);
    scale: positive float.  Returns ``(o, lse)``: o (B, T, H, hd), bitwise equal
    to ``attention_forward``'s; lse (B, H, T) float64, L = log sum_j exp(scale S_ij)
    per query row (for float32 models with the float32-rounded scale the forward
    used).  Raises ValueError for other shapes or dtypes and a non-positive scale.
    """
    return _forward(qkv, scale, keep_p=False)


def attention_backward_lse(do, qkv, lse, scale):
    """Gradient of ``attention_forward_lse`` with respect to qkv, P rebuilt from lse.

    do: (B, T, H, hd), the gradient of o; qkv and lse as given to and returned
    by the forward.  Returns dqkv (B, T, 3, H, hd), dtype of qkv.  Raises
    ValueError when the shapes do not fit together.
    """
    qkv, do = _check_backward(do, qkv, lse, "lse", t_axes=1)
    dqkv = np.empty_like(qkv)
    _attention_bwd_lse(qkv, np.ascontiguousarray(lse, dtype=np.float64), do,
                       _check_scale(scale), qkv.dtype == np.float32, dqkv)
    return dqkv
