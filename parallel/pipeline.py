"""Pipeline parallelism: GPipe, 1F1B, interleaved 1F1B and zero-bubble ZB-H1 schedules
over the pp group.

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

Interleaved 1F1B: Narayanan et al. 2021, section 2.2.2 (Figure 4).  Each rank
holds ``v`` model chunks; chunk ``c`` of rank ``s`` is virtual stage ``c p + s``
(``model_parallel.ModelShard``).  Megatron-LM's order
(``forward_backward_pipelining_with_interleaving``): the k-th forward of a rank
runs chunk ``(k mod p v) // p`` on micro-batch ``(k // p v) p + k mod p`` (groups
of ``p`` micro-batches go through chunk 0, then chunk 1, ...), the k-th backward
the same with the chunks reversed; warm-up ``(p - s - 1) 2 + (v - 1) p``
forwards (at most ``m v``), then one forward and one backward, then the
remaining backwards.  The grouping needs ``m`` to be a multiple of ``p``.

Bubble fraction (idle share of a stage's step time, Narayanan et al. eq. 1 for
equal-cost micro-batches): ``(p - 1) / (m + p - 1)`` for GPipe and 1F1B (1F1B
only bounds the contexts alive per stage by ``pp`` instead of ``m``); for
ZB-H1 ``(p - 1)(T_F + T_B - T_W) / (m (T_F + T_B + T_W) + (p - 1)(T_F + T_B - T_W))``
(Qi et al. section 3.1), ``(p - 1) / (3m + p - 1)`` when F, B and W cost alike;
interleaved 1F1B ``(p - 1) / (v m + p - 1)``: Narayanan et al. section 2.2.2 give
the bubble time ``(p - 1)(t_f + t_b) / v`` against the ideal ``m (t_f + t_b)``, so
the idle share is ``((p-1)/v) / (m + (p-1)/v)``.

Transport: stage ``s`` sends its output activation ``(b, T, D)`` (``(b, T_loc, D)``
under sequence parallelism: ``ModelShard.activation_shape``) to ``s + 1``
and receives the gradient of that activation back, through the audited pp
communicator (``isend`` + blocking ``recv``; the sends are completed at the
end of the schedule, so no pair of stages can block each other).  Interleaved,
virtual stage ``c p + s`` sends to ``c p + s + 1``: rank ``s + 1``, chunk ``c``,
or from rank ``p - 1`` to rank 0, chunk ``c + 1``.  A message is tagged by its
sender's chunk, micro-batch and direction (``_tag``), so two messages between
the same pair of ranks never match the wrong receive.
"""
import time

import numpy as np

from minivit.loss import correct_top1, cross_entropy_backward, cross_entropy_forward

from .recompute import ctx_nbytes

SCHEDULES = ("gpipe", "1f1b", "zb-h1", "interleaved")
# schedules whose "B" is only the input half of the backward, followed later by "W"
SPLIT_BACKWARD = ("zb-h1",)


# what sets the micro-batches per step in run/pretrain.py; another caller (run/plan.py
# takes --accum) names its own flags, so that an error message tells what to type
MICRO_BATCHES_FROM = "--global-batch / (--micro-batch x dp)"


def check_schedule(schedule, micro_batches, pp, virtual_stages=1, source=MICRO_BATCHES_FROM):
    """Raise ValueError for an unknown schedule, 1F1B / ZB-H1 with fewer
    micro-batches than stages, or an interleaved schedule that cannot run
    (:func:`check_interleaved`); ``virtual_stages`` other than 1 needs it.
    source : the flags that set ``micro_batches``, for the interleaved message."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r}: expected one of {SCHEDULES}")
    if schedule == "interleaved":
        check_interleaved(micro_batches, pp, virtual_stages, source)
        return
    if virtual_stages != 1:
        raise ValueError(f"--virtual-stages {virtual_stages} with --schedule {schedule}: "
                         "expected 1 (only --schedule interleaved holds several model "
                         "chunks per stage)")
    if schedule != "gpipe" and pp > 1 and micro_batches < pp:
        name = "1F1B" if schedule == "1f1b" else "ZB-H1"
        raise ValueError(
            f"{name} with {micro_batches} micro-batches on pp={pp} stages: expected at least "
            "pp micro-batches per step (raise --global-batch or lower --micro-batch; "
            "accumulation = micro-batches of the pipeline)")


def check_interleaved(m, pp, v, source=MICRO_BATCHES_FROM):
    """Raise ValueError (naming the flags) unless interleaved 1F1B can run ``m``
    micro-batches on ``pp`` stages of ``v`` chunks each; ``source`` names the
    flags that set ``m`` (default: run/pretrain.py's).

    Requires ``pp >= 2`` (one stage has no neighbour to interleave with),
    ``v >= 2`` (with one chunk the schedule is 1F1B: use ``--schedule 1f1b``) and
    ``m`` a positive multiple of ``pp``, as Megatron-LM does: the order sends
    groups of ``pp`` micro-batches through chunk 0, then chunk 1, ...
    (module docstring); a last, partial group would name micro-batches that do
    not exist.  (Depth >= pp v is ``model_parallel.balance_stages``' check.)
    """
    if isinstance(v, bool) or not isinstance(v, int) or v < 2:
        # right whether the user typed 1 or left the flag out (its default is 1)
        raise ValueError(f"--virtual-stages {v} with --schedule interleaved: expected an "
                         "integer >= 2 model chunks per stage (--virtual-stages defaults to 1, "
                         "which is --schedule 1f1b)")
    if pp < 2:
        raise ValueError(f"--schedule interleaved with --pp {pp}: expected --pp >= 2 "
                         "(chunks interleave across pipeline stages)")
    if m < 1 or m % pp:
        raise ValueError(
            f"interleaved 1F1B with {m} micro-batches on pp={pp} stages: expected a "
            "positive multiple of pp micro-batches per step (the schedule runs them in "
            f"groups of pp per model chunk, as Megatron-LM; micro-batches = {source})")


def interleaved_order(m, pp, stage, v):
    """The ``(op, micro_batch, chunk)`` list of interleaved 1F1B on ``stage``
    (Megatron-LM's order, module docstring).  Raises ValueError via
    :func:`check_interleaved`."""
    check_interleaved(m, pp, v)
    total = m * v

    def unit(k, forward):
        group, pos = divmod(k, pp * v)
        chunk = pos // pp
        return group * pp + pos % pp, (chunk if forward else v - 1 - chunk)

    warmup = min((pp - stage - 1) * 2 + (v - 1) * pp, total)
    ops = [("F", *unit(k, True)) for k in range(warmup)]
    for k in range(total - warmup):
        ops += [("F", *unit(warmup + k, True)), ("B", *unit(k, False))]
    return ops + [("B", *unit(k, False)) for k in range(total - warmup, total)]


def pipeline_ops(schedule, m, pp, stage, virtual_stages=1):
    """Every schedule's list for ``stage`` as ``(op, micro_batch, chunk)`` triples
    (chunk 0 for the one-chunk schedules of :func:`schedule_order`)."""
    if schedule == "interleaved":
        return interleaved_order(m, pp, stage, virtual_stages)
    return [(kind, i, 0) for kind, i in schedule_order(schedule, m, pp, stage)]


def in_flight_peak(ops, chunk_bytes=None):
    """``(most contexts alive at once, most bytes alive)`` over an op list of
    :func:`pipeline_ops`: a (micro-batch, chunk) context lives from its F to its
    B (to its W when there is one); the peak is taken after each F, as
    ``Pipeline`` measures it.  chunk_bytes : bytes of one context per chunk
    (default 1 each)."""
    last = {(i, c): kind for kind, i, c in ops if kind in "BW"}
    alive, peak_n, peak_b = {}, 0, 0
    for kind, i, c in ops:
        if kind == "F":
            alive[(i, c)] = 1 if chunk_bytes is None else chunk_bytes[c]
            peak_n, peak_b = max(peak_n, len(alive)), max(peak_b, sum(alive.values()))
        elif last[(i, c)] == kind:
            del alive[(i, c)]
    return peak_n, peak_b


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


def bubble_fraction(schedule, p, m, t_f=1.0, t_b=1.0, t_w=1.0, v=1):
    """Idle share of a stage's step time under ``schedule`` (module docstring).

    t_f, t_b, t_w : seconds (or any unit) of one micro-batch's forward, input
    backward and weight backward on a stage (all its chunks); GPipe, 1F1B and
    interleaved run B and W as one backward of ``t_b + t_w``.  v : chunks per
    stage (interleaved).  Raises ValueError for an unknown schedule.
    """
    if schedule == "interleaved":
        check_interleaved(m, p, v)
        idle = (p - 1) * (t_f + t_b + t_w) / v
        return idle / (m * (t_f + t_b + t_w) + idle)
    check_schedule(schedule, max(m, p), p)
    if schedule == "zb-h1":
        idle = (p - 1) * (t_f + t_b - t_w)
    else:
        idle = (p - 1) * (t_f + t_b + t_w)
    return idle / (m * (t_f + t_b + t_w) + idle)


class Pipeline:
    """Run one step's forward and backward passes of ``model`` (a ModelShard) on its stage.

    grid : ProcessGrid (pp_group, prev/next stage).  schedule : one of SCHEDULES
    (``model.virtual_stages`` chunks per rank for "interleaved").
    After :meth:`run`, ``events`` holds ``(kind 0=F/1=B/2=W, micro-batch, start_s,
    end_s, chunk)`` rows (``time.perf_counter``, a clock shared by the processes of one
    host), ``peak_contexts`` the most (micro-batch, chunk) contexts alive at once on
    this stage (forward done, last backward half not yet) and
    ``peak_activation_bytes`` the largest total ``ctx_nbytes`` of what they keep.
    """

    def __init__(self, model, grid, schedule):
        self.v = getattr(model, "virtual_stages", 1)
        # name check (m is checked per step): any multiple of pp fits the interleaved one
        check_schedule(schedule, grid.pp, grid.pp, self.v)
        self.model, self.grid, self.schedule = model, grid, schedule
        self.comm = grid.pp_group
        self.events = np.zeros((0, 5))
        self.peak_contexts = 0
        self.peak_activation_bytes = 0

    def _tag(self, chunk, i, m, backward):
        """Tag of the message a sender's ``chunk`` sends for micro-batch ``i``: unique
        per (chunk, micro-batch, direction) between any pair of ranks."""
        return 2 * (chunk * m + i) + int(backward)

    def _receive(self, shape, chunk, i, m, backward):
        """Blocking receive of the activation (forward) or its gradient (backward) of
        virtual stage ``chunk pp + s``: from the previous / next virtual stage."""
        pp, s = self.grid.pp, self.grid.pp_rank
        if backward:
            src, src_chunk = (s + 1) % pp, chunk + (1 if s == pp - 1 else 0)
        else:
            src, src_chunk = (s - 1) % pp, chunk - (1 if s == 0 else 0)
        buf = np.empty(shape, np.dtype(self.model.config.dtype))
        return self.comm.recv(buf, src, tag=self._tag(src_chunk, i, m, backward))

    def _send(self, array, chunk, i, m, backward, sends):
        pp, s = self.grid.pp, self.grid.pp_rank
        dest = (s - 1) % pp if backward else (s + 1) % pp
        buf = np.ascontiguousarray(array)      # kept referenced until the send completes
        sends.append((buf, self.comm.isend(buf, dest, tag=self._tag(chunk, i, m, backward))))

    def run(self, micro_batches, scale, smoothing=0.0, before_last_backward=None):
        """Forward and backward of every micro-batch; gradients accumulate in the model.

        micro_batches : list of ``(x (b, C, H, W), y (b,))`` (every stage gets the
            same list; the first virtual stage uses x, the last y).
        scale : loss-gradient scale (1 / (accum * dp)).
        before_last_backward : optional callable run before the last backward
            (arms overlapped dp all-reduces).
        Returns ``(totals, images)``: float64 [sum of scaled losses, correct top-1]
        (non-zero on the last stage only) and the number of images.
        Raises ValueError (same on every rank, before any send) for a number of
        micro-batches the schedule cannot run (``check_schedule``).
        """
        grid, model, m = self.grid, self.model, len(micro_batches)
        check_schedule(self.schedule, m, grid.pp, self.v)
        cfg = model.config
        first_vs, last_vs = 0, grid.pp * self.v - 1
        split = self.schedule in SPLIT_BACKWARD
        ctxs, wctxs, sends, events = {}, {}, [], []
        totals = np.zeros(2, dtype=np.float64)
        peak_n = peak_bytes = 0
        ops = pipeline_ops(self.schedule, m, grid.pp, grid.pp_rank, self.v)
        # the last B (interleaved: chunk 0 of the last micro-batch) follows every other
        # chunk's last B, so --overlap's "units from u on are final" still holds after it
        n_backward, last_backward = 0, sum(kind == "B" for kind, _, _ in ops)
        for kind, i, c in ops:
            vs = c * grid.pp + grid.pp_rank          # this op's virtual stage
            t0 = time.perf_counter()
            if kind == "W":       # the weight half: no communication, fills the bubbles
                model.backward_weight(wctxs.pop((i, c)), c)
                events.append((2, i, t0, time.perf_counter(), c))
                continue
            x, y = micro_batches[i]
            shape = model.activation_shape(len(y))    # (b, T, D); (b, T_loc, D) under SP
            if kind == "F":
                if vs != first_vs:
                    x = self._receive(shape, c, i, m, backward=False)
                t0 = time.perf_counter()
                out, ctx = model.forward(x, c)
                if vs == last_vs:
                    loss, loss_ctx = cross_entropy_forward(out, y, smoothing)
                    totals += (loss * scale, correct_top1(out, y))
                    ctx = (ctx, loss_ctx)
                ctxs[(i, c)] = ctx
                events.append((0, i, t0, time.perf_counter(), c))
                peak_n = max(peak_n, len(ctxs) + len(wctxs))
                peak_bytes = max(peak_bytes, ctx_nbytes([list(ctxs.values()),
                                                         list(wctxs.values())]))
                if vs != last_vs:
                    self._send(out, c, i, m, False, sends)
                continue
            if vs == last_vs:
                ctx, loss_ctx = ctxs.pop((i, c))
                dy = cross_entropy_backward(loss_ctx, scale)
            else:
                ctx = ctxs.pop((i, c))
                dy = self._receive(shape, c, i, m, backward=True)
            n_backward += 1
            if n_backward == last_backward and before_last_backward is not None:
                before_last_backward()
            t0 = time.perf_counter()
            if split:
                dx, wctxs[(i, c)] = model.backward_input(dy, ctx, c)
            else:
                dx = model.backward(dy, ctx, c)
            events.append((1, i, t0, time.perf_counter(), c))
            if vs != first_vs:
                self._send(dx, c, i, m, True, sends)
        for _, request in sends:
            request.wait()
        self.events = np.array(events, dtype=np.float64).reshape(-1, 5)
        self.peak_contexts, self.peak_activation_bytes = peak_n, peak_bytes
        images = sum(len(y) for _, y in micro_batches)
        return totals, images


class PipelineForward:
    """Forward-only view of a pipelined ``ModelShard`` for evaluation.

    forward(x (B, C, H, W)) -> ``(logits (B, K), None)`` on every rank: the virtual
    stages run one after the other (no micro-batching: evaluation is cheap next to
    training; interleaved, the activation passes every rank once per chunk), then
    the last stage broadcasts the logits over pp so every rank can score them
    (``parallel.evaluate.Evaluator`` takes any such ``model``).
    """

    def __init__(self, model, grid):
        self.model, self.grid, self.config = model, grid, model.config

    def forward(self, x):
        grid, cfg = self.grid, self.config
        comm, stage, pp = grid.pp_group, grid.pp_rank, grid.pp
        chunks = getattr(self.model, "virtual_stages", 1)
        dtype = np.dtype(cfg.dtype)
        out = x
        for c in range(chunks):
            vs = c * pp + stage
            if vs > 0:
                out = comm.recv(np.empty(self.model.activation_shape(x.shape[0]), dtype),
                                (stage - 1) % pp)
            out, _ = self.model.forward(out, c)
            if vs < pp * chunks - 1:
                comm.send(np.ascontiguousarray(out), (stage + 1) % pp)
        if not grid.is_last_stage:
            out = np.empty((x.shape[0], cfg.num_classes), dtype)
        return comm.broadcast(np.ascontiguousarray(out), root=grid.pp - 1), None
