"""Pipeline parallelism: GPipe, 1F1B and zero-bubble ZB-H1 schedules over the pp group.

GPipe: Huang et al. 2019, "GPipe: Efficient Training of Giant Neural Networks
using Pipeline Parallelism", section 2.2 (all forwards, then all backwards).
1F1B: Narayanan et al. 2021, "Efficient Large-Scale Language Model Training
on GPU Clusters Using Megatron-LM", section 2.2.1 (PipeDream-Flush: warm-up of
``pp - stage - 1`` forwards, steady state of one forward and one backward,
cool-down of the remaining backwards).  Both flush at the end of every step,
so the update is the synchronous one of the serial model.

ZB-H1: Qi et al. 2024, "Zero Bubble Pipeline Parallelism", ICLR, section 3.1
and Figure 3 (top).  Each backward is split into B (the gradient of the
stage input, which the previous stage waits for) and W (the weight
gradients, which nobody waits for); see ``minivit.layers``.  Stage ``s`` of
``p`` runs, for ``x = 0 .. m + p - 2``, the triple ``F(x)``, ``B(x - (p-1-s))``,
``W(x - (p-1))`` (each only when its micro-batch index lies in ``0..m-1``): the
1F1B warm-up of ``p - 1 - s`` forwards, then B sent upstream before the
stage's own W, and the W passes filling what were the cool-down bubbles.  A
micro-batch stays in flight from its F to its W, at most ``p`` on any stage:
1F1B's peak (stage 0).  The weight gradients of every parameter are still added
in micro-batch order, so the gradients are bitwise those of 1F1B.

Bubble fraction (idle share of a stage's step time, Narayanan et al. eq. 1 for
equal-cost micro-batches): ``(p - 1) / (m + p - 1)`` for GPipe and 1F1B (1F1B
only bounds the contexts alive per stage by ``pp`` instead of ``m``); for
ZB-H1 ``(p - 1)(T_F + T_B - T_W) / (m (T_F + T_B + T_W) + (p - 1)(T_F + T_B - T_W))``
(Qi et al. section 3.1), ``(p - 1) / (3m + p - 1)`` when F, B and W cost alike.

Transport: stage ``s`` sends its output activation ``(b, T, D)`` (``(b, T_loc, D)``
under sequence parallelism: ``ModelShard.activation_shape``) to ``s + 1``
and receives the gradient of that activation back, through the audited pp
communicator (``isend`` + blocking ``recv``; the sends are completed at the
end of the schedule, so no pair of stages can block each other).
"""
import time

import numpy as np

from minivit.loss import correct_top1, cross_entropy_backward, cross_entropy_forward

from .recompute import ctx_nbytes

SCHEDULES = ("gpipe", "1f1b", "zb-h1")
# schedules whose "B" is only the input half of the backward, followed later by "W"
SPLIT_BACKWARD = ("zb-h1",)


def check_schedule(schedule, micro_batches, pp):
    """Raise ValueError for an unknown schedule, or 1F1B / ZB-H1 with fewer
    micro-batches than stages."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}: expected one of {SCHEDULES}")
    if schedule != "gpipe" and pp > 1 and micro_batches < pp:
        name = "1F1B" if schedule == "1f1b" else "ZB-H1"
        raise ValueError(
            f"{name} with {micro_batches} micro-batches on pp={pp} stages: expected at least "
            "pp micro-batches per step (raise --global-batch or lower --micro-batch; "
            "accumulation = micro-batches of the pipeline)")


def schedule_order(schedule, m, pp, stage):
    """The list of ``("F"|"B"|"W", micro_batch)`` operations stage ``stage`` runs in a step.

    "B" is the whole backward for GPipe and 1F1B; for ZB-H1 it is the input half
    and "W" the weight half (module docstring).
    """
    if schedule == "gpipe":
        return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]
    if schedule == "zb-h1":
        ops = []
        for x in range(m + pp - 1):
            for kind, i in (("F", x), ("B", x - (pp - 1 - stage)), ("W", x - (pp - 1))):
                if 0 <= i < m:
                    ops.append((kind, i))
        return ops
    warmup = min(pp - stage - 1, m)
    ops = [("F", i) for i in range(warmup)]
    for i in range(m - warmup):
        ops += [("F", warmup + i), ("B", i)]
    return ops + [("B", i) for i in range(m - warmup, m)]


def bubble_fraction(schedule, p, m, t_f=1.0, t_b=1.0, t_w=1.0):
    """Idle share of a stage's step time under ``schedule`` (module docstring).

    t_f, t_b, t_w : seconds (or any unit) of one micro-batch's forward, input
    backward and weight backward on a stage; GPipe and 1F1B run B and W as one
    backward of ``t_b + t_w``.  Raises ValueError for an unknown schedule.
    """
    check_schedule(schedule, max(m, p), p)
    if schedule == "zb-h1":
        idle = (p - 1) * (t_f + t_b - t_w)
    else:
        idle = (p - 1) * (t_f + t_b + t_w)
    return idle / (m * (t_f + t_b + t_w) + idle)


class Pipeline:
    """Run one step's forward and backward passes of ``model`` (a ModelShard) on its stage.

    grid : ProcessGrid (pp_group, prev/next stage).  schedule : one of SCHEDULES.
    After :meth:`run`, ``events`` holds ``(kind 0=F/1=B/2=W, micro-batch, start_s,
    end_s)`` rows (``time.perf_counter``, a clock shared by the processes of one
    host), ``peak_contexts`` the most micro-batches in flight at once on this
    stage (forward done, last backward half not yet) and
    ``peak_activation_bytes`` the largest total ``ctx_nbytes`` of what they keep.
    """

    def __init__(self, model, grid, schedule):
        check_schedule(schedule, grid.pp, grid.pp)   # name check; m is checked per step
        self.model, self.grid, self.schedule = model, grid, schedule
        self.comm = grid.pp_group
        self.events = np.zeros((0, 4))
        self.peak_contexts = 0
        self.peak_activation_bytes = 0

    def run(self, micro_batches, scale, smoothing=0.0, before_last_backward=None):
        """Forward and backward of every micro-batch; gradients accumulate in the model.

        micro_batches : list of ``(x (b, C, H, W), y (b,))`` (every stage gets the
            same list; the first uses x, the last y).
        scale : loss-gradient scale (1 / (accum * dp)).
        before_last_backward : optional callable run before the last backward
            (arms overlapped dp all-reduces).
        Returns ``(totals, images)``: float64 [sum of scaled losses, correct top-1]
        (non-zero on the last stage only) and the number of images.
        Raises ValueError (same on every rank, before any send) for 1F1B with
        fewer micro-batches than stages.
        """
        grid, model = self.grid, self.model
        m = len(micro_batches)
        check_schedule(self.schedule, m, grid.pp)
        cfg = model.config
        dtype = np.dtype(cfg.dtype)
        stage, last = grid.pp_rank, grid.is_last_stage
        split = self.schedule in SPLIT_BACKWARD
        ctxs, wctxs, sends, events = {}, {}, [], []
        totals = np.zeros(2, dtype=np.float64)
        peak_n = peak_bytes = 0
        ops = schedule_order(self.schedule, m, grid.pp, stage)
        n_backward = 0
        for kind, i in ops:
            if kind == "W":       # the weight half: no communication, fills the bubbles
                t0 = time.perf_counter()
                model.backward_weight(wctxs.pop(i))
                events.append((2, i, t0, time.perf_counter()))
                continue
            x, y = micro_batches[i]
            shape = model.activation_shape(len(y))    # (b, T, D); (b, T_loc, D) under SP
            if kind == "F":
                if not grid.is_first_stage:
                    x = self.comm.recv(np.empty(shape, dtype), stage - 1, tag=2 * i)
                t0 = time.perf_counter()
                out, ctx = model.forward(x)
                if last:
                    loss, loss_ctx = cross_entropy_forward(out, y, smoothing)
                    totals += (loss * scale, correct_top1(out, y))
                    ctx = (ctx, loss_ctx)
                ctxs[i] = ctx
                events.append((0, i, t0, time.perf_counter()))
                peak_n = max(peak_n, len(ctxs) + len(wctxs))
                peak_bytes = max(peak_bytes, ctx_nbytes([list(ctxs.values()),
                                                         list(wctxs.values())]))
                if not last:
                    buf = np.ascontiguousarray(out)   # kept referenced until the send completes
                    sends.append((buf, self.comm.isend(buf, stage + 1, tag=2 * i)))
            else:
                if last:
                    ctx, loss_ctx = ctxs.pop(i)
                    dy = cross_entropy_backward(loss_ctx, scale)
                else:
                    ctx = ctxs.pop(i)
                    dy = self.comm.recv(np.empty(shape, dtype), stage + 1, tag=2 * i + 1)
                n_backward += 1
                if n_backward == m and before_last_backward is not None:
                    before_last_backward()
                t0 = time.perf_counter()
                if split:
                    dx, wctxs[i] = model.backward_input(dy, ctx)
                else:
                    dx = model.backward(dy, ctx)
                events.append((1, i, t0, time.perf_counter()))
                if not grid.is_first_stage:
                    buf = np.ascontiguousarray(dx)
                    sends.append((buf, self.comm.isend(buf, stage - 1, tag=2 * i + 1)))
        for _, request in sends:
            request.wait()
        self.events = np.array(events, dtype=np.float64)
        self.peak_contexts, self.peak_activation_bytes = peak_n, peak_bytes
        images = sum(len(y) for _, y in micro_batches)
        return totals, images


class PipelineForward:
    """Forward-only view of a pipelined ``ModelShard`` for evaluation.

    forward(x (B, C, H, W)) -> ``(logits (B, K), None)`` on every rank: the stages
    run one after the other (no micro-batching: evaluation is cheap next to
    training), then the last stage broadcasts the logits over pp so every rank
    can score them (``parallel.evaluate.Evaluator`` takes any such ``model``).
    """

    def __init__(self, model, grid):
        self.model, self.grid, self.config = model, grid, model.config

    def forward(self, x):
        grid, cfg = self.grid, self.config
        comm, stage = grid.pp_group, grid.pp_rank
        dtype = np.dtype(cfg.dtype)
        if not grid.is_first_stage:
            x = comm.recv(np.empty(self.model.activation_shape(x.shape[0]), dtype), stage - 1)
        out, _ = self.model.forward(x)
        if not grid.is_last_stage:
            comm.send(np.ascontiguousarray(out), stage + 1)
            out = np.empty((x.shape[0], cfg.num_classes), dtype)
        return comm.broadcast(np.ascontiguousarray(out), root=grid.pp - 1), None
