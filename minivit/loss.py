"""Softmax cross-entropy with label smoothing, mean over the batch.

Label smoothing as in Szegedy et al., CVPR 2016, section 7 (and PyTorch's
``CrossEntropyLoss(label_smoothing=s)``): the target is ``(1 - s) * onehot + s / K``.

Targets are either integer labels (B,) or soft targets float (B, K) whose rows
sum to 1, as mixup (Zhang et al., ICLR 2018, eq. 1) and cutmix (Yun et al.,
ICCV 2019, eq. 1) produce: ``minivit.io.mixup``.  Smoothing composes with
soft targets the same way, ``t' = (1 - s) t + s / K``; for ``t = lam onehot(a)
+ (1 - lam) onehot(b)`` that is exactly timm's ``mixup_target`` with
smoothing ``s``.  Integer labels take the same code path as before soft
targets existed, so their losses and gradients are unchanged bit for bit.
"""
import numpy as np

from . import kernels

# Row sums of soft targets may differ from 1 by rounding (lam + (1 - lam) in
# float32); anything further is a caller's bug, not rounding.
_ROW_SUM_TOL = 1e-5


def _check_logits(logits):
    if logits.ndim != 2 or logits.shape[0] < 1:
        raise ValueError(f"logits shape {logits.shape}: expected (B, K) with B >= 1")
    return logits.shape


def _check_smoothing(smoothing):
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing={smoothing!r}: expected 0 <= smoothing < 1")


def cross_entropy_forward(logits, labels, smoothing=0.0):
    """Mean smoothed cross-entropy of ``logits`` (B, K) against ``labels``.

    labels: integer (B,) class ids, or float (B, K) soft targets (then this is
    ``soft_cross_entropy_forward``).
    Returns ``(loss, ctx)``: loss a Python float (nats), ctx for the backward.
    Raises ValueError (before computing) for a shape mismatch, non-integer
    labels, a label outside [0, K) or smoothing outside [0, 1).
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if labels.ndim == 2 and np.issubdtype(labels.dtype, np.floating):
        return soft_cross_entropy_forward(logits, labels, smoothing)
    b, k = _check_logits(logits)
    if labels.shape != (b,):
        raise ValueError(f"labels shape {labels.shape}: expected ({b},) to match logits {logits.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels dtype {labels.dtype}: expected an integer dtype")
    bad = (labels < 0) | (labels >= k)
    if bad.any():
        raise ValueError(f"label {int(labels[bad][0])} out of range: expected 0 <= label < {k}")
    _check_smoothing(smoothing)
    labels = labels.astype(np.int64)
    losses, probs = kernels.xent_forward(logits, labels, smoothing)
    return float(losses.mean()), (probs, labels, float(smoothing))


def soft_cross_entropy_forward(logits, targets, smoothing=0.0):
    """Mean cross-entropy of ``logits`` (B, K) against soft ``targets`` float (B, K).

    loss = mean_i [lse(z_i) - sum_k t'_ik z_ik], t' = (1 - s) t + s / K
    (mixup paper, Zhang et al., ICLR 2018, eq. 1; smoothing: Szegedy et al.,
    CVPR 2016, section 7).  Targets are used in float64.
    Returns ``(loss, ctx)`` like ``cross_entropy_forward``; the same
    ``cross_entropy_backward`` differentiates it.
    Raises ValueError for a shape mismatch, a non-float, negative or
    non-finite target, a row not summing to 1 (within 1e-5), or smoothing
    outside [0, 1).
    """
    logits = np.asarray(logits)
    targets = np.asarray(targets)
    b, k = _check_logits(logits)
    if targets.shape != (b, k):
        raise ValueError(f"soft targets shape {targets.shape}: expected ({b}, {k}) to match "
                         f"logits {logits.shape}")
    if not np.issubdtype(targets.dtype, np.floating):
        raise ValueError(f"soft targets dtype {targets.dtype}: expected a float dtype")
    targets = np.ascontiguousarray(targets, dtype=np.float64)
    if not np.all(np.isfinite(targets)) or (targets < 0).any():
        raise ValueError("soft targets must be finite and >= 0")
    sums = targets.sum(-1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > _ROW_SUM_TOL:
        raise ValueError(f"soft target row {worst} sums to {sums[worst]!r}: expected 1")
    _check_smoothing(smoothing)
    losses, probs = kernels.xent_soft_forward(logits, targets, smoothing)
    return float(losses.mean()), (probs, targets, float(smoothing))


def cross_entropy_backward(ctx, scale=1.0):
    """d(scale * loss)/d logits, shape (B, K), dtype of the logits.

    ``ctx`` from ``cross_entropy_forward`` or ``soft_cross_entropy_forward``.
    ``scale`` folds in gradient accumulation (1 / accumulation steps) or a
    data-parallel average, so no extra pass over the gradient is needed.
    """
    # forward: loss = mean_i [lse(z_i) - sum_k target_ik z_ik]
    probs, labels, smoothing = ctx
    if labels.ndim == 2:
        return kernels.xent_soft_backward(probs, labels, smoothing, scale / probs.shape[0])
    return kernels.xent_backward(probs, labels, smoothing, scale / probs.shape[0])


def correct_top1(logits, labels):
    """Number of rows whose arg-max logit is the label: int.

    labels : int (B,) class ids, or float (B, K) soft targets (mixup/cutmix),
    whose arg-max is then the reference class.
    """
    classes = labels if labels.ndim == 1 else labels.argmax(axis=1)
    return int((logits.argmax(axis=1) == classes).sum())
