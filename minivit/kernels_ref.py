"""Plain-NumPy references of the fused kernels in ``minivit.kernels``.

Written straight from the formulas, vectorised over whole arrays, and computed
in float64 then cast to the input dtype (the kernels accumulate in float64 as
well), so tests can demand 1e-6 agreement in float32 and 1e-12 in float64.
Not used in training.
"""
import numpy as np
from scipy.special import erf


def layernorm_forward(x, w, b, eps):
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1)
    var = ((x64 - mean[:, None]) ** 2).mean(axis=-1)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x64 - mean[:, None]) * rstd[:, None] * w + b
    return y.astype(x.dtype), mean, rstd


def layernorm_backward(dy, x, mean, rstd, w):
    """Returns (dx, dw, db) (not accumulated)."""
    dy64 = dy.astype(np.float64)
    xhat = (x.astype(np.float64) - mean[:, None]) * rstd[:, None]
    dxhat = dy64 * w
    dx = rstd[:, None] * (dxhat - dxhat.mean(-1, keepdims=True)
                          - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx.astype(x.dtype), (dy64 * xhat).sum(0), dy64.sum(0)


def bias_grad(dy):
    return dy.astype(np.float64).sum(axis=0)


def gelu_forward(x):
    x64 = x.astype(np.float64)
    return (0.5 * x64 * (1.0 + erf(x64 / np.sqrt(2.0)))).astype(x.dtype)


def gelu_backward(dy, x):
    x64 = x.astype(np.float64)
    cdf = 0.5 * (1.0 + erf(x64 / np.sqrt(2.0)))
    pdf = np.exp(-0.5 * x64 ** 2) / np.sqrt(2.0 * np.pi)
    return (dy.astype(np.float64) * (cdf + x64 * pdf)).astype(x.dtype)


def softmax_forward(x, scale=1.0):
    x64 = x.astype(np.float64) * scale
    e = np.exp(x64 - x64.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(x.dtype)


def softmax_backward(dp, p, scale=1.0):
    dp64, p64 = dp.astype(np.float64), p.astype(np.float64)
    return (scale * p64 * (dp64 - (dp64 * p64).sum(-1, keepdims=True))).astype(p.dtype)


def xent_forward(logits, labels, smoothing):
    z = logits.astype(np.float64)
    k = z.shape[1]
    m = z.max(-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(-1))
    logp = z - lse[:, None]
    target = np.full_like(z, smoothing / k)
    target[np.arange(len(labels)), labels] += 1.0 - smoothing
    losses = -(target * logp).sum(-1)
    return losses, np.exp(logp).astype(logits.dtype)


def xent_backward(probs, labels, smoothing, scale):
    p = probs.astype(np.float64)
    k = p.shape[1]
    target = np.full_like(p, smoothing / k)
    target[np.arange(len(labels)), labels] += 1.0 - smoothing
    return ((p - target) * scale).astype(probs.dtype)


def attention_forward(qkv, scale):
    """(o (B, T, H, hd), p (B, H, T, T)) from qkv (B, T, 3, H, hd), in float64."""
    q, k, v = (qkv[:, :, i].astype(np.float64).transpose(0, 2, 1, 3) for i in range(3))
    p = softmax_forward(q @ k.transpose(0, 1, 3, 2), scale)
    return (p @ v).transpose(0, 2, 1, 3).astype(qkv.dtype), p.astype(qkv.dtype)


def attention_backward(do, qkv, p, scale):
    """dqkv (B, T, 3, H, hd) in float64, cast to qkv's dtype."""
    q, k, v = (qkv[:, :, i].astype(np.float64).transpose(0, 2, 1, 3) for i in range(3))
    g = do.astype(np.float64).transpose(0, 2, 1, 3)          # (B, H, T, hd)
    p64 = p.astype(np.float64)
    ds = softmax_backward(g @ v.transpose(0, 1, 3, 2), p64, scale)
    grads = (ds @ k, ds.transpose(0, 1, 3, 2) @ q, p64.transpose(0, 1, 3, 2) @ g)
    return np.stack([d.transpose(0, 2, 1, 3) for d in grads], axis=2).astype(qkv.dtype)


def xent_soft_forward(logits, targets, smoothing):
    z = logits.astype(np.float64)
    k = z.shape[1]
    m = z.max(-1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(-1))
    target = (1.0 - smoothing) * targets + smoothing / k
    losses = -(target * (z - lse[:, None])).sum(-1)
    return losses, np.exp(z - lse[:, None]).astype(logits.dtype)


def xent_soft_backward(probs, targets, smoothing, scale):
    p = probs.astype(np.float64)
    target = (1.0 - smoothing) * targets + smoothing / p.shape[1]
    return ((target.sum(-1, keepdims=True) * p - target) * scale).astype(probs.dtype)
