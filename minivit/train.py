"""A one-process reference training step, for tests, benchmarks and teaching.

The training loop itself, with logging, evaluation and checkpoints, is
``minivit.parallel.runtime.trainer.Trainer.fit``; its step under every
parallel layout is ``minivit.parallel.runtime.step.StepEngine.train_step``.

The step has the structure every parallel layout keeps (DESIGN.md section 3):

    zero_grad -> for each micro-batch: forward, loss, backward(scale = 1 / accum)
              -> sync_grads hook (data parallel: all-reduce or reduce-scatter)
              -> clip (global norm) -> optimizer step

Folding ``1 / accum`` into the loss gradient makes the accumulated gradient
the mean over the global batch without an extra pass over the buffer.
"""
import math

from .loss import cross_entropy_backward, cross_entropy_forward
from .optim import clip_grad_norm_, grad_sumsq


def train_step(model, optimizer, micro_batches, lr, *, clip=None, label_smoothing=0.0,
               sync_grads=None, clip_fn=None):
    """One optimizer step over ``micro_batches`` (a list of ``(x (b, C, H, W), y (b,))``).

    sync_grads: optional ``f(model)`` called after the last backward (DP hook).
    clip: max global gradient norm, or None for no clipping (the norm is
        still measured).  clip_fn: optional ``f(flat_grad, max_norm) -> norm``
        replacing ``clip_grad_norm_`` (sharded layouts all-reduce the sum of
        squares inside it).
    Returns ``{"loss": mean micro-batch loss (float), "grad_norm": float}``.
    Raises ValueError for an empty list of micro-batches.
    """
    if not micro_batches:
        raise ValueError("micro_batches is empty: expected at least one (x, y) pair")
    accum = len(micro_batches)
    model.zero_grad()
    total = 0.0
    for x, y in micro_batches:
        logits, ctx = model.forward(x)
        loss, loss_ctx = cross_entropy_forward(logits, y, label_smoothing)
        model.backward(cross_entropy_backward(loss_ctx, scale=1.0 / accum), ctx)
        total += loss
    if sync_grads is not None:
        sync_grads(model)
    grad = model.flat.grad
    if clip is not None:
        norm = (clip_fn or clip_grad_norm_)(grad, clip)
    else:
        norm = math.sqrt(grad_sumsq(grad))
    optimizer.step(lr)
    return {"loss": total / accum, "grad_norm": float(norm)}
