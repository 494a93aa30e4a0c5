"""``--audit`` tables: the ledger of one step next to cost.py's predictions.

Communication: per (op, group) the count and bytes this rank sent, beside the
padding-exact prediction of ``cost.step_comm_bytes`` and the closed form of
the ZeRO paper (Rajbhandari et al. 2020, section 7).  Memory: measured bytes
of parameters, gradients and optimizer state beside the padded formula and
the closed form of section 5.1.  Activations: the measured bytes of one
micro-batch's contexts (``recompute.ctx_nbytes``) beside
``cost.stage_activation_bytes`` (issue 15), and the micro-batches in flight.
"""
from .. import cost
from ..model_parallel import ModelShard
from ..offload import rss_bytes
from ..pipeline import in_flight_peak, pipeline_ops

_STAGE_FORMULA = {0: "2(p-1)/p Psi", 1: "3(p-1)/p Psi", 2: "(accum+1)(p-1)/p Psi",
                  3: "3 accum (p-1)/p Psi"}
_MEMORY_FORMULA = {0: "16 Psi", 1: "8 Psi + 8 Psi/p", 2: "4 Psi + 12 Psi/p", 3: "16 Psi/p"}


def comm_table(step, summary, predicted, *, psi, p, stage, itemsize, accum=1, other=None):
    """Lines of the per-step communication audit.

    summary : ``Ledger.summary(since=mark)`` of the step.
    predicted : ``{op: bytes}`` from ``StepEngine.predicted_step_bytes()``.
    psi, p, stage, itemsize, accum : for the closed-form total.
    other : ``{(op, group): bytes}`` predicted on the tp and pp groups
        (``predicted_group_bytes`` below); checked per group, apart from dp.
    """
    other = other or {}
    summary = dict(summary)
    extra = {k: summary.pop(k) for k in list(summary) if k[1] in ("tp", "pp")}
    lines = [f"[audit] step {step}: ZeRO-{stage}, dp={p}, accumulation {accum}, "
             f"Psi={psi:,} parameters x {itemsize} B",
             f"[audit]   {'op':<15}{'group':<7}{'count':>6}{'bytes sent':>14}{'predicted':>14}"]
    measured = {}
    for (op, group), row in sorted(summary.items()):
        measured[op] = measured.get(op, 0) + row["bytes"]
        pred = predicted.get(op, 0) if group == "dp" else 0
        lines.append(f"[audit]   {op:<15}{group:<7}{row['count']:>6}{row['bytes']:>14,}"
                     f"{pred:>14,}")
    total, pred_total = sum(measured.values()), sum(predicted.values())
    closed = cost.zero_comm_elements(psi, p, stage, accum) * itemsize
    verdict = "OK" if measured == {k: v for k, v in predicted.items() if v or k in measured} \
        else "MISMATCH"
    lines.append(f"[audit]   {'total':<28}{total:>14,}{pred_total:>14,}  {verdict}; closed form "
                 f"{_STAGE_FORMULA[stage]} x {itemsize} B = {closed:,.0f}")
    for key in sorted(set(extra) | set(other)):
        row = extra.get(key, {"count": 0, "bytes": 0})
        ok = "OK" if row["bytes"] == other.get(key, 0) else "MISMATCH"
        lines.append(f"[audit]   {key[0]:<15}{key[1]:<7}{row['count']:>6}{row['bytes']:>14,}"
                     f"{other.get(key, 0):>14,}  {ok} (cost.py tp/pp)")
    return lines


def memory_table(measured, exact, closed, *, p, stage):
    """Lines of the model-state memory audit (bytes per rank)."""
    lines = [f"[audit] memory per rank, ZeRO-{stage}, dp={p} "
             f"(closed form {_MEMORY_FORMULA[stage]})",
             f"[audit]   {'':<8}{'measured':>14}{'padded formula':>16}{'closed form':>14}"]
    for key in ("params", "grads", "optim", "total"):
        lines.append(f"[audit]   {key:<8}{measured[key]:>14,}{exact[key]:>16,}"
                     f"{closed[key]:>14,.0f}")
    return lines


def model_parallel_lines(engine, micro_batch, recompute, offload=None):
    """``[audit]`` lines for tp/pp: predicted bytes per group (cost.py), pipeline
    peak contexts and activation bytes, offloaded bytes and RSS."""
    grid, model, cfg = engine.grid, engine.model, engine.model.config
    item = engine.itemsize
    lines = []
    if isinstance(model, ModelShard):
        v = model.virtual_stages
        pp = cost.pp_step_bytes(micro_batch, model.tokens_local, cfg.dim, engine.accum, item,
                                not grid.is_first_stage, not grid.is_last_stage, v)
        sends = cost.pp_step_messages(engine.accum, not grid.is_first_stage,
                                      not grid.is_last_stage, v)
        one = cost.pp_step_messages(engine.accum, not grid.is_first_stage,
                                    not grid.is_last_stage)
        per = ("per boundary per micro-batch" if v == 1 else
               f"per chunk boundary per micro-batch: (2v - first - last) m = {sends} "
               f"sends at v={v}, 1F1B {one}")
        if model.sequence_parallel:
            lines.append(_sequence_parallel_line(engine, micro_batch, recompute, pp, per))
        else:
            tp = cost.tp_step_bytes(micro_batch, cfg.seq_len, cfg.dim, model.num_blocks,
                                    engine.accum, grid.tp, item, recompute)
            # the table's tp row also holds the gradient norm's sum of squares
            norm = (f" + {cost.allreduce_bytes(1, grid.tp, 8):,} B for the gradient norm's "
                    "float64 sum of squares" if grid.tp > 1 else "")
            lines.append(f"[audit] stage {grid.pp_rank} (blocks {_blocks_text(model)}), "
                         f"tp {grid.tp}: predicted tp activation all-reduce {tp:,} B "
                         f"({_tp_count(recompute)} x blocks x micro-batches x b*s*h){norm}, "
                         f"pp send {pp:,} B (b*s*h {per})")
    if engine.pipeline is not None:
        p = engine.pipeline
        what = "micro-batch" if getattr(model, "virtual_stages", 1) == 1 else \
            "(micro-batch, chunk)"
        lines.append(f"[audit] pipeline {engine.schedule}: peak {p.peak_contexts} {what} "
                     f"contexts alive on stage {grid.pp_rank} (pp={grid.pp}, m={engine.accum}),"
                     f" {p.peak_activation_bytes:,} activation bytes")
    if offload is not None:
        rss = rss_bytes()
        lines.append(f"[audit] offload: {offload.nbytes:,} B of optimizer state in "
                     f"{offload.directory}; RSS {rss.get('rss', 0):,} B "
                     f"(anonymous {rss.get('anon', 0):,} B)")
    return lines


def _tp_count(recompute):
    """All-reduces (or gather/scatter pairs) per block and micro-batch: full recompute's
    rebuilt forward adds 2; selective rebuilds only the head-local core, none."""
    return 6 if cost.recompute_mode(recompute) == "full" else 4


# the closed form of one block's context (``cost.block_ctx_bytes``) by
# (sequence parallel, recompute mode), as the audit prints it
_BLOCK_FORMS = {
    (False, "full"): "s B T D", (True, "full"): "s B T_loc D",
    (False, None): "s B T (4D + (4D + 2M + H T)/tp) + 32 B T",
    (True, None): "s B (2 T_loc D + T (2D + (4D + 2M + H T)/tp)) + 32 B T_loc",
    (False, "selective"): "s B T (4D + (4D + 2M)/tp) + 8 B T H/tp + 32 B T",
    (True, "selective"): "s B (2 T_loc D + T (2D + (4D + 2M)/tp)) + 8 B T H/tp + 32 B T_loc"}


def _blocks_text(model):
    """``lo..hi`` block ranges of this rank's chunks (one per chunk, interleaved)."""
    return ", ".join(f"{lo}..{hi - 1}" for lo, hi in model.chunk_blocks)


def _sp_bytes(engine, micro_batch, recompute):
    grid, model = engine.grid, engine.model
    return cost.sp_step_bytes(micro_batch, model.config.seq_len, model.config.dim,
                              model.num_blocks,
                              engine.accum, grid.tp, engine.itemsize, recompute=recompute,
                              first=grid.is_first_stage, last=grid.is_last_stage)


def _sequence_parallel_line(engine, micro_batch, recompute, pp, per):
    grid, model, cfg = engine.grid, engine.model, engine.model.config
    sp = _sp_bytes(engine, micro_batch, recompute)
    tp_equivalent = cost.tp_step_bytes(micro_batch, cfg.seq_len, cfg.dim, model.num_blocks,
                                       engine.accum, grid.tp, engine.itemsize, recompute)
    ends = int(grid.is_first_stage) + int(grid.is_last_stage)
    return (f"[audit] stage {grid.pp_rank} (blocks {_blocks_text(model)}), tp {grid.tp}, sequence "
            f"parallel (T={cfg.seq_len} -> T_loc={model.tokens_local} per rank): predicted "
            f"all-gather {sp['allgather']:,} B + reduce-scatter {sp['reduce_scatter']:,} B "
            f"({_tp_count(recompute)} each x blocks x micro-batches x (t-1) b T_loc h, "
            f"+{ends} all-gather(s) at the region's ends; TP's all-reduces would send "
            f"{tp_equivalent:,} B), LN-gradient all-reduce {sp['allreduce']:,} B, pp send "
            f"{pp:,} B (b*T_loc*h {per})")


def predicted_group_bytes(engine, micro_batch, recompute):
    """``{(op, group): bytes}`` this rank sends per step on the tp and pp groups
    (cost.py): the activation all-reduces / sends plus the float64 scalars (the
    gradient norm's sum of squares over tp and pp, the logged loss and top-1
    count over pp).  Empty for the serial model."""
    grid, model = engine.grid, engine.model
    if not isinstance(model, ModelShard):
        return {}
    cfg, item, out = model.config, engine.itemsize, {}
    if model.sequence_parallel:
        sp = _sp_bytes(engine, micro_batch, recompute)
        out[("allgather", "tp")] = sp["allgather"]
        out[("reduce_scatter", "tp")] = sp["reduce_scatter"]
        out[("allreduce", "tp")] = sp["allreduce"] + cost.allreduce_bytes(1, grid.tp, 8)
    elif grid.tp > 1:
        out[("allreduce", "tp")] = (cost.tp_step_bytes(micro_batch, cfg.seq_len, cfg.dim,
                                                       model.num_blocks, engine.accum, grid.tp,
                                                       item, recompute)
                                    + cost.allreduce_bytes(1, grid.tp, 8))
    if grid.pp > 1:
        out[("send", "pp")] = cost.pp_step_bytes(micro_batch, model.tokens_local, cfg.dim,
                                                 engine.accum, item, not grid.is_first_stage,
                                                 not grid.is_last_stage, model.virtual_stages)
        out[("allreduce", "pp")] = (cost.allreduce_bytes(2, grid.pp, 8)
                                    + cost.allreduce_bytes(1, grid.pp, 8))
    return out


def activation_lines(engine, micro_batch, recompute):
    """``[audit]`` lines: measured context bytes of one micro-batch on this rank next
    to the closed form of ``cost.stage_activation_bytes`` (and, under a pipeline,
    the measured peak next to in-flight x per-micro-batch; interleaved, next to
    the bytes of the chunk contexts its op list keeps alive at its peak)."""
    grid, model, cfg, item = engine.grid, engine.model, engine.model.config, engine.itemsize
    first, last, blocks, sp = True, True, cfg.depth, False
    if isinstance(model, ModelShard):
        first, last = grid.is_first_stage, grid.is_last_stage
        blocks, sp = model.num_blocks, model.sequence_parallel
    per = cost.stage_activation_bytes(cfg, micro_batch, item, blocks=blocks, first=first,
                                      last=last, tp=grid.tp, recompute=recompute,
                                      sequence_parallel=sp)
    block = cost.block_ctx_bytes(cfg, micro_batch, item, tp=grid.tp, recompute=recompute,
                                 sequence_parallel=sp)
    mode = cost.recompute_mode(recompute)
    form = _BLOCK_FORMS[(sp, mode)]
    if sp and mode != "full":
        form += f", T_loc={model.tokens_local}"
    detail = (f"[audit]   per block {block:,} B ({form}, s={item}, B={micro_batch}, "
              f"T={cfg.seq_len}, D={cfg.dim}, M={cfg.mlp_dim}, H={cfg.heads}, tp={grid.tp}; "
              f"recompute {mode or 'off'}); "
              f"{blocks} blocks{' + embed' if first else ''}{' + head + loss' if last else ''}")
    if engine.pipeline is not None and engine.schedule == "interleaved":
        return [_interleaved_activation_line(engine, micro_batch, recompute), detail]
    if engine.pipeline is None:
        measured, n = engine.activation_bytes, 1
    else:
        measured = engine.pipeline.peak_activation_bytes
        n = cost.micro_batches_in_flight(engine.schedule, engine.accum, grid.pp, grid.pp_rank)
    ok = "OK" if measured == n * per else "MISMATCH"
    return [f"[audit] activations on stage {grid.pp_rank}: measured {measured:,} B of contexts,"
            f" formula {n} in flight x {per:,} B = {n * per:,} B  {ok}", detail]


def _interleaved_activation_line(engine, micro_batch, recompute):
    """Measured peak against the op list's peak over per-chunk context bytes, and the
    in-flight count against ``cost.micro_batches_in_flight``."""
    grid, model, cfg, item = engine.grid, engine.model, engine.model.config, engine.itemsize
    v, p, s = model.virtual_stages, grid.pp, grid.pp_rank
    chunk = [cost.stage_activation_bytes(cfg, micro_batch, item, blocks=hi - lo,
                                         first=c * p + s == 0, last=c * p + s == p * v - 1,
                                         tp=grid.tp, recompute=recompute,
                                         sequence_parallel=model.sequence_parallel)
             for c, (lo, hi) in enumerate(model.chunk_blocks)]
    n = cost.micro_batches_in_flight("interleaved", engine.accum, p, s, v)
    count, nbytes = in_flight_peak(pipeline_ops("interleaved", engine.accum, p, s, v), chunk)
    pipe = engine.pipeline
    ok = "OK" if (pipe.peak_contexts, pipe.peak_activation_bytes) == (n, nbytes) \
        and count == n else "MISMATCH"
    return (f"[audit] activations on stage {s}: measured {pipe.peak_activation_bytes:,} B in "
            f"{pipe.peak_contexts} chunk contexts, formula min(2(p-s-1) + (v-1)p + 1, m v) = "
            f"{n} in flight, chunks of {', '.join(f'{b:,}' for b in chunk)} B = {nbytes:,} B  "
            f"{ok}")
