"""One optimizer step of a ViT under data parallelism, gradient accumulation
and ZeRO stage 0-3: the reusable core of ``run/pretrain.py``.

Global batch = micro_batch x accumulation x dp (Goyal et al. 2017, section 2).
Each rank runs ``accum`` micro-batches of its local slice; the loss backward is
scaled by ``1 / (accum * dp)`` so the gradient collectives (which sum) leave
the mean gradient of the global batch, and gradients are synchronised once per
step (stage 0-1) or unit by unit as the backward produces them (stage 2-3).
"""
import numpy as np

from minivit.loss import cross_entropy_backward, cross_entropy_forward
from minivit.optim import AdamW, clip_grad_norm_

from . import cost
from .data_parallel import DataParallel
from .zero import ZeroOptimizer


class ParallelTrainer:
    """Train ``model`` (a ``minivit.model.ViT``) on the dp group of ``grid``.

    Parameters
    ----------
    model : ViT, built identically (same config and seed) on every rank.
    grid : :class:`~minivit.parallel.grid.ProcessGrid` (only ``dp_group`` is used here).
    zero : ZeRO stage 0 (plain DP), 1, 2 or 3.
    accum : micro-batches per optimizer step (gradient accumulation).
    bucket_bytes : DP all-reduce bucket size in bytes (stages 0-1).
    overlap : overlap the bucket all-reduces with the last backward (stages 0-1).
    betas, eps, weight_decay : AdamW settings (``minivit.optim.AdamW``).
    max_grad_norm : global-norm clipping threshold, or None for no clipping.
    smoothing : label smoothing of the cross-entropy.

    The constructor broadcasts rank 0's parameters over dp and verifies the
    replicas are bitwise identical.  Raises ValueError for a bad stage or accum.
    """

    def __init__(self, model, grid, *, zero=0, accum=1, bucket_bytes=25 * 2**20,
                 overlap=False, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05,
                 max_grad_norm=None, smoothing=0.0):
        if zero not in (0, 1, 2, 3):
            raise ValueError(f"zero={zero!r}: expected a ZeRO stage 0, 1, 2 or 3")
        if isinstance(accum, bool) or not isinstance(accum, int) or accum < 1:
            raise ValueError(f"accum={accum!r}: expected a positive integer")
        self.model, self.grid, self.comm = model, grid, grid.dp_group
        self.zero, self.accum = zero, accum
        self.max_grad_norm, self.smoothing = max_grad_norm, smoothing
        self.unit_sizes = [b - a for a, b in model.unit_ranges()]
        self.itemsize = model.flat.data.itemsize
        self.dp = DataParallel(model, self.comm, bucket_bytes, overlap=overlap and zero <= 1)
        self.dp.broadcast_parameters()
        self.dp.verify_replicas()
        hyper = dict(betas=betas, eps=eps, weight_decay=weight_decay)
        if zero == 0:
            self.optimizer = AdamW(model.flat, lr=0.0, **hyper)
        else:
            self.optimizer = ZeroOptimizer(model, self.comm, zero, **hyper)
        self.step_count = 0

    def train_step(self, images, labels, lr):
        """One optimizer step on this rank's slice of the global batch.

        images : (accum * micro_batch, C, H, W) array of the model dtype.
        labels : (accum * micro_batch,) integer class ids.
        lr : learning rate of this step.
        Returns dict ``loss`` (mean over the global batch), ``grad_norm`` (None
        without clipping), ``comm_bytes`` (bytes this rank sent), ``comm_seconds``.
        Raises ValueError if the local batch is not ``accum`` equal micro-batches.
        """
        n = images.shape[0]
        if n % self.accum or n == 0 or labels.shape != (n,):
            raise ValueError(f"local batch of {n} images, labels {labels.shape}: expected "
                             f"accum={self.accum} equal micro-batches and one label per image")
        mark = self.comm.ledger.mark()
        micro = n // self.accum
        scale = 1.0 / (self.accum * self.comm.size)
        loss_sum = 0.0
        for i in range(self.accum):
            x, y = images[i * micro:(i + 1) * micro], labels[i * micro:(i + 1) * micro]
            logits, ctx = self.model.forward(x)
            loss, loss_ctx = cross_entropy_forward(logits, y, self.smoothing)
            loss_sum += loss * scale
            if i == self.accum - 1:
                self.dp.arm()
            self.model.backward(cross_entropy_backward(loss_ctx, scale), ctx)
        if self.zero <= 1:
            self.dp.sync_gradients()
        self.step_count += 1
        norm = self._optimizer_step(lr)
        loss = self.comm.allreduce_scalar(loss_sum)
        return {"loss": loss, "grad_norm": norm,
                "comm_bytes": self.comm.ledger.total_bytes(since=mark),
                "comm_seconds": sum(e.seconds for e in self.comm.ledger.since(mark))}

    def _optimizer_step(self, lr):
        if self.zero == 0:
            norm = (clip_grad_norm_(self.model.flat.grad, self.max_grad_norm)
                    if self.max_grad_norm else None)
            self.optimizer.step(lr)
            self.model.flat.zero_grad()
            return norm
        return self.optimizer.step(lr, self.step_count, self.max_grad_norm)

    # ------------------------------------------------------------ audit
    def predicted_step_bytes(self):
        """``{op: bytes}`` one rank should send per step (cost.py, padding-exact),
        including the float64 all-reduce of the logged loss."""
        pred = cost.step_comm_bytes(self.unit_sizes, self.comm.size, self.zero, self.itemsize,
                                    accum=self.accum, bucket_elems=self.dp.bucket_elems,
                                    clip=bool(self.max_grad_norm))
        pred["allreduce"] = pred.get("allreduce", 0) + cost.allreduce_bytes(1, self.comm.size, 8)
        return pred

    def memory(self):
        """Measured persistent bytes per rank: ``params``, ``grads``, ``optim``, ``total``."""
        if self.zero:
            return self.optimizer.memory()
        flat = self.model.flat
        optim = sum(buf.nbytes for buf in self.optimizer.state.values())
        return {"params": flat.data.nbytes, "grads": flat.grad.nbytes, "optim": optim,
                "total": flat.data.nbytes + flat.grad.nbytes + optim}

    def predicted_memory(self):
        """cost.py's per-rank model-state bytes, padding-exact and closed form."""
        exact = cost.padded_memory_bytes(self.unit_sizes, self.comm.size, self.zero,
                                         self.itemsize)
        closed = cost.zero_memory_bytes(sum(self.unit_sizes), self.comm.size, self.zero,
                                        self.itemsize)
        return exact, closed

    def full_parameters(self):
        """The full flat parameter vector on every rank (gathered at stage 3)."""
        if self.zero == 3:
            return self.optimizer.full_parameters()
        return self.model.flat.data.copy()
