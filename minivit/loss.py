"""Softmax cross-entropy with label smoothing, mean over the batch.

Label smoothing as in Szegedy et al., CVPR 2016, section 7 (and PyTorch's
``CrossEntropyLoss(label_smoothing=s)``): the target is ``(1 - s) * onehot + s / K``.
"""
import numpy as np

from . import kernels


def cross_entropy_forward(logits, labels, smoothing=0.0):
    """Mean smoothed cross-entropy of ``logits`` (B, K) against integer ``labels`` (B,).

    Returns ``(loss, ctx)``: loss a Python float (nats), ctx for the backward.
    Raises ValueError (before computing) for a shape mismatch, non-integer
    labels, a label outside [0, K) or smoothing outside [0, 1).
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or logits.shape[0] < 1:
        raise ValueError(f"logits shape {logits.shape}: expected (B, K) with B >= 1")
    b, k = logits.shape
    if labels.shape != (b,):
        raise ValueError(f"labels shape {labels.shape}: expected ({b},) to match logits {logits.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels dtype {labels.dtype}: expected an integer dtype")
    bad = (labels < 0) | (labels >= k)
    if bad.any():
        raise ValueError(f"label {int(labels[bad][0])} out of range: expected 0 <= label < {k}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing={smoothing!r}: expected 0 <= smoothing < 1")
    labels = labels.astype(np.int64)
    losses, probs = kernels.xent_forward(logits, labels, smoothing)
    return float(losses.mean()), (probs, labels, float(smoothing))


def cross_entropy_backward(ctx, scale=1.0):
    """d(scale * loss)/d logits, shape (B, K), dtype of the logits.

    ``scale`` folds in gradient accumulation (1 / accumulation steps) or a
    data-parallel average, so no extra pass over the gradient is needed.
    """
    # forward: loss = mean_i [lse(z_i) - sum_k target_ik z_ik]
    probs, labels, smoothing = ctx
    return kernels.xent_backward(probs, labels, smoothing, scale / probs.shape[0])
