"""Fused elementwise kernels (Numba, ``cache=True``) for LayerNorm, GELU, softmax
and softmax cross-entropy, forward and backward.

Every kernel is dtype-generic (float32 and float64 compile to separate cached
specialisations).  Reductions (means, variances, sums, log-sum-exp) accumulate
in float64 even for float32 inputs, so the result does not depend on the row
width; ``minivit.kernels_ref`` holds the plain-NumPy reference of each kernel,
used by tests/test_kernels.py.

The public functions validate and allocate; the ``_``-prefixed ``njit``
functions write into the arrays they are given.
"""
import math

import numpy as np
from numba import njit

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _rows(x, name):
    if x.ndim != 2:
        raise ValueError(f"{name} has shape {x.shape}: expected a 2-D (rows, width) array")
    return np.ascontiguousarray(x)


# ---------------------------------------------------------------- LayerNorm
# Ba et al., "Layer Normalization", 2016, eq. 4: y = (x - mu) / sqrt(var + eps) * w + b
@njit(cache=True)
def _layernorm_fwd(x, w, b, eps, y, mean, rstd):
    rows, d = x.shape
    for r in range(rows):
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


@njit(cache=True)
def _layernorm_bwd(dy, x, mean, rstd, w, dx, dw, db):
    rows, d = x.shape
    dw_acc = np.zeros(d)
    db_acc = np.zeros(d)
    for r in range(rows):
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
            dw_acc[j] += g * xhat
            db_acc[j] += g
        s1 /= d
        s2 /= d
        for j in range(d):
            xhat = (x[r, j] - mu) * rs
            dx[r, j] = rs * (dy[r, j] * w[j] - s1 - xhat * s2)
    for j in range(d):
        dw[j] += dw_acc[j]
        db[j] += db_acc[j]


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


# --------------------------------------------------------------------- GELU
# Hendrycks & Gimpel, "GELUs", 2016: gelu(x) = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))
@njit(cache=True)
def _gelu_fwd(x, y):
    for i in range(x.size):
        v = np.float64(x[i])
        y[i] = 0.5 * v * (1.0 + math.erf(v * _INV_SQRT2))


@njit(cache=True)
def _gelu_bwd(dy, x, dx):
    for i in range(x.size):
        v = np.float64(x[i])
        # d/dx [x Phi(x)] = Phi(x) + x phi(x)
        dpsi = 0.5 * (1.0 + math.erf(v * _INV_SQRT2)) + v * math.exp(-0.5 * v * v) * _INV_SQRT_2PI
        dx[i] = dy[i] * dpsi


def gelu_forward(x):
    """Exact (erf) GELU, elementwise; any shape, returns an array of x's shape and dtype."""
    xf = np.ascontiguousarray(x).reshape(-1)
    y = np.empty_like(xf)
    _gelu_fwd(xf, y)
    return y.reshape(np.shape(x))


def gelu_backward(dy, x):
    """dx = dy * gelu'(x), elementwise; shapes of dy and x must match."""
    if dy.shape != x.shape:
        raise ValueError(f"dy shape {dy.shape} != x shape {x.shape}: expected equal shapes")
    xf = np.ascontiguousarray(x).reshape(-1)
    dx = np.empty_like(xf)
    _gelu_bwd(np.ascontiguousarray(dy).reshape(-1), xf, dx)
    return dx.reshape(x.shape)


# ------------------------------------------------------------------ softmax
@njit(cache=True)
def _softmax_fwd(x, p):
    rows, n = x.shape
    for r in range(rows):
        m = np.float64(x[r, 0])
        for j in range(1, n):
            if x[r, j] > m:
                m = np.float64(x[r, j])
        s = 0.0
        for j in range(n):
            e = math.exp(x[r, j] - m)
            p[r, j] = e
            s += e       # sums the float64 exponentials, not the rounded stores
        inv = 1.0 / s
        for j in range(n):
            p[r, j] *= inv


@njit(cache=True)
def _softmax_bwd(dp, p, dx):
    rows, n = p.shape
    for r in range(rows):
        s = 0.0
        for j in range(n):
            s += np.float64(dp[r, j]) * p[r, j]
        for j in range(n):
            dx[r, j] = p[r, j] * (dp[r, j] - s)


def softmax_forward(x):
    """Row softmax of ``x`` (rows, n) -> probabilities (rows, n), dtype of x."""
    x = _rows(x, "x")
    p = np.empty_like(x)
    _softmax_fwd(x, p)
    return p


def softmax_backward(dp, p):
    """Given p = softmax(x): dx = p * (dp - sum(dp * p)) per row; (rows, n)."""
    dp = _rows(dp, "dp")
    dx = np.empty_like(dp)
    _softmax_bwd(dp, _rows(p, "p"), dx)
    return dx


# ------------------------------------------------- softmax cross-entropy
# Label smoothing (Szegedy et al., "Rethinking the Inception Architecture",
# CVPR 2016, section 7): target = (1 - s) * onehot(y) + s / K.
# loss_i = lse(z_i) - (1 - s) z_{i,y} - s * mean_k z_{i,k}
@njit(cache=True)
def _xent_fwd(z, labels, smoothing, probs, losses):
    rows, k = z.shape
    for r in range(rows):
        m = np.float64(z[r, 0])
        for j in range(1, k):
            if z[r, j] > m:
                m = np.float64(z[r, j])
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


@njit(cache=True)
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
