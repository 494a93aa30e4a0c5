"""The attention core, softmax(scale * Q K^T) V, fused per (batch, head) and
spread over Numba threads (Vaswani et al., "Attention Is All You Need",
NeurIPS 2017, section 3.2.1).

Each (batch, head) pair is one unit of work for one Numba thread
(``prange``).  Its q, k and v are read in place from the qkv Linear's output
(B, T, 3, H, hd): each is a (T, hd) matrix with row stride 3 H hd, which BLAS
takes as its leading dimension (``minivit.blas.gemm``).  The scores are one
GEMM into a (T, T) scratch, the row softmax (``minivit.kernels``'
float64-accumulating softmax, the polynomial exp for float32) writes P, and
P v is written straight into the (B, T, H, hd) layout the output projection
reads.  No (B, H, T, T) scores array is allocated: only P, which the
backward needs.  The backward writes dq, dk, dv into dqkv the same way.

Why: NumPy's batched ``matmul`` hands BLAS one small (T, hd) matrix at a time,
too small for OpenBLAS to thread (below its 2.6e5 multiply-add threshold at
vit-micro's T=65, hd=32), and the softmax kernel in between ran on one core.
Measured on the 2-core machine, 2 threads, attention core forward / backward
per layer: vit-micro batch 128 15 / 18 ms (NumPy batched matmuls and the
row softmax kernel: 28 ms forward), vit-tiny batch 32 29 / 40 ms (43 ms
forward); PyTorch 2.13's flash attention on the same shapes 12 / 24 ms and
23 / 48 ms.  Issue 16 (AMD EPYC Zen 4, AVX-512, one thread): the softmax
writing P from a separate scores buffer (in place it ran LLVM's scalar
fallback) and dV computed from a plain P took vit-tiny b32 from 26 / 38 to
18 / 33 ms per layer.  Reading and writing the qkv layout in place instead of
copying each head's q, k, v, dO out and dq, dk, dv back (eight (T, hd)
copies per pair, 5.4 ms of the backward), and computing dV after the softmax
backward has brought P into cache, took it to 16.3 / 27.8 ms (vit-micro
b128: 9.3 / 12.9 to 8.2 / 10.1 ms; docs/performance.md).  The BLAS called
here must run one thread (``minivit.threads.limit_threads`` sees to it);
nested threads made it 9x slower.

Results do not depend on the thread count: no sum crosses a (batch, head)
pair.  ``minivit.kernels_ref.attention_forward/backward`` are the NumPy
references (tests/model/test_kernels_attention.py).
"""
import numpy as np
from numba import njit, prange

from .blas import NOTRANS, TRANS, addr, gemm
from .kernels import _check_scale, _softmax_bwd, _softmax_fwd, _softmax_fwd_fast


_PAIRS = 8   # (batch, head) pairs per unit of work: each unit allocates its scratch once


@njit(cache=True, inline="always")
def _in_qkv(x, b, i, h):
    """Address of the first element of head h's q (i=0), k (1) or v (2) in
    batch b of x (B, T, 3, H, hd): a (T, hd) matrix with row stride 3 H hd."""
    _, t, _, nh, hd = x.shape
    return addr(x, ((b * t * 3 + i) * nh + h) * hd)


@njit(cache=True, inline="always")
def _in_heads(x, b, h):
    """Address of head h of batch b in x (B, T, H, hd): row stride H hd."""
    _, t, nh, hd = x.shape
    return addr(x, (b * t * nh + h) * hd)


@njit(cache=True, parallel=True, error_model="numpy")
def _attention_fwd(qkv, scale, fast, p, lse, o):
    # keeps P in p (B, H, T, T) when p has rows, else only the row log-sum-exp
    # in lse (B, H, T) float64 (selective recompute, minivit.kernels_attention_lse)
    nb, t, _, nh, hd = qkv.shape
    ld3, ld = 3 * nh * hd, nh * hd              # row strides of qkv and o
    one, zero = np.ones(1, qkv.dtype), np.zeros(1, qkv.dtype)
    keep_p = p.shape[0] > 0
    for unit in prange((nb * nh + _PAIRS - 1) // _PAIRS):
        # scratch allocated per unit, not per pair: a (T, T) buffer above
        # 128 kB is a fresh mmap each time, and its page faults cost as much
        # as the GEMM that fills it (measured at T=197).  The raw scores get
        # their own buffer: a softmax in place (input = output) fails LLVM's
        # runtime alias check and runs its scalar loop, 2.6x slower (measured,
        # vit-tiny shapes)
        sc = np.empty((t, t), qkv.dtype)
        pr = np.empty((0 if keep_p else t, t), qkv.dtype)   # P's scratch when not kept
        none = np.empty(0, np.float64)
        for bh in range(unit * _PAIRS, min(nb * nh, (unit + 1) * _PAIRS)):
            b, h = bh // nh, bh % nh
            q, k, v = _in_qkv(qkv, b, 0, h), _in_qkv(qkv, b, 1, h), _in_qkv(qkv, b, 2, h)
            # S = q k^T, q and k read in place from the qkv layout
            gemm(NOTRANS, TRANS, t, t, hd, one, q, ld3, k, ld3, zero, addr(sc, 0), t)
            s = p[b, h] if keep_p else pr
            lh = none if keep_p else lse[b, h]
            if fast:
                _softmax_fwd_fast(sc, scale, s, lh)
            else:
                _softmax_fwd(sc, scale, s, lh)
            # O = P v, written in place into o's (B, T, H, hd) layout
            gemm(NOTRANS, NOTRANS, t, hd, t, one, addr(s, 0), t, v, ld3, zero,
                 _in_heads(o, b, h), ld)


@njit(cache=True, parallel=True, error_model="numpy")
def _attention_bwd(qkv, p, do, scale, dqkv):
    nb, t, _, nh, _ = qkv.shape
    for unit in prange((nb * nh + _PAIRS - 1) // _PAIRS):
        dp = np.empty((t, t), qkv.dtype)          # apart from ds: see the forward's sc
        ds = np.empty((t, t), qkv.dtype)
        for bh in range(unit * _PAIRS, min(nb * nh, (unit + 1) * _PAIRS)):
            b, h = bh // nh, bh % nh
            _pair_backward(p[b, h], qkv, do, dqkv, b, h, scale, dp, ds)


@njit(cache=True, inline="always")
def _pair_backward(ph, qkv, do, dqkv, b, h, scale, dp, ds):
    """Given head h's probabilities ph (T, T) in batch b: dq, dk, dv of that head into
    dqkv, in place; dp and ds (T, T) are scratch.  Shared by the P-keeping backward
    and the selective one (``minivit.kernels_attention_lse``), which rebuilds ph."""
    _, t, _, nh, hd = qkv.shape
    ld3, ld = 3 * nh * hd, nh * hd
    one, zero = np.ones(1, qkv.dtype), np.zeros(1, qkv.dtype)
    q, k, v = _in_qkv(qkv, b, 0, h), _in_qkv(qkv, b, 1, h), _in_qkv(qkv, b, 2, h)
    dq, dk, dv = _in_qkv(dqkv, b, 0, h), _in_qkv(dqkv, b, 1, h), _in_qkv(dqkv, b, 2, h)
    g = _in_heads(do, b, h)               # dL/dO of this head
    gemm(NOTRANS, TRANS, t, t, hd, one, g, ld, v, ld3, zero, addr(dp, 0), t)  # dP = dO v^T
    _softmax_bwd(dp, ph, scale, ds)       # dS = scale * P * (dP - rowsum(dP * P))
    # dV = P^T dO after the softmax backward has streamed P (row by row) into
    # cache: BLAS packing P^T from memory reads across rows, and ran 1.7x
    # slower than the other GEMMs (vit-tiny b32, one thread)
    gemm(TRANS, NOTRANS, t, hd, t, one, addr(ph, 0), t, g, ld, zero, dv, ld3)   # dV = P^T dO
    gemm(NOTRANS, NOTRANS, t, hd, t, one, addr(ds, 0), t, k, ld3, zero, dq, ld3)  # dQ = dS k
    gemm(TRANS, NOTRANS, t, hd, t, one, addr(ds, 0), t, q, ld3, zero, dk, ld3)    # dK = dS^T q


def _check_qkv(qkv):
    if qkv.ndim != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv has shape {qkv.shape}: expected (B, T, 3, H, head_dim)")
    if qkv.dtype not in (np.float32, np.float64):
        raise ValueError(f"qkv has dtype {qkv.dtype}: expected float32 or float64")
    return np.ascontiguousarray(qkv)


def _check_backward(do, qkv, kept, name, t_axes):
    """Contiguous ``(qkv, do)`` for a backward; ValueError unless do is (B, T, H, hd) and
    the forward's ``kept`` context (``name``: P, t_axes=2, or lse, t_axes=1) is
    (B, H) followed by ``t_axes`` axes of T."""
    qkv = _check_qkv(qkv)
    nb, t, _, nh, hd = qkv.shape
    want = (nb, nh) + (t,) * t_axes
    if do.shape != (nb, t, nh, hd) or kept.shape != want:
        raise ValueError(f"do {do.shape} / {name} {kept.shape} do not fit qkv {qkv.shape}: "
                         f"expected {(nb, t, nh, hd)} / {want}")
    return qkv, np.ascontiguousarray(do, dtype=qkv.dtype)


def attention_forward(qkv, scale):
    """Scaled dot-product attention of every (batch, head) pair.

    qkv: (B, T, 3, H, hd) float32/float64, the qkv Linear's output in timm's
    (3, heads, head_dim) column order.  scale: positive float, 1/sqrt(hd) in a ViT.
    Returns ``(o, p)``: o (B, T, H, hd), softmax(scale * q k^T) v per head,
    laid out so ``o.reshape(B, T, H * hd)`` is the proj input; p (B, H, T, T),
    the attention probabilities (kept for the backward).  Raises ValueError
    for other shapes or dtypes and for a non-positive scale.
    """
    return _forward(qkv, scale, keep_p=True)


def _forward(qkv, scale, keep_p):
    """``(o, p)`` with keep_p, else ``(o, lse)``: the checks, the buffers and the kernel
    call behind ``attention_forward`` and ``kernels_attention_lse.attention_forward_lse``
    (one kernel; an empty p makes it write the row log-sum-exp lse (B, H, T) float64)."""
    qkv = _check_qkv(qkv)
    nb, t, _, nh, hd = qkv.shape
    scale = _check_scale(scale)
    o = np.empty((nb, t, nh, hd), dtype=qkv.dtype)
    if keep_p:
        p, lse = np.empty((nb, nh, t, t), dtype=qkv.dtype), np.empty((0, 0, 0))
    else:
        p, lse = np.empty((0, 0, 0, 0), qkv.dtype), np.empty((nb, nh, t), dtype=np.float64)
    _attention_fwd(qkv, scale, qkv.dtype == np.float32, p, lse, o)
    return o, (p if keep_p else lse)


def attention_backward(do, qkv, p, scale):
    """Gradient of ``attention_forward`` with respect to qkv.

    do: (B, T, H, hd), the gradient of o; qkv and p as given to and returned
    by the forward.  Returns dqkv (B, T, 3, H, hd), dtype of qkv.  Raises
    ValueError when the shapes do not fit together.
    """
    qkv, do = _check_backward(do, qkv, p, "p", t_axes=2)
    dqkv = np.empty_like(qkv)
    _attention_bwd(qkv, np.ascontiguousarray(p), do, _check_scale(scale), dqkv)
    return dqkv

