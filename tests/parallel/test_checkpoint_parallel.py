"""Checkpoints across layouts, under mpirun -n 2 (one launch, many configurations).

Reference: an uninterrupted dp=2 ZeRO-3 run of 4 float64 AdamW steps.  A
checkpoint written after step 2 at dp=2 ZeRO-3 is loaded into fresh trainers
at dp=2 ZeRO-3 (same layout: the losses of steps 3-4 must be bitwise equal),
dp=2 ZeRO 0/1/2 and a 1-rank run (losses and final parameters to 1e-10
relative).  Each of those layouts saves at step 4 and the files must hold the
reference's parameters and AdamW moments.  A disk-full write (OSError ENOSPC
on the writer) raises CheckpointError on both ranks and leaves the previous
checkpoint valid; a NaN in one rank's shard raises FloatingPointError on both;
the writer's peak memory while saving ZeRO-3 stays near one unit; SGD momentum
survives dp=2 -> 1 rank, and an SGD file refused by an AdamW run on every rank.

``python tests/parallel/test_checkpoint_parallel.py OUTDIR`` is the per-rank driver.
"""
import errno
import json
import sys
import tracemalloc
from pathlib import Path

import numpy as np

SEED, STEPS, LR = 3, 4, 2e-2
TINY = dict(image_size=8, patch_size=4, dim=16, depth=6, heads=2, mlp_dim=32, num_classes=5,
            dtype="float64")


def test_checkpoint_layouts(run_mpi, tmp_path):
    proc = run_mpi(2, [__file__, tmp_path], timeout=240)
    summary = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["same_layout_bitwise"] is True
    assert sorted(summary["cross_layout"]) == ["dp1", "dp2-zero0", "dp2-zero1", "dp2-zero2"]
    for name, err in summary["cross_layout"].items():
        assert err["loss"] <= 1e-10 and err["params"] <= 1e-10, (name, err)
        assert err["file_params"] <= 1e-10 and err["file_moments"] <= 1e-10, (name, err)
    assert summary["disk_full"] == ["CheckpointError", "CheckpointError"]
    assert "No space left on device" in summary["disk_full_message"]
    assert summary["previous_valid_after_disk_full"] and summary["no_tmp_left"]
    assert summary["nan"] == ["FloatingPointError", "FloatingPointError"]
    assert summary["sgd_round_trip"] is True
    assert summary["optimizer_mismatch"] == [
        "optimizer 'sgd' in the checkpoint, this run uses 'adamw'"] * 2
    # writer peak while saving ZeRO-3: about one unit (gathered + copies), far from the model
    from minivit.checkpoint import HASH_BUFFER      # the seal's fixed read buffer
    assert summary["save_peak_bytes"] < 3 * summary["largest_unit_bytes"] + HASH_BUFFER, summary
    assert summary["save_peak_bytes"] < 0.4 * summary["model_bytes"], summary


# --------------------------------------------------------------------------- driver
def _trainer(comm, dp, zero, optimizer="adamw", **overrides):
    from minivit.config import get_config
    from minivit.model import ViT
    from minivit.parallel.grid import ProcessGrid
    from minivit.parallel.runtime.step import StepEngine
    grid = ProcessGrid(comm, dp=dp)
    model = ViT(get_config("vit-nano", **{**TINY, **overrides}), seed=SEED)
    return StepEngine(model, grid, zero=zero, accum=4 // dp, max_grad_norm=1.0,
                           optimizer=optimizer)


def _batches(trainer, start):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
    from batches import random_steps
    it = random_steps(trainer.model.config, 8, 2, trainer.grid.dp_rank, trainer.grid.dp,
                      samples=64, seed=SEED)
    for _ in range(start):      # the data position of step ``start``
        next(it)
    return it


def _run(trainer, start, stop):
    batches = _batches(trainer, start)
    return [trainer.train_step(next(batches)[1], LR) for _ in range(start, stop)]


def _adapter(trainer):
    from minivit.parallel.runtime.checkpoint import DataParallelState
    return DataParallelState(trainer)


def _save(trainer, path, step):
    from minivit.parallel.runtime.checkpoint import save_checkpoint
    return save_checkpoint(path, _adapter(trainer), trainer.grid.world,
                           {"step": step, "preset": "vit-nano",
                            "model_config": vars(trainer.model.config)})


def _load(trainer, path):
    from minivit.parallel.runtime.checkpoint import load_checkpoint
    return load_checkpoint(path, _adapter(trainer), trainer.grid.world, preset="vit-nano",
                           config=trainer.model.config)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _file_errors(path, ref_path):
    from minivit.checkpoint import CheckpointReader
    with CheckpointReader(path) as got, CheckpointReader(ref_path) as ref:
        names = ref.names("params")
        p = max(_rel(got.read("params", n), ref.read("params", n)) for n in names)
        m = max(_rel(got.read(g, n), ref.read(g, n)) for n in names
                for g in ("optim/exp_avg", "optim/exp_avg_sq"))
    return p, m


def driver(out):
    from mpi4py import MPI

    from minivit import checkpoint as ckpt
    from minivit.checkpoint import CheckpointError, CheckpointReader
    from minivit.parallel.runtime.guard import install_guard
    world = MPI.COMM_WORLD
    install_guard(world)
    rank = world.Get_rank()
    summary = {}

    ref = _trainer(world, 2, 3)
    ref_losses = [r["loss"] for r in _run(ref, 0, STEPS)]
    ref_params = ref.full_parameters()
    ref_file = _save(ref, out / "ref" / "step_0000004.h5", STEPS)

    first = _trainer(world, 2, 3)
    _run(first, 0, 2)
    mid = _save(first, out / "a" / "step_0000002.h5", 2)

    same = _trainer(world, 2, 3)
    meta = _load(same, mid)
    assert meta["step"] == 2 and same.step_count == 2
    same_losses = [r["loss"] for r in _run(same, 2, STEPS)]
    summary["same_layout_bitwise"] = (same_losses == ref_losses[2:]
                                      and bool(np.array_equal(same.full_parameters(), ref_params)))

    summary["cross_layout"] = {}
    layouts = [("dp2-zero0", world, 2, 0), ("dp2-zero1", world, 2, 1), ("dp2-zero2", world, 2, 2)]
    if rank == 0:
        layouts.append(("dp1", MPI.COMM_SELF, 1, 0))
    for name, comm, dp, zero in layouts:
        tr = _trainer(comm, dp, zero)
        _load(tr, mid)
        losses = [r["loss"] for r in _run(tr, 2, STEPS)]
        path = _save(tr, out / name / "step_0000004.h5", STEPS)
        if rank == 0:
            fp, fm = _file_errors(path, ref_file)
            summary["cross_layout"][name] = {"loss": _rel(losses, ref_losses[2:]),
                                             "params": _rel(tr.full_parameters(), ref_params),
                                             "file_params": fp, "file_moments": fm}
    world.Barrier()

    # disk full on the writer: every rank raises, the previous file stays valid
    original = ckpt.CheckpointWriter.write
    calls = {"n": 0}

    def full_disk(self, group, name, array):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, group, name, array)

    if rank == 0:
        ckpt.CheckpointWriter.write = full_disk
    try:
        _save(same, out / "a" / "step_0000004.h5", STEPS)
        outcome, message = "saved", ""
    except CheckpointError as exc:
        outcome, message = "CheckpointError", str(exc)
    ckpt.CheckpointWriter.write = original
    summary["disk_full"] = world.allgather(outcome)
    summary["disk_full_message"] = message if rank == 0 else ""
    if rank == 0:
        with CheckpointReader(mid) as r:
            r.verify()
        summary["previous_valid_after_disk_full"] = (
            ckpt.latest_valid_checkpoint(out / "a") == mid)
        summary["no_tmp_left"] = not list((out / "a").glob(".*tmp*"))

    # a non-finite parameter on one rank: both ranks refuse to save
    nan_tr = _trainer(world, 2, 3)
    if rank == 1:
        nan_tr.optimizer.param_shard[0] = np.nan
    try:
        _save(nan_tr, out / "nan" / "step_0000001.h5", 1)
        outcome = "saved"
    except FloatingPointError:
        outcome = "FloatingPointError"
    summary["nan"] = world.allgather(outcome)

    # SGD momentum round trip (dp=2 -> 1 rank) and an optimizer-type mismatch on every rank
    sgd = _trainer(world, 2, 0, optimizer="sgd")
    _run(sgd, 0, 2)
    sgd_file = _save(sgd, out / "sgd" / "step_0000002.h5", 2)
    if rank == 0:
        one = _trainer(MPI.COMM_SELF, 1, 0, optimizer="sgd")
        _load(one, sgd_file)
        summary["sgd_round_trip"] = (
            bool(np.array_equal(one.model.flat.data, sgd.model.flat.data)) and bool(
                np.array_equal(one.optimizer.state["momentum_buffer"],
                               sgd.optimizer.state["momentum_buffer"]))
            and one.optimizer.step_count == 2)
    try:
        _load(_trainer(world, 2, 1), sgd_file)
        outcome = "loaded"
    except CheckpointError as exc:
        outcome = str(exc).split(": ", 1)[1]
    summary["optimizer_mismatch"] = world.allgather(outcome)

    # writer peak memory while saving ZeRO-3 (units large against h5py's fixed overhead)
    big = _trainer(world, 2, 3, dim=64, mlp_dim=256, depth=10)
    sizes = [b - a for a, b in big.model.unit_ranges()]
    tracemalloc.start()
    _save(big, out / "peak" / "step_0000004.h5", STEPS)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    summary.update(save_peak_bytes=peak, largest_unit_bytes=max(sizes) * 8,
                   model_bytes=sum(sizes) * 8)
    if rank == 0:
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    driver(Path(sys.argv[1]))
