"""Single-process training: one optimizer step, and a loop that logs metrics.

The step has the structure every parallel layout keeps (DESIGN.md section 3):

    zero_grad -> for each micro-batch: forward, loss, backward(scale = 1 / accum)
              -> sync_grads hook (data parallel: all-reduce or reduce-scatter)
              -> clip (global norm) -> optimizer step

Folding ``1 / accum`` into the loss gradient makes the accumulated gradient
the mean over the global batch without an extra pass over the buffer.
"""
import json
import math
import time

from .flops import train_flops
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


class MetricsWriter:
    """Appends one JSON object per line to ``path`` (``metrics.jsonl``), flushed each step."""

    def __init__(self, path):
        self.path = path
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record):
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self):
        self._file.close()


def train_loop(model, optimizer, schedule, step_batches, steps, *, global_batch, clip=None,
               label_smoothing=0.0, start_step=0, log=None, sync_grads=None, clip_fn=None,
               comm_bytes=lambda: 0):
    """Run optimizer steps ``start_step .. steps - 1``; returns the list of metric records.

    step_batches: iterator of ``(epoch, [(x, y), ...])``, one item per step.
    schedule: ``lr(step)`` for the 0-based step.  global_batch: images per
    step over all ranks (for images/s and FLOP/s).
    log: optional ``f(record)`` (e.g. ``MetricsWriter.write``).
    comm_bytes: ``f() -> bytes`` communicated during the step (0 in one process).
    Record keys: step (1-based count of updates done), epoch, loss, lr,
    grad_norm, step_time_s (seconds), images_per_s, gflops_per_s (model FLOPs,
    3x the forward matmul FLOPs, per second), comm_bytes.
    """
    flops = train_flops(model.config, global_batch)
    records = []
    for step in range(start_step, steps):
        t0 = time.perf_counter()
        epoch, micro_batches = next(step_batches)
        lr = schedule(step)
        out = train_step(model, optimizer, micro_batches, lr, clip=clip,
                         label_smoothing=label_smoothing, sync_grads=sync_grads,
                         clip_fn=clip_fn)
        seconds = time.perf_counter() - t0
        record = {"step": step + 1, "epoch": epoch, "loss": out["loss"], "lr": lr,
                  "grad_norm": out["grad_norm"], "step_time_s": seconds,
                  "images_per_s": global_batch / seconds,
                  "gflops_per_s": flops / seconds / 1e9, "comm_bytes": int(comm_bytes())}
        records.append(record)
        if log is not None:
            log(record)
        if not math.isfinite(out["loss"]):   # stop instead of training on NaNs for hours
            raise FloatingPointError(f"loss became {out['loss']} at step {step + 1}")
    return records
