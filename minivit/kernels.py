"""Fused elementwise kernels (Numba, ``cache=True``) for LayerNorm, GELU, softmax
and softmax cross-entropy, forward and backward.

Every kernel is dtype-generic (float32 and float64 compile to separate cached
specialisations).  Reductions (means, variances, sums, log-sum-exp) accumulate
in float64 even for float32 inputs, so the result does not depend on the row
width; ``minivit.kernels_ref`` holds the plain-NumPy reference of each kernel,
used by tests/test_kernels.py.

``error_model="numpy"`` drops Python's ZeroDivisionError check, whose branch
kept LLVM from vectorising any loop with a division.  The public functions
validate and allocate; the ``_``-prefixed ``njit``
functions write into the arrays they are given.

Speed (docs/performance.md): for float32 data the GELU and softmax kernels
compute in float32 with the polynomial erf and exp of ``minivit.math32``,
which LLVM vectorises 8 lanes wide; libm ``erf``/``exp`` calls cannot be
vectorised and made GELU cost half a GEMM.  Their error (below 1e-6 against
the float64 reference, tests/test_kernels_fast.py) is at float32 rounding;
float64 data keeps the exact libm path, so gradient checks are unaffected.

Threads: LayerNorm, GELU and the Linear bias add/gradient split their
rows/elements into fixed blocks over Numba threads (``prange``), and cross-row
sums (LayerNorm dw/db, the bias gradient) add fixed 64-row block partials in
order, so results do not depend on the thread count.
Next to OpenBLAS this only pays with the quiet thread pools that
``minivit.threads`` sets up; with OpenBLAS's default spinning a vit-nano step
was 40x slower.  The softmax kernels stay serial: the attention kernel
(``minivit.kernels_attention``) calls them from inside its own threads.
"""
import math

import numpy as np
from numba import njit, prange

from . import math32 as m32

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _rows(x, name):
    if x.ndim != 2:
        raise ValueError(f"{name} has shape {x.shape}: expected a 2-D (rows, width) array")
    return np.ascontiguousarray(x)


# Reassociation only: lets LLVM vectorise the row sums (several partial sums per
# row, the same order on any thread count), without fastmath's no-NaN/no-inf
# assumptions, so a NaN still propagates to the loss and its guard.
_REASSOC = {"reassoc", "contract"}


# ---------------------------------------------------------------- LayerNorm
# Ba et al., "Layer Normalization", 2016, eq. 4: y = (x - mu) / sqrt(var + eps) * w + b
@njit(cache=True, error_model="numpy", parallel=True, fastmath=_REASSOC)
def _layernorm_fwd(x, w, b, eps, y, mean, rstd):
    rows, d = x.shape
    for r in prange(rows):
        s = 0.0
        for j in range(d):
            s += x[r, j]
        mu = s / d
        v = 0.0
        for j in range(d):
            t = x[r, j] - mu
            v += t * t
        rs = 1.0 / math.sqrt(v / d + eps)
        mean[r] = mu
        rstd[r] = rs
        for j in range(d):
            y[r, j] = (x[r, j] - mu) * rs * w[j] + b[j]


_LN_BLOCK = 64   # rows per partial dw/db sum: fixed, so the sum order ignores thread count


@njit(cache=True, error_model="numpy", parallel=True, fastmath=_REASSOC)
def _layernorm_bwd(dy, x, mean, rstd, w, dx, dw, db):
    rows, d = x.shape
    nblk = (rows + _LN_BLOCK - 1) // _LN_BLOCK
    dw_part = np.zeros((nblk, d))
    db_part = np.zeros((nblk, d))
    for blk in prange(nblk):
        for r in range(blk * _LN_BLOCK, min(rows, (blk + 1) * _LN_BLOCK)):
            mu = np.float64(mean[r])
            rs = np.float64(rstd[r])
            s1 = 0.0  # sum_j dxhat_j
            s2 = 0.0  # sum_j dxhat_j * xhat_j
            for j in range(d):
                xhat = (x[r, j] - mu) * rs
                g = np.float64(dy[r, j])
                dxhat = g * w[j]
                s1 += dxhat
                s2 += dxhat * xhat
                dw_part[blk, j] += g * xhat
                db_part[blk, j] += g
            s1 /= d
            s2 /= d
            for j in range(d):
                xhat = (x[r, j] - mu) * rs
                dx[r, j] = rs * (dy[r, j] * w[j] - s1 - xhat * s2)
    for blk in range(nblk):
        for j in range(d):
            dw[j] += dw_part[blk, j]
            db[j] += db_part[blk, j]


def layernorm_forward(x, w, b, eps):
    """LayerNorm over the last axis of ``x`` (rows, D) -> ``(y, mean, rstd)``.

    y: (rows, D), dtype of x.  mean, rstd: (rows,) float64 (kept for backward).
    """
    x = _rows(x, "x")
    y = np.empty_like(x)
    mean = np.empty(x.shape[0])
    rstd = np.empty(x.shape[0])
    _layernorm_fwd(x, w, b, float(eps), y, mean, rstd)
    return y, mean, rstd


def layernorm_backward(dy, x, mean, rstd, w, dw, db):
    """Gradient of LayerNorm: returns dx (rows, D); ACCUMULATES into dw, db (D,)."""
    dy = _rows(dy, "dy")
    dx = np.empty_like(dy)
    _layernorm_bwd(dy, _rows(x, "x"), mean, rstd, w, dx, dw, db)
    return dx


# --------------------------------------------------------------------- bias
@njit(cache=True, error_model="numpy", parallel=True)
def _add_bias(y, b):
    rows, d = y.shape
    for blk in prange((rows + _LN_BLOCK - 1) // _LN_BLOCK):
        for r in range(blk * _LN_BLOCK, min(rows, (blk + 1) * _LN_BLOCK)):
            for j in range(d):
                y[r, j] += b[j]


@njit(cache=True, error_model="numpy", parallel=True, fastmath=_REASSOC)
def _bias_grad(dy, db):
    rows, d = dy.shape
    nblk = (rows + _LN_BLOCK - 1) // _LN_BLOCK
    part = np.zeros((nblk, d))
    for blk in prange(nblk):
        for r in range(blk * _LN_BLOCK, min(rows, (blk + 1) * _LN_BLOCK)):
            for j in range(d):
                part[blk, j] += dy[r, j]
    for blk in range(nblk):         # block partials in order: independent of the thread count
        for j in range(d):
            db[j] += part[blk, j]


def add_bias_(y, b):
    """y += b in place, over threads; y (rows, D) C-contiguous, b (D,).  Returns y.

    Raises ValueError if y is not a C-contiguous 2-D array.
    """
    if y.ndim != 2 or not y.flags.c_contiguous:
        raise ValueError(f"y has shape {y.shape}: expected a C-contiguous (rows, D) array")
    _add_bias(y, b)
    return y


def bias_grad_(dy, db):
    """ACCUMULATE the bias gradient: db += dy.sum(axis=0), in float64 64-row block
    partials added in order; dy (rows, D), db (D,)."""
    _bias_grad(_rows(dy, "dy"), db)
    return db


# --------------------------------------------------------------------- GELU
# Hendrycks & Gimpel, "GELUs", 2016: gelu(x) = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))
_EW_BLOCK = 16384   # elements per unit of work of the elementwise kernels (64 kB of float32)


@njit(cache=True, error_model="numpy", parallel=True)
def _gelu_fwd(x, y):
    for blk in prange((x.size + _EW_BLOCK - 1) // _EW_BLOCK):
        for i in range(blk * _EW_BLOCK, min(x.size, (blk + 1) * _EW_BLOCK)):
            v = np.float64(x[i])
            y[i] = 0.5 * v * (1.0 + math.erf(v * _INV_SQRT2))


@njit(cache=True, error_model="numpy", parallel=True)
def _gelu_bwd(dy, x, dx):
    for blk in prange((x.size + _EW_BLOCK - 1) // _EW_BLOCK):
        for i in range(blk * _EW_BLOCK, min(x.size, (blk + 1) * _EW_BLOCK)):
            v = np.float64(x[i])
            # d/dx [x Phi(x)] = Phi(x) + x phi(x)
            dpsi = (0.5 * (1.0 + math.erf(v * _INV_SQRT2))
                    + v * math.exp(-0.5 * v * v) * _INV_SQRT_2PI)
            dx[i] = dy[i] * dpsi


@njit(cache=True, fastmath=True, error_model="numpy", parallel=True)
def _gelu_fwd_fast(x, y):
    for blk in prange((x.size + _EW_BLOCK - 1) // _EW_BLOCK):
        lo, hi = blk * _EW_BLOCK, min(x.size, (blk + 1) * _EW_BLOCK)
        # block slices indexed from 0: with i from range(lo, hi) the loop did not
        # vectorise (2.1x slower, one thread, (6304, 768)), as in the backward below
        xb, yb = x[lo:hi], y[lo:hi]
        for i in range(hi - lo):
            v = xb[i]
            yb[i] = m32.HALF * v * (m32.ONE + m32.erf32(v * m32.INV_SQRT2))


@njit(cache=True, fastmath=True, error_model="numpy", parallel=True)
def _gelu_bwd_fast(dy, x, dx):
    for blk in prange((x.size + _EW_BLOCK - 1) // _EW_BLOCK):
        lo, hi = blk * _EW_BLOCK, min(x.size, (blk + 1) * _EW_BLOCK)
        bits = np.empty(hi - lo, np.int32)        # 2**k of exp(-x^2 / 2) = y * 2**k
        pow2 = bits.view(np.float32)
        xb, dyb, dxb = x[lo:hi], dy[lo:hi], dx[lo:hi]
        for i in range(hi - lo):
            v = xb[i]
            y, k = m32.exp32_split(-m32.HALF * v * v)
            dxb[i] = y
            bits[i] = m32.pow2_bits(k)
        for i in range(hi - lo):
            v = xb[i]
            pdf = dxb[i] * pow2[i] * m32.INV_SQRT_2PI
            dxb[i] = dyb[i] * (m32.HALF * (m32.ONE + m32.erf32(v * m32.INV_SQRT2)) + v * pdf)


def gelu_forward(x):
    """Exact (erf) GELU, elementwise; any shape, returns an array of x's shape and dtype."""
    xf = np.ascontiguousarray(x).reshape(-1)
    y = np.empty_like(xf)
    (_gelu_fwd_fast if xf.dtype == np.float32 else _gelu_fwd)(xf, y)
    return y.reshape(np.shape(x))


def gelu_backward(dy, x):
    """dx = dy * gelu'(x), elementwise; shapes of dy and x must match."""
    if dy.shape != x.shape:
        raise ValueError(f"dy shape {dy.shape} != x shape {x.shape}: expected equal shapes")
    xf = np.ascontiguousarray(x).reshape(-1)
    dx = np.empty_like(xf)
    (_gelu_bwd_fast if xf.dtype == np.float32 else _gelu_bwd)(
        np.ascontiguousarray(dy).reshape(-1), xf, dx)
    return dx.reshape(x.shape)


# ------------------------------------------------------------------ softmax
# lse: (rows,) float64, or empty to skip it.  When it has rows, lse[r] receives
# the row's log-sum-exp L = scale * max + log(sum), so that P = exp(scale * x - L)
# can be rebuilt from x alone (selective recompute, minivit.kernels_attention_lse;
# the statistic FlashAttention keeps: Dao et al. 2022, section 3.1)
_NO_LSE = np.empty(0, np.float64)


@njit(cache=True, error_model="numpy")
def _softmax_fwd(x, scale, p, lse):
    rows, n = x.shape
    for r in range(rows):
        m = np.float64(x[r, 0])
        for j in range(1, n):
            if x[r, j] > m:
                m = np.float64(x[r, j])
        s = 0.0
        for j in range(n):
            e = math.exp((x[r, j] - m) * scale)
            p[r, j] = e
            s += e       # sums the float64 exponentials, not the rounded stores
        if lse.shape[0] > 0:
            lse[r] = m * scale + math.log(s)
        inv = 1.0 / s
        for j in range(n):
            p[r, j] *= inv


@njit(cache=True, fastmath=True, error_model="numpy")
def _softmax_fwd_fast(x, scale, p, lse):
    rows, n = x.shape
    sc = np.float32(scale)
    bits = np.empty(n, np.int32)                  # 2**k of each exp = y * 2**k
    pow2 = bits.view(np.float32)
    for r in range(rows):
        m = x[r, 0]
        for j in range(1, n):
            v = x[r, j]
            m = v if v > m else m
        for j in range(n):
            y, k = m32.exp32_split((x[r, j] - m) * sc)
            p[r, j] = y
            bits[j] = m32.pow2_bits(k)
        s = 0.0
        for j in range(n):
            e = p[r, j] * pow2[j]
            p[r, j] = e
            s += e       # sums in float64
        if lse.shape[0] > 0:       # with the float32 scale the exponents used
            lse[r] = np.float64(m) * np.float64(sc) + math.log(s)
        inv = np.float32(1.0 / s)
        for j in range(n):
            p[r, j] *= inv


@njit(cache=True, error_model="numpy", fastmath=_REASSOC)
def _softmax_bwd(dp, p, scale, dx):
    rows, n = p.shape
    for r in range(rows):
        s = 0.0
        for j in range(n):
            s += np.float64(dp[r, j]) * p[r, j]
        for j in range(n):
            dx[r, j] = scale * (p[r, j] * (dp[r, j] - s))


def _check_scale(scale):
    if not scale > 0:
        raise ValueError(f"scale={scale!r}: expected a positive float (the max-shift "
                         "assumes the order of x is kept)")
    return float(scale)


def softmax_forward(x, scale=1.0):
    """Row softmax of ``scale * x``; x (rows, n) -> probabilities (rows, n), dtype of x.

    Fusing the attention scale 1/sqrt(d_head) saves a pass over the scores.
    Raises ValueError for a non-positive scale or x not 2-D.
    """
    scale = _check_scale(scale)
    x = _rows(x, "x")
    p = np.empty_like(x)
    (_softmax_fwd_fast if x.dtype == np.float32 else _softmax_fwd)(x, scale, p, _NO_LSE)
    return p


def softmax_backward(dp, p, scale=1.0):
    """Given p = softmax(scale * x): dx = scale * p * (dp - sum(dp * p)) per row; (rows, n)."""
    scale = _check_scale(scale)
    dp = _rows(dp, "dp")
    dx = np.empty_like(dp)
    _softmax_bwd(dp, _rows(p, "p"), scale, dx)
    return dx


# ------------------------------------------------- softmax cross-entropy
@njit(cache=True, error_model="numpy")
def _row_max(z, r):
    # the shift of the log-sum-exp, so exp never overflows
    m = np.float64(z[r, 0])
    for j in range(1, z.shape[1]):
        if z[r, j] > m:
            m = np.float64(z[r, j])
    return m


# Label smoothing (Szegedy et al., "Rethinking the Inception Architecture",
# CVPR 2016, section 7): target = (1 - s) * onehot(y) + s / K.
# loss_i = lse(z_i) - (1 - s) z_{i,y} - s * mean_k z_{i,k}
@njit(cache=True, error_model="numpy")
def _xent_fwd(z, labels, smoothing, probs, losses):
    rows, k = z.shape
    for r in range(rows):
        m = _row_max(z, r)
        s = 0.0
        zsum = 0.0
        for j in range(k):
            s += math.exp(z[r, j] - m)
            zsum += z[r, j]
        lse = m + math.log(s)
        inv = 1.0 / s
        for j in range(k):
            probs[r, j] = math.exp(z[r, j] - m) * inv
        losses[r] = lse - (1.0 - smoothing) * z[r, labels[r]] - smoothing * zsum / k


@njit(cache=True, error_model="numpy")
def _xent_bwd(probs, labels, smoothing, scale, dz):
    rows, k = probs.shape
    off = smoothing / k
    for r in range(rows):
        for j in range(k):
            dz[r, j] = (probs[r, j] - off) * scale
        dz[r, labels[r]] -= (1.0 - smoothing) * scale


def xent_forward(logits, labels, smoothing):
    """Per-row smoothed cross-entropy: ``(losses (rows,) float64, probs (rows, K))``.

    labels: (rows,) int64 in [0, K) (validated by the caller, minivit.loss).
    """
    z = _rows(logits, "logits")
    probs = np.empty_like(z)
    losses = np.empty(z.shape[0])
    _xent_fwd(z, labels, float(smoothing), probs, losses)
    return losses, probs


def xent_backward(probs, labels, smoothing, scale):
    """d(sum_i scale * loss_i)/dz = scale * (probs - target); (rows, K)."""
    dz = np.empty_like(probs)
    _xent_bwd(probs, labels, float(smoothing), float(scale), dz)
    return dz


# ---------------------------------------- soft-target softmax cross-entropy
# Soft targets t (rows summing to 1, e.g. mixup/cutmix: Zhang et al., ICLR 2018,
# eq. 1; Yun et al., ICCV 2019, eq. 1) composed with label smoothing:
# t' = (1 - s) t + s / K, loss_i = lse(z_i) - sum_k t'_{i,k} z_{i,k}.
@njit(cache=True, error_model="numpy")
def _xent_soft_fwd(z, t, smoothing, probs, losses):
    rows, k = z.shape
    off = smoothing / k
    for r in range(rows):
        m = _row_max(z, r)
        s = 0.0
        tz = 0.0
        for j in range(k):
            s += math.exp(z[r, j] - m)
            tz += ((1.0 - smoothing) * t[r, j] + off) * z[r, j]
        inv = 1.0 / s
        for j in range(k):
            probs[r, j] = math.exp(z[r, j] - m) * inv
        losses[r] = m + math.log(s) - tz


@njit(cache=True, error_model="numpy")
def _xent_soft_bwd(probs, t, smoothing, scale, dz):
    rows, k = probs.shape
    off = smoothing / k
    for r in range(rows):
        # d/dz [lse(z) - <t', z>] = (sum_k t'_k) p - t'; the sum is 1 up to
        # rounding, kept so the gradient is exact for the targets given
        tsum = 0.0
        for j in range(k):
            tsum += (1.0 - smoothing) * t[r, j] + off
        for j in range(k):
            dz[r, j] = (tsum * probs[r, j] - ((1.0 - smoothing) * t[r, j] + off)) * scale


def xent_soft_forward(logits, targets, smoothing):
    """Per-row soft-target cross-entropy: ``(losses (rows,) float64, probs (rows, K))``.

    targets: float64 (rows, K), validated by the caller (minivit.loss).
    """
    z = _rows(logits, "logits")
    probs = np.empty_like(z)
    losses = np.empty(z.shape[0])
    _xent_soft_fwd(z, _rows(targets, "targets"), float(smoothing), probs, losses)
    return losses, probs


def xent_soft_backward(probs, targets, smoothing, scale):
    """d(sum_i scale * loss_i)/dz = scale * (sum(t') probs - t'); (rows, K), dtype of probs."""
    dz = np.empty_like(probs)
    _xent_soft_bwd(probs, targets, float(smoothing), float(scale), dz)
    return dz
