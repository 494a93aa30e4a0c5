"""The attention core, softmax(scale * Q K^T) V, fused per (batch, head) and
spread over Numba threads (Vaswani et al., "Attention Is All You Need",
NeurIPS 2017, section 3.2.1).

Each (batch, head) pair is one unit of work for one Numba thread
(``prange``): it gathers its q, k, v (T, hd) from the qkv Linear's output,
computes the scores with a BLAS GEMM (Numba's ``np.dot``), the row softmax
into P (``minivit.kernels``' float64-accumulating softmax, the polynomial exp
for float32) and P V, and writes the result into the (B, T, H, hd) layout the
output projection reads.  No (B, H, T, T) scores array is allocated: only the
probabilities P, which the backward needs.

Why: NumPy's batched ``matmul`` hands BLAS one small (T, hd) matrix at a time,
too small for OpenBLAS to thread (below its 2.6e5 multiply-add threshold at
vit-micro's T=65, hd=32), and the softmax kernel in between ran on one core.
Measured on the 2-core machine, 2 threads, attention core forward / backward
per layer: vit-micro batch 128 15 / 18 ms (NumPy batched matmuls and the
row softmax kernel: 28 ms forward), vit-tiny batch 32 29 / 40 ms (43 ms
forward); PyTorch 2.13's flash attention on the same shapes 12 / 24 ms and
23 / 48 ms.  Issue 16 (AMD EPYC Zen 4, AVX-512, one thread, process CPU time,
machine loaded): the softmax writing P from a separate scores buffer (in
place it ran LLVM's scalar fallback), K and V gathered transposed and dV
computed as dO^T P took vit-tiny b32 from 26 / 38 to 18 / 33 ms per layer and
vit-micro b128 from 14 / 15 to 9 / 13 ms (docs/performance.md).  The BLAS called here must run one
thread (``minivit.threads.limit_threads`` sees to it); nested threads made it
9x slower.

Results do not depend on the thread count: no sum crosses a (batch, head)
pair.  ``minivit.kernels_ref.attention_forward/backward`` are the NumPy
references (tests/model/test_kernels_attention.py).
"""
import numpy as np
from numba import njit, prange

from .kernels import _check_scale, _softmax_bwd, _softmax_fwd, _softmax_fwd_fast


_PAIRS = 8   # (batch, head) pairs per unit of work: each unit allocates its scratch once


@njit(cache=True, inline="always")
def _gather(qkv, b, i, h, out):
    """out (T, hd) <- qkv[b, :, i, h, :] (q, k or v of one head)."""
    for t in range(out.shape[0]):
        for d in range(out.shape[1]):
            out[t, d] = qkv[b, t, i, h, d]


@njit(cache=True, inline="always")
def _gather_t(qkv, b, i, h, out):
    """out (hd, T) <- qkv[b, :, i, h, :].T: a transposed gather, so the GEMM that
    reads it gets a plain (not transposed) operand."""
    for t in range(out.shape[1]):
        for d in range(out.shape[0]):
            out[d, t] = qkv[b, t, i, h, d]


@njit(cache=True, inline="always")
def _head_buffers(t, hd, dtype):
    """Five (T, hd) scratch arrays: q, k, v and two more for the kernel's use."""
    return (np.empty((t, hd), dtype), np.empty((t, hd), dtype), np.empty((t, hd), dtype),
            np.empty((t, hd), dtype), np.empty((t, hd), dtype))


@njit(cache=True, inline="always")
def _scatter(src, b, i, h, dst):
    """dst[b, :, i, h, :] <- src (T, hd)."""
    for t in range(src.shape[0]):
        for d in range(src.shape[1]):
            dst[b, t, i, h, d] = src[t, d]


@njit(cache=True, inline="always")
def _scatter_t(src, b, i, h, dst):
    """dst[b, :, i, h, :] <- src.T, src (hd, T)."""
    for t in range(src.shape[1]):
        for d in range(src.shape[0]):
            dst[b, t, i, h, d] = src[d, t]


@njit(cache=True, parallel=True, error_model="numpy")
def _attention_fwd(qkv, scale, fast, p, o):
    nb, t, _, nh, hd = qkv.shape
    o5 = o.reshape(nb, t, 1, nh, hd)
    for unit in prange((nb * nh + _PAIRS - 1) // _PAIRS):
        # scratch allocated per unit, not per pair: a (T, T) buffer above
        # 128 kB is a fresh mmap each time, and its page faults cost as much
        # as the GEMM that fills it (measured at T=197)
        q, _, v, out, _ = _head_buffers(t, hd, qkv.dtype)
        kt = np.empty((hd, t), qkv.dtype)
        # the raw scores get their own buffer: a softmax in place (input = output)
        # fails LLVM's runtime alias check and runs its scalar loop, 2.6x slower
        # (measured, vit-tiny shapes)
        sc = np.empty((t, t), qkv.dtype)
        for bh in range(unit * _PAIRS, min(nb * nh, (unit + 1) * _PAIRS)):
            b, h = bh // nh, bh % nh
            _gather(qkv, b, 0, h, q)
            _gather_t(qkv, b, 1, h, kt)
            _gather(qkv, b, 2, h, v)
            s = p[b, h]
            np.dot(q, kt, sc)                     # raw scores
            if fast:
                _softmax_fwd_fast(sc, scale, s)
            else:
                _softmax_fwd(sc, scale, s)
            np.dot(s, v, out)
            _scatter(out, b, 0, h, o5)


@njit(cache=True, parallel=True, error_model="numpy")
def _attention_bwd(qkv, p, do, scale, dqkv):
    nb, t, _, nh, hd = qkv.shape
    do5 = do.reshape(nb, t, 1, nh, hd)
    for unit in prange((nb * nh + _PAIRS - 1) // _PAIRS):
        q, k, _, out, g = _head_buffers(t, hd, qkv.dtype)
        vt, gt, dvt = np.empty((hd, t), qkv.dtype), np.empty((hd, t), qkv.dtype), \
            np.empty((hd, t), qkv.dtype)
        dp = np.empty((t, t), qkv.dtype)          # apart from ds: see the forward's sc
        ds = np.empty((t, t), qkv.dtype)
        for bh in range(unit * _PAIRS, min(nb * nh, (unit + 1) * _PAIRS)):
            b, h = bh // nh, bh % nh
            _gather(qkv, b, 0, h, q)
            _gather(qkv, b, 1, h, k)
            _gather_t(qkv, b, 2, h, vt)
            _gather(do5, b, 0, h, g)              # dL/dO of this head
            _gather_t(do5, b, 0, h, gt)
            ph = p[b, h]
            # dV = P^T dO, computed as dV^T = dO^T P: P as a plain operand ran
            # 1.3x faster than P^T at vit-tiny shapes (measured, one thread)
            np.dot(gt, ph, dvt)
            _scatter_t(dvt, b, 2, h, dqkv)
            np.dot(g, vt, dp)                     # dP = dO V^T
            _softmax_bwd(dp, ph, scale, ds)       # dS = scale * P * (dP - rowsum(dP * P))
            np.dot(ds, k, out)                    # dQ = dS K
            _scatter(out, b, 0, h, dqkv)
            np.dot(ds.T, q, out)                  # dK = dS^T Q
            _scatter(out, b, 1, h, dqkv)


def _check_qkv(qkv):
    if qkv.ndim != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv has shape {qkv.shape}: expected (B, T, 3, H, head_dim)")
    if qkv.dtype not in (np.float32, np.float64):
        raise ValueError(f"qkv has dtype {qkv.dtype}: expected float32 or float64")
    return np.ascontiguousarray(qkv)


def attention_forward(qkv, scale):
    """Scaled dot-product attention of every (batch, head) pair.

    qkv: (B, T, 3, H, hd) float32/float64, the qkv Linear's output in timm's
    (3, heads, head_dim) column order.  scale: positive float, 1/sqrt(hd) in a ViT.
    Returns ``(o, p)``: o (B, T, H, hd), softmax(scale * q k^T) v per head,
    laid out so ``o.reshape(B, T, H * hd)`` is the proj input; p (B, H, T, T),
    the attention probabilities (kept for the backward).  Raises ValueError
    for other shapes or dtypes and for a non-positive scale.
    """
    qkv = _check_qkv(qkv)
    nb, t, _, nh, hd = qkv.shape
    scale = _check_scale(scale)
    p = np.empty((nb, nh, t, t), dtype=qkv.dtype)
    o = np.empty((nb, t, nh, hd), dtype=qkv.dtype)
    _attention_fwd(qkv, scale, qkv.dtype == np.float32, p, o)
    return o, p


def attention_backward(do, qkv, p, scale):
    """Gradient of ``attention_forward`` with respect to qkv.

    do: (B, T, H, hd), the gradient of o; qkv and p as given to and returned
    by the forward.  Returns dqkv (B, T, 3, H, hd), dtype of qkv.  Raises
    ValueError when the shapes do not fit together.
    """
    qkv = _check_qkv(qkv)
    nb, t, _, nh, hd = qkv.shape
    if do.shape != (nb, t, nh, hd) or p.shape != (nb, nh, t, t):
        raise ValueError(f"do {do.shape} / p {p.shape} do not fit qkv {qkv.shape}: expected "
                         f"{(nb, t, nh, hd)} / {(nb, nh, t, t)}")
    dqkv = np.empty_like(qkv)
    _attention_bwd(qkv, np.ascontiguousarray(p), np.ascontiguousarray(do, dtype=qkv.dtype),
                   _check_scale(scale), dqkv)
    return dqkv

