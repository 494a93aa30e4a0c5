"""MPI driver for tests/parallel/test_tp_pp.py: many (dp, tp, pp) layouts in one mpirun launch.

    mpirun -n N python tests/support/mp_layouts_driver.py '<json list of layouts>'

For each layout (keys dp, tp, pp, zero, schedule, virtual_stages, recompute, offload,
overlap, micro_batch, sp = sequence parallelism), every rank
trains its ModelShard for STEPS steps of vit-nano in float64 and compares, to
1e-10 relative, the losses, gradient norms and its parameter shard with a
single-process ViT trained in the same process on the same global batch.  It
also checks: tp-replicated parameters bitwise identical over tp; the ledger's tp
all-reduce and pp send bytes equal cost.py; 1F1B peak contexts <= pp; the
evaluation forward (pipelined for pp > 1) gives the serial logits on every rank.  A layout
with ``"grads": true`` instead checks that after one pipelined step the dp
replicas of every stage hold identical gradients; one with ``"bitwise_vs":
"1f1b"`` checks that its schedule's gradients after one step are bitwise those
of the named schedule (ZB-H1's split backward against the unsplit one).  One with
``"drift": true`` (and ``"sp": true``) trains with the LayerNorm gradients left
unreduced over tp (the deliberately wrong variant of the Megatron #1446 trap) and
checks that the tp-replicated check then fails.  Rank 0 prints one
``OK <layout> ...`` line per layout; any failure raises (the guard ends all ranks).
"""
import json
import sys
import tempfile

import numpy as np
from mpi4py import MPI

from batches import random_steps

from minivit.config import get_config
from minivit.model import ViT
from minivit.parallel import cost
from minivit.parallel.data_parallel import parameter_digest
from minivit.parallel.grid import ProcessGrid
from minivit.parallel.runtime.guard import install_guard
from minivit.parallel.model_parallel import ModelShard
from minivit.parallel.runtime.evaluate import eval_model
from minivit.parallel.offload import Offload
from minivit.parallel.pipeline import in_flight_peak, pipeline_ops
from minivit.parallel.runtime.step import StepEngine
from minivit.parallel.sequence_parallel import SequenceParallelBlock
from minivit.parallel.tensor_parallel import shard_index

GLOBAL_BATCH, STEPS, LR, CLIP = 8, 3, 1e-2, 0.05
CONFIG = get_config("vit-nano", dtype="float64")


def batches(dp_rank, dp, micro_batch):
    return random_steps(CONFIG, GLOBAL_BATCH, micro_batch, dp_rank, dp, samples=32, seed=1)


def reference():
    """Losses, grad norms and final parameters of the single-process run."""
    grid = ProcessGrid(MPI.COMM_SELF, dp=1)
    model = ViT(CONFIG, seed=3)
    trainer = StepEngine(model, grid, accum=4, max_grad_norm=CLIP)
    it = batches(0, 1, 2)
    outs = [trainer.train_step(next(it)[1], LR) for _ in range(STEPS)]
    grid.free()
    return ([o["loss"] for o in outs], [o["grad_norm"] for o in outs],
            model.flat.state_dict())


def reference_grads():
    model = ViT(CONFIG, seed=3)
    for x, y in next(batches(0, 1, 2))[1]:
        from minivit.loss import cross_entropy_backward, cross_entropy_forward
        logits, ctx = model.forward(x)
        _, lctx = cross_entropy_forward(logits, y)
        model.backward(cross_entropy_backward(lctx, 1.0 / 4), ctx)
    return model.flat.named_arrays(model.flat.grad)


def close(a, b, what):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    err = float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))
    if not err <= 1e-10:
        raise AssertionError(f"{what}: relative error {err:.3e} > 1e-10")
    return err


def run_layout(lay, ref, world):
    dp, tp, pp = lay["dp"], lay["tp"], lay["pp"]
    micro = lay.get("micro_batch", 2)
    grid = ProcessGrid(world, dp=dp, tp=tp, pp=pp)
    # ZeRO-3 builds its model shard by shard, as run/pretrain.py does (build_model)
    model = ModelShard(CONFIG, 3, grid, recompute=lay.get("recompute", False),
                       sequence_parallel=lay.get("sp", False),
                       virtual_stages=lay.get("virtual_stages", 1),
                       sharded=lay.get("zero", 0) == 3)
    accum = GLOBAL_BATCH // (micro * dp)
    offload = None
    if lay.get("offload"):   # the optimizer state in numpy.memmap files: equal results
        offload = Offload(None, tempfile.mkdtemp(prefix="offload"), grid.rank)
    trainer = StepEngine(model, grid, zero=lay.get("zero", 0), accum=accum,
                              max_grad_norm=CLIP, schedule=lay.get("schedule", "1f1b"),
                              overlap=lay.get("overlap", False), bucket_bytes=4096,
                              allocate=offload.allocate if offload else None)
    if offload is not None:
        offload.attach(trainer)
    it = batches(grid.dp_rank, dp, micro)
    if lay.get("grads"):
        return check_grads(trainer, grid, next(it)[1], accum)
    if lay.get("bitwise_vs"):
        return check_bitwise(trainer, grid, lay, next(it)[1], accum)
    if lay.get("drift"):
        return check_drift(trainer, grid, model, it)
    worst = 0.0
    for step in range(STEPS):
        mark = grid.ledger.mark()
        out = trainer.train_step(next(it)[1], LR)
        worst = max(worst, close(out["loss"], ref[0][step], f"loss step {step + 1}"),
                    close(out["grad_norm"], ref[1][step], f"grad norm step {step + 1}"))
        check_ledger(grid, model, trainer, lay, micro, accum, mark)
        check_replicated(model, grid, trainer.full_parameters())     # after every step
    full = trainer.full_parameters()
    for name, value in model.flat.named_arrays(full).items():
        expected = ref[2][name][shard_index(name, CONFIG, tp, grid.tp_rank)]
        worst = max(worst, close(value, expected, f"parameter {name}"))
    worst = max(worst, check_eval_forward(trainer, ref[2]))
    peak = trainer.pipeline.peak_contexts if trainer.pipeline else 1
    # ZB-H1 keeps only the weight halves' arrays between B and W: its peak bytes are
    # not the 1F1B closed form (in flight x one micro-batch's contexts)
    if trainer.pipeline is not None and trainer.schedule != "zb-h1":
        check_activation_bytes(trainer, grid, model, lay, micro, accum)
    if pp > 1 and trainer.schedule in ("1f1b", "zb-h1") and peak > pp:
        raise AssertionError(f"{trainer.schedule} peak micro-batches in flight {peak} > pp={pp}")
    peaks = grid.world.allgather(np.array([peak], np.int64), np.empty(grid.world_size, np.int64))
    if offload is not None:
        offload.close()
    grid.free()
    return f"max rel err {worst:.1e}; peak contexts per rank {peaks.tolist()} (m={accum})"


def check_activation_bytes(trainer, grid, model, lay, micro, accum):
    """The pipeline's measured peak of context bytes equals cost.py's closed form:
    micro-batches in flight (GPipe m, 1F1B pp - stage) x one micro-batch's contexts;
    interleaved, the count is cost.py's and the bytes those of the contexts the op
    list keeps alive at its peak (the chunks differ: embed, head)."""
    v, n_vs = model.virtual_stages, grid.pp * model.virtual_stages
    chunk = [cost.stage_activation_bytes(CONFIG, micro, 8, blocks=hi - lo,
                                         first=c * grid.pp + grid.pp_rank == 0,
                                         last=c * grid.pp + grid.pp_rank == n_vs - 1,
                                         tp=grid.tp, recompute=lay.get("recompute", False),
                                         sequence_parallel=lay.get("sp", False))
             for c, (lo, hi) in enumerate(model.chunk_blocks)]
    n = cost.micro_batches_in_flight(trainer.schedule, accum, grid.pp, grid.pp_rank, v)
    per = chunk[0]
    measured = trainer.pipeline.peak_activation_bytes
    if v > 1:
        ops = pipeline_ops(trainer.schedule, accum, grid.pp, grid.pp_rank, v)
        count, nbytes = in_flight_peak(ops, chunk)
        if trainer.pipeline.peak_contexts != n or count != n or measured != nbytes:
            raise AssertionError(f"stage {grid.pp_rank}: peak {trainer.pipeline.peak_contexts}"
                                 f" contexts, {measured} B; cost.py {n}, op list {count} "
                                 f"contexts, {nbytes} B")
        return
    if trainer.pipeline.peak_contexts != n or measured != n * per:
        raise AssertionError(f"stage {grid.pp_rank}: peak {trainer.pipeline.peak_contexts} "
                             f"contexts, {measured} B; cost.py {n} x {per} B")


def check_ledger(grid, model, trainer, lay, micro, accum, mark):
    """tp all-reduces of activations and pp sends equal cost.py exactly."""
    b, s, h, item = micro, CONFIG.seq_len, CONFIG.dim, 8
    layers = model.num_blocks
    entries = grid.ledger.since(mark)
    if lay.get("sp"):
        check_sp_ledger(grid, entries, lay, micro, accum, layers)
    act = b * s * h
    tp_bytes = sum(e.bytes for e in entries if e.group == "tp" and e.op == "allreduce"
                   and e.bytes == cost.allreduce_bytes(act, grid.tp, item))
    want = cost.tp_step_bytes(b, s, h, layers, accum, grid.tp, item, lay.get("recompute", False))
    if grid.tp > 1 and not lay.get("sp") and tp_bytes != want:
        raise AssertionError(f"tp all-reduce bytes {tp_bytes} != cost.py {want}")
    pp_bytes = sum(e.bytes for e in entries if e.group == "pp" and e.op == "send")
    want = cost.pp_step_bytes(b, model.tokens_local, h, accum, item, not grid.is_first_stage,
                              not grid.is_last_stage, model.virtual_stages)
    if pp_bytes != want:
        raise AssertionError(f"pp send bytes {pp_bytes} != cost.py {want}")
    sends = sum(1 for e in entries if e.group == "pp" and e.op == "send")
    want = cost.pp_step_messages(accum, not grid.is_first_stage, not grid.is_last_stage,
                                 model.virtual_stages)
    if sends != want:
        raise AssertionError(f"pp sends {sends} != cost.py {want}")


def check_sp_ledger(grid, entries, lay, micro, accum, layers):
    """Sequence parallelism: the tp all-gathers, reduce-scatters and all-reduces (the LN
    gradients plus the norm's float64) equal cost.sp_step_bytes exactly."""
    want = cost.sp_step_bytes(micro, CONFIG.seq_len, CONFIG.dim, layers, accum, grid.tp, 8,
                              recompute=lay.get("recompute", False),
                              first=grid.is_first_stage, last=grid.is_last_stage)
    want["allreduce"] += cost.allreduce_bytes(1, grid.tp, 8)
    got = {op: sum(e.bytes for e in entries if e.group == "tp" and e.op == op) for op in want}
    if got != want:
        raise AssertionError(f"sequence-parallel tp bytes {got} != cost.py {want}")


def check_drift(trainer, grid, model, it):
    """Without the tp all-reduce of the LN gradients the replicas must drift (a wrong
    gradient is caught by check_replicated)."""
    blocks = [getattr(u, "unit", u) for u in model.units]
    norms = [n for blk in blocks if isinstance(blk, SequenceParallelBlock)
             for n in (blk.norm1, blk.norm2)]
    assert norms, "no sequence-parallel block found"
    for norm in norms:
        norm.reduce_grads = False
    trainer.train_step(next(it)[1], LR)
    try:
        check_replicated(model, grid, trainer.full_parameters())
    except AssertionError as exc:
        grid.free()
        return f"drift detected without the LN reduction ({len(norms)} LayerNorms): {exc}"
    raise AssertionError("LN gradients left unreduced over tp, yet the replicas agree")


def check_eval_forward(trainer, ref_state):
    """The evaluation forward (pipelined when pp > 1) gives the serial logits on every rank."""
    serial = ViT(CONFIG, seed=3)
    serial.flat.load_state_dict(ref_state)
    x, _ = next(batches(0, 1, 4))[1][0]
    logits, _ = eval_model(trainer).forward(x)
    return close(logits, serial.forward(x)[0], "evaluation logits")


def check_replicated(model, grid, full):
    if grid.tp == 1:
        return
    replicated = [full[lo:hi] for n, (lo, hi, _) in model.flat.offsets.items()
                  if isinstance(shard_index(n, CONFIG, grid.tp, 0), slice)]
    digest = parameter_digest(np.concatenate(replicated))
    digests = grid.tp_group.allgather(digest, np.empty(grid.tp, np.uint64))
    if len(set(digests.tolist())) != 1:
        raise AssertionError(f"tp-replicated parameters differ across tp: {digests.tolist()}")


def check_grads(trainer, grid, micro_batches, accum):
    trainer.pipeline.run(micro_batches, 1.0 / (accum * grid.dp))
    trainer.dp.sync_gradients()
    grad = trainer.model.flat.grad
    digests = grid.dp_group.allgather(parameter_digest(grad), np.empty(grid.dp, np.uint64))
    if len(set(digests.tolist())) != 1:
        raise AssertionError(f"stage {grid.pp_rank}: dp gradient replicas differ")
    ref = reference_grads()
    worst = max(close(g, ref[n], f"gradient {n}")
                for n, g in trainer.model.flat.named_arrays(grad).items())
    grid.free()
    return f"dp gradient replicas bitwise identical on every stage; max rel err {worst:.1e}"


def check_bitwise(trainer, grid, lay, micro_batches, accum):
    """One step of ``lay["schedule"]`` and of ``lay["bitwise_vs"]`` from the same
    parameters: the stage gradients must be bitwise equal."""
    other = ModelShard(CONFIG, 3, grid, recompute=lay.get("recompute", False),
                       sequence_parallel=lay.get("sp", False))
    ref = StepEngine(other, grid, accum=accum, schedule=lay["bitwise_vs"])
    for engine in (trainer, ref):
        engine.pipeline.run(micro_batches, 1.0 / (accum * grid.dp))
    same = np.array_equal(trainer.model.flat.grad, ref.model.flat.grad)
    flags = grid.world.allgather(np.array([same], np.int64), np.empty(grid.world_size, np.int64))
    if not flags.all():
        raise AssertionError(f"{lay['schedule']} gradients differ from {lay['bitwise_vs']} "
                             f"on ranks {np.flatnonzero(flags == 0).tolist()}")
    grid.free()
    return (f"{lay['schedule']} gradients bitwise equal to {lay['bitwise_vs']} on every stage; "
            f"peak in flight {trainer.pipeline.peak_contexts} vs {ref.pipeline.peak_contexts}")


def main():
    world = MPI.COMM_WORLD
    install_guard(world)
    layouts = json.loads(sys.argv[1])
    ref = reference()
    for lay in layouts:
        message = run_layout(lay, ref, world)
        if world.Get_rank() == 0:
            print(f"OK {json.dumps(lay, sort_keys=True)} {message}", flush=True)


if __name__ == "__main__":
    main()
