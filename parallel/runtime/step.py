"""One optimizer step of a ViT under data parallelism, gradient accumulation
and ZeRO stage 0-3: ``StepEngine.train_step``, called once per step by
``runtime.trainer.Trainer.fit``.

Global batch = micro_batch x accumulation x dp (Goyal et al. 2017, section 2).
Each rank runs ``accum`` micro-batches of its local slice; the loss backward is
scaled by ``1 / (accum * dp)`` so the gradient collectives (which sum) leave
the mean gradient of the global batch, and gradients are synchronised once per
step (stage 0-1) or unit by unit as the backward produces them (stage 2-3).
"""
import math

import numpy as np

from minivit.loss import correct_top1, cross_entropy_backward, cross_entropy_forward

from .. import cost
from ..data_parallel import DataParallel, GradReadyUnit, ReplicatedOptimizer
from ..pipeline import SPLIT_BACKWARD, Pipeline, check_schedule
from ..recompute import ctx_nbytes
from ..units import wrap_units
from ..zero import ZeroOptimizer, shard_units


class StepEngine:
    """Train ``model`` (a ``minivit.model.ViT``) on the dp group of ``grid``.

    Parameters
    ----------
    model : ViT, built identically (same config and seed) on every rank.
    grid : :class:`~minivit.parallel.grid.ProcessGrid` (only ``dp_group`` is used here).
    zero : ZeRO stage 0 (plain DP), 1, 2 or 3.
    accum : micro-batches per optimizer step (gradient accumulation).
    bucket_bytes : DP all-reduce bucket size in bytes (stages 0-1).
    overlap : overlap the bucket all-reduces with the last backward (stages 0-1).
    optimizer : "adamw" (any stage) or "sgd" (stage 0 only: ZeRO here shards AdamW state).
    betas, eps, weight_decay : AdamW settings (``minivit.optim.AdamW``);
        momentum, weight_decay for SGD.
    max_grad_norm : global-norm clipping threshold, or None for no clipping
        (the norm is measured and returned either way).
    smoothing : label smoothing of the cross-entropy.
    schedule : pipeline schedule, one of ``pipeline.SCHEDULES`` (used when ``grid.pp > 1``;
        ``model`` is then a ``model_parallel.ModelShard``, as it must be for tp > 1;
        "interleaved" runs its ``virtual_stages`` chunks).
    trainable : None, or ``(start, stop)`` of the flat buffer: only that slice is
        updated (stage 0 only; a linear probe, see ``minivit.transfer.LinearProbe``).
    allocate : where ZeRO keeps its shards (``zero.ZeroOptimizer``): None for
        the heap, or ``offload.Offload.allocate`` (then ``Offload.attach`` this engine).

    The constructor broadcasts rank 0's parameters over dp and verifies the
    replicas are bitwise identical (not for a model built shard by shard,
    ``build_model(..., zero=3)``, which has no full replica).  Raises ValueError
    for a bad stage, accum, optimizer, overlap with stage 2-3, or a model built
    sharded with a stage other than 3.
    """

    def __init__(self, model, grid, *, zero=0, accum=1, bucket_bytes=25 * 2**20,
                 overlap=False, optimizer="adamw", betas=(0.9, 0.999), eps=1e-8,
                 momentum=0.9, weight_decay=0.05, max_grad_norm=None, smoothing=0.0,
                 schedule="1f1b", trainable=None, allocate=None):
        if zero not in (0, 1, 2, 3):
            raise ValueError(f"zero={zero!r}: expected a ZeRO stage 0, 1, 2 or 3")
        if overlap and zero >= 2:
            raise ValueError(f"overlap=True with zero={zero}: expected zero 0 or 1 (stages 2-3 "
                             "reduce-scatter each unit inside its backward already)")
        if optimizer not in ("adamw", "sgd") or (optimizer == "sgd" and zero):
            raise ValueError(f"optimizer={optimizer!r} with zero={zero}: expected 'adamw', "
                             "or 'sgd' with zero=0 (ZeRO shards AdamW state)")
        if schedule in SPLIT_BACKWARD and grid.pp > 1 and (zero >= 2 or overlap):
            raise ValueError(f"schedule={schedule!r} with zero={zero}, overlap={overlap}: "
                             "expected ZeRO 0-1 without overlap (they reduce a unit's "
                             "gradient after its whole backward)")
        if trainable is not None and zero:
            raise ValueError(f"trainable={trainable} with zero={zero}: a partly frozen "
                             "model trains with zero 0")
        if model.flat.data is None and zero != 3:
            raise ValueError(f"zero={zero} for a model built shard by shard: expected zero=3 "
                             "(build_model(..., zero=3) is the only sharded construction)")
        if isinstance(accum, bool) or not isinstance(accum, int) or accum < 1:
            raise ValueError(f"accum={accum!r}: expected a positive integer")
        self.model, self.grid, self.comm = model, grid, grid.dp_group
        self.zero, self.accum = zero, accum
        self.max_grad_norm, self.smoothing = max_grad_norm, smoothing
        self.unit_sizes = [b - a for a, b in model.unit_ranges()]
        self.itemsize = model.flat.dtype.itemsize
        self.dp = DataParallel(model, self.comm, bucket_bytes, overlap=overlap)
        if model.flat.data is not None:
            self.dp.broadcast_parameters()
            self.dp.verify_replicas()
        # else: a model built shard by shard (ZeRO-3) has no replica to broadcast; its
        # shards are slices of one model because the init depends on (seed, name) only
        # the ZeRO stage is an object with one interface (stage 0 included), so the
        # step below has no branch on it; the unit wrappers are put in place here
        hyper = dict(betas=betas, eps=eps, weight_decay=weight_decay)
        if zero == 0:
            self.optimizer = ReplicatedOptimizer(model, self.dp, optimizer, momentum=momentum,
                                                 trainable=trainable, **hyper)
        else:
            self.optimizer = ZeroOptimizer(model, self.comm, zero, dp=self.dp,
                                           allocate=allocate, **hyper)
            shard_units(model, self.optimizer)     # ZeRO-2/3: gradients (and params) sharded
        if overlap:
            wrap_units(model, GradReadyUnit, self.dp)   # post bucket all-reduces in backward
        self.step_count = 0
        # bytes of the contexts of the last step's first micro-batch (model + loss;
        # the --audit activation line, cost.stage_activation_bytes); pp > 1: see
        # ``pipeline.peak_activation_bytes``
        self.activation_bytes = 0
        self.pipeline = None
        if grid.pp > 1:
            check_schedule(schedule, accum, grid.pp, getattr(model, "virtual_stages", 1))
            self.pipeline = Pipeline(model, grid, schedule)
        self.schedule = schedule

    def train_step(self, micro_batches, lr):
        """One optimizer step on this rank's slice of the global batch.

        micro_batches : list of ``accum`` pairs ``(x (b, C, H, W), y (b,))``,
            x of the model dtype, y integer class ids (as ``minivit.io.sources.LoaderSteps`` yields them).
        lr : learning rate of this step.
        Returns dict ``loss`` (mean over the global batch), ``accuracy`` (top-1
        over the global batch, in [0, 1]), ``grad_norm`` (global norm of the
        mean gradient, before clipping), ``finite`` (False when the loss or the
        norm is NaN/inf: then no update ran, the gradients were dropped and
        ``step_count`` did not advance; every rank returns the same value),
        ``comm_bytes`` (bytes this rank sent in the step, all groups),
        ``comm_seconds`` (seconds blocked in communication).
        Raises ValueError unless there are ``accum`` micro-batches.
        """
        if len(micro_batches) != self.accum:
            raise ValueError(f"{len(micro_batches)} micro-batches: expected accum={self.accum}")
        mark = self.comm.ledger.mark()
        scale = 1.0 / (self.accum * self.comm.size)
        totals = np.zeros(2, dtype=np.float64)   # scaled loss, correct top-1 predictions
        images = 0
        if self.pipeline is not None:
            totals, images = self.pipeline.run(micro_batches, scale, self.smoothing,
                                               before_last_backward=self.dp.arm)
            micro_batches = ()   # every stage syncs its gradients over dp once, below
        for i, (x, y) in enumerate(micro_batches):
            logits, ctx = self.model.forward(x)
            loss, loss_ctx = cross_entropy_forward(logits, y, self.smoothing)
            totals += (loss * scale, correct_top1(logits, y))
            images += len(y)
            if i == 0:
                self.activation_bytes = ctx_nbytes((ctx, loss_ctx))
            if i == self.accum - 1:
                self.dp.arm()
            self.model.backward(cross_entropy_backward(loss_ctx, scale), ctx)
        self.optimizer.sync_gradients()       # ZeRO 0-1: all-reduce; 2-3: done in backward
        # one float64 all-reduce carries both logged numbers; it runs before the
        # update so that the loss and the gradient norm, which are all-reduced values
        # and hence bitwise the same on every rank, decide on every rank alike
        # whether the update may run (the non-finite guard)
        if self.grid.pp > 1:      # only the last stage computed the loss
            self.grid.pp_group.allreduce(totals)
        loss, correct = self.comm.allreduce(totals)
        norm = self.optimizer.grad_norm()      # collective at ZeRO 2-3 and under tp/pp
        finite = math.isfinite(loss) and math.isfinite(norm)
        if finite:
            self.step_count += 1
            self.optimizer.step(lr, self.step_count, self.max_grad_norm, norm=norm)
        else:
            self.optimizer.drop_gradients()    # parameters and optimizer state stay untouched
        entries = self.comm.ledger.since(mark)
        return {"loss": float(loss), "accuracy": float(correct) / (images * self.comm.size),
                "grad_norm": norm, "finite": finite,
                "comm_bytes": sum(e.bytes for e in entries),
                "comm_seconds": sum(e.seconds for e in entries)}

    # ------------------------------------------------------------ audit
    def predicted_step_bytes(self):
        """``{op: bytes}`` one rank should send per step (cost.py, padding-exact),
        including the float64 all-reduces of the gradient norm and of the logged
        loss and top-1 count (2 values)."""
        pred = cost.step_comm_bytes(self.unit_sizes, self.comm.size, self.zero, self.itemsize,
                                    accum=self.accum, bucket_elems=self.dp.bucket_elems,
                                    clip=True)
        pred["allreduce"] = pred.get("allreduce", 0) + cost.allreduce_bytes(2, self.comm.size, 8)
        return pred

    def memory(self):
        """Measured persistent bytes per rank: ``params``, ``grads``, ``optim``, ``total``."""
        return self.optimizer.memory()

    def predicted_memory(self):
        """cost.py's per-rank model-state bytes, padding-exact and closed form."""
        exact = cost.padded_memory_bytes(self.unit_sizes, self.comm.size, self.zero,
                                         self.itemsize)
        closed = cost.zero_memory_bytes(sum(self.unit_sizes), self.comm.size, self.zero,
                                        self.itemsize)
        return exact, closed

    def optimizer_state_dict(self):
        """Optimizer state as ``minivit.optim`` ``state_dict()`` gives it: full named
        arrays on every rank, whatever the dp size and stage (gathered under ZeRO)."""
        return self.optimizer.state_dict(self.step_count)

    def load_optimizer_state_dict(self, state):
        """Restore :meth:`optimizer_state_dict` output saved with any dp size or stage."""
        self.optimizer.load_state_dict(state)      # AdamW or ZeroOptimizer: same format
        self.step_count = int(state["step"])

    def full_parameters(self):
        """The full flat parameter vector on every rank (gathered at stage 3)."""
        return self.optimizer.full_parameters()

