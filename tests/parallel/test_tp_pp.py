"""Tensor and pipeline parallelism, recompute and offload (issue 6).

The equivalence matrix runs in three mpirun launches (world 2, 4 and 8), each
looping over its layouts in tests/support/mp_layouts_driver.py: losses, gradient norms
and final parameters after 3 steps equal the single-process run to 1e-10
relative in float64, the ledger equals cost.py for tp and pp, 1F1B keeps at
most pp contexts alive.
"""
import argparse
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from mpi4py import MPI

from conftest import ROOT
from minivit.config import get_config
from batches import random_steps
from minivit.loss import cross_entropy_backward, cross_entropy_forward
from minivit.model import Block, ViT
from minivit.parallel import cost
from minivit.parallel.runtime.checkpoint_mp import vit_param_specs
from minivit.parallel.grid import ProcessGrid
from minivit.parallel.model_parallel import ModelShard, balance_stages
from minivit.parallel.runtime.config import PretrainConfig
from minivit.parallel.offload import Offload
from minivit.parallel.pipeline import check_schedule, schedule_order
from minivit.parallel.recompute import ctx_nbytes
from minivit.parallel.runtime.step import StepEngine
from minivit.parallel.tensor_parallel import (TensorParallelAttention, TensorParallelBlock,
                                              shard_index)
from minivit.parallel.tools.timeline import (measured_bubble, plot_timeline,
                                              theoretical_bubble)

DRIVER = str(ROOT / "tests" / "support" / "mp_layouts_driver.py")
PRETRAIN = str(ROOT / "run" / "pretrain.py")
NANO = get_config("vit-nano", dtype="float64")


def _run_driver(run_mpi, n, layouts):
    proc = run_mpi(n, [DRIVER, json.dumps(layouts)], timeout=240)
    ok = [ln for ln in proc.stdout.splitlines() if ln.startswith("OK ")]
    assert len(ok) == len(layouts), proc.stdout
    return ok


def _peaks(line):
    return json.loads(re.search(r"peak contexts per rank (\[[^\]]*\])", line).group(1))


def test_layouts_world2(run_mpi):
    ok = _run_driver(run_mpi, 2, [
        {"dp": 1, "tp": 2, "pp": 1},
        {"dp": 1, "tp": 1, "pp": 2, "schedule": "gpipe"},
        {"dp": 1, "tp": 1, "pp": 2, "schedule": "1f1b"},
        {"dp": 1, "tp": 2, "pp": 1, "recompute": True},
        {"dp": 1, "tp": 1, "pp": 2, "schedule": "1f1b", "recompute": True, "offload": True},
        {"dp": 1, "tp": 1, "pp": 2, "schedule": "zb-h1"},
        {"dp": 1, "tp": 1, "pp": 2, "schedule": "zb-h1", "recompute": True,
         "bitwise_vs": "1f1b"},
        # sequence parallelism (issue 18): T = 17 padded to 18; then the LN reduction's
        # deliberately wrong variant, which must drift
        {"dp": 1, "tp": 2, "pp": 1, "sp": True},
        {"dp": 1, "tp": 2, "pp": 1, "sp": True, "recompute": True},
        {"dp": 1, "tp": 2, "pp": 1, "sp": True, "drift": True},
        {"dp": 1, "tp": 1, "pp": 2, "schedule": "interleaved", "virtual_stages": 2},
        {"dp": 1, "tp": 1, "pp": 2, "schedule": "interleaved", "virtual_stages": 2,
         "recompute": True, "offload": True},
        # selective recompute: the attention core keeps only its row log-sum-exp; equal to
        # the serial run without it (1e-10), the pipeline's peak bytes by cost.py's form
        {"dp": 1, "tp": 2, "pp": 1, "recompute": "selective"},
        {"dp": 1, "tp": 2, "pp": 1, "sp": True, "recompute": "selective"},
        {"dp": 1, "tp": 1, "pp": 2, "schedule": "1f1b", "recompute": "selective"}])
    assert _peaks(ok[1]) == [4, 4]          # GPipe keeps all m = 4 micro-batches
    # interleaved, m = 4, v = 2: min(2(p-s-1) + (v-1)p + 1, m v) (micro-batch, chunk) contexts
    assert _peaks(ok[10]) == _peaks(ok[11]) == [5, 3]
    assert _peaks(ok[2]) == [2, 1]          # 1F1B: pp - stage
    assert _peaks(ok[5]) == [2, 2]          # ZB-H1: W lags F by pp - 1 on every stage
    assert "zb-h1 gradients bitwise equal to 1f1b on every stage" in ok[6]
    assert "drift detected without the LN reduction (8 LayerNorms)" in ok[9]


def test_layouts_world4(run_mpi):
    ok = _run_driver(run_mpi, 4, [
        {"dp": 1, "tp": 1, "pp": 4, "schedule": "1f1b"},
        {"dp": 2, "tp": 2, "pp": 1, "zero": 0},
        {"dp": 2, "tp": 2, "pp": 1, "zero": 3},
        {"dp": 2, "tp": 1, "pp": 2, "zero": 1, "schedule": "1f1b"},
        {"dp": 1, "tp": 2, "pp": 2},
        {"dp": 2, "tp": 2, "pp": 1, "zero": 3, "offload": True},
        {"dp": 2, "tp": 1, "pp": 2, "schedule": "1f1b", "grads": True},
        {"dp": 1, "tp": 1, "pp": 4, "schedule": "zb-h1"},
        {"dp": 1, "tp": 2, "pp": 2, "schedule": "zb-h1", "bitwise_vs": "1f1b"},
        {"dp": 1, "tp": 2, "pp": 2, "schedule": "1f1b", "sp": True},
        {"dp": 2, "tp": 2, "pp": 1, "zero": 3, "sp": True},
        {"dp": 1, "tp": 4, "pp": 1, "sp": True},
        {"dp": 1, "tp": 2, "pp": 2, "schedule": "zb-h1", "sp": True, "bitwise_vs": "1f1b"},
        {"dp": 2, "tp": 1, "pp": 2, "zero": 3, "schedule": "interleaved", "virtual_stages": 2},
        {"dp": 1, "tp": 2, "pp": 2, "zero": 0, "schedule": "interleaved", "virtual_stages": 2},
        # both schemes of issue 18 at once: chunks send the sequence-sharded activation
        {"dp": 1, "tp": 2, "pp": 2, "schedule": "interleaved", "virtual_stages": 2, "sp": True}])
    assert _peaks(ok[0]) == [4, 3, 2, 1] and max(_peaks(ok[0])) <= 4
    assert _peaks(ok[13]) == [4, 4, 3, 3] and _peaks(ok[14]) == _peaks(ok[15]) == [5, 5, 3, 3]
    assert _peaks(ok[7]) == [4, 4, 4, 4]    # ZB-H1: at most p in flight, 1F1B's peak
    assert "zb-h1 gradients bitwise equal to 1f1b on every stage" in ok[8]
    assert "dp gradient replicas bitwise identical on every stage" in ok[6]
    assert "zb-h1 gradients bitwise equal to 1f1b on every stage" in ok[12]


def test_layouts_world8(run_mpi):
    ok = _run_driver(run_mpi, 8, [
        {"dp": 2, "tp": 2, "pp": 2, "zero": 2, "schedule": "1f1b"},
        # beyond the matrix: ZeRO-3 with pp, recompute, overlap with pp
        {"dp": 2, "tp": 1, "pp": 4, "zero": 3, "schedule": "gpipe"},
        {"dp": 2, "tp": 2, "pp": 2, "zero": 3, "schedule": "1f1b", "recompute": True},
        {"dp": 2, "tp": 2, "pp": 2, "zero": 1, "schedule": "gpipe", "overlap": True},
        {"dp": 4, "tp": 1, "pp": 2, "zero": 0, "overlap": True, "micro_batch": 1},
        {"dp": 2, "tp": 2, "pp": 2, "zero": 1, "schedule": "zb-h1"},
        {"dp": 2, "tp": 2, "pp": 2, "zero": 1, "schedule": "zb-h1", "sp": True},
        {"dp": 2, "tp": 2, "pp": 2, "zero": 1, "schedule": "interleaved", "virtual_stages": 2},
        {"dp": 4, "tp": 1, "pp": 2, "zero": 0, "overlap": True, "micro_batch": 1,
         "schedule": "interleaved", "virtual_stages": 2}])
    assert max(_peaks(ok[0])) <= 2
    assert _peaks(ok[7]) == _peaks(ok[8]) == [4, 4, 4, 4, 3, 3, 3, 3]   # m = p = 2: capped


# ------------------------------------------------------------ single process
class FakeComm:
    """Only ``size``/``rank`` are read while building TP layers."""

    def __init__(self, size, rank):
        self.size, self.rank = size, rank


def test_tp_shards_are_slices_of_the_serial_init():
    serial = {p.name: p.data for p in Block("blocks.0", NANO, 7).parameters()}
    for rank in range(2):
        block = TensorParallelBlock("blocks.0", NANO, 7, FakeComm(2, rank))
        names = [p.name for p in block.parameters()]
        assert names == list(serial)
        for p in block.parameters():
            expected = serial[p.name][shard_index(p.name, NANO, 2, rank)]
            assert np.array_equal(p.data, expected), p.name
            assert getattr(p, "tp_sharded", False) == (not isinstance(
                shard_index(p.name, NANO, 2, rank), slice))


def test_tp_divisibility_errors():
    with pytest.raises(ValueError, match="heads=3 is not divisible by tp=2"):
        TensorParallelAttention("a", 48, 3, "float64", 0, FakeComm(2, 0))
    cfg = get_config("vit-nano", mlp_dim=66)
    with pytest.raises(ValueError, match="mlp_dim=66 is not divisible by tp=4"):
        TensorParallelBlock("b", cfg, 0, FakeComm(4, 0))


def test_balance_stages_by_parameter_count():
    sizes = cost.vit_unit_sizes(NANO)
    assert balance_stages(sizes, 1) == [(0, 4)]
    assert balance_stages(sizes, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    # a heavy embedding pushes blocks to the later stages
    heavy = [10_000, 100, 100, 100, 100, 100, 100, 10]
    stages = balance_stages(heavy, 2)
    assert stages == [(0, 1), (1, 6)]
    with pytest.raises(ValueError, match="pp=5 pipeline stages but depth=4 blocks"):
        balance_stages(sizes, 5)


def test_schedules_and_micro_batch_error():
    assert schedule_order("gpipe", 3, 2, 0) == [("F", 0), ("F", 1), ("F", 2),
                                                 ("B", 0), ("B", 1), ("B", 2)]
    ops = schedule_order("1f1b", 4, 3, 0)
    assert ops[:3] == [("F", 0), ("F", 1), ("F", 2)] and ops[3] == ("B", 0)
    for stage in range(3):                 # every F and B exactly once, F before its B
        ops = schedule_order("1f1b", 5, 3, stage)
        assert sorted(ops) == sorted([("F", i) for i in range(5)] + [("B", i) for i in range(5)])
        assert all(ops.index(("F", i)) < ops.index(("B", i)) for i in range(5))
        alive = peak = 0
        for kind, _ in ops:
            alive += 1 if kind == "F" else -1
            peak = max(peak, alive)
        assert peak == 3 - stage
    with pytest.raises(ValueError, match="1F1B with 1 micro-batches on pp=2 stages"):
        check_schedule("1f1b", 1, 2)
    check_schedule("gpipe", 1, 2)
    with pytest.raises(ValueError, match="schedule='zb'"):
        check_schedule("zb", 4, 2)


def test_config_errors_name_the_numbers(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    for fields, world, message in (
            ({"pp": 2}, 2, "1F1B with 1 micro-batches on pp=2 stages"),
            ({"tp": 3}, 3, "heads=4 is not divisible by tp=3"),
            ({"pp": 5, "schedule": "gpipe", "global_batch": 80}, 5, "depth=4 blocks"),
            ({"timeline": "x.png"}, 1, "expected --pp > 1"),
            ({"offload_dir": str(a_file)}, 1, "exists and is not a directory")):
        with pytest.raises(ValueError, match=re.escape(message)):
            PretrainConfig(model="vit-nano", data="random", **fields).validate(world)
    # the same fields on a fitting world are accepted
    assert PretrainConfig(model="vit-nano", data="random", pp=2,
                          global_batch=32).validate(2).accum == 2


def _self_grid():
    return ProcessGrid(MPI.COMM_SELF, dp=1)


def _one_backward(model, x, y):
    logits, ctx = model.forward(x)
    _, lctx = cross_entropy_forward(logits, y)
    model.backward(cross_entropy_backward(lctx, 1.0), ctx)
    return ctx


def test_recompute_gradients_bitwise_equal_and_fewer_activation_bytes():
    cfg = get_config("vit-nano", dtype="float32")
    x, y = next(random_steps(cfg, 8, 8, samples=8, seed=2))[1][0]
    grid = _self_grid()
    plain, again = ModelShard(cfg, 5, grid), ModelShard(cfg, 5, grid, recompute=True)
    ctx_plain = _one_backward(plain, x, y)
    ctx_again = _one_backward(again, x, y)
    assert np.array_equal(plain.flat.grad, again.flat.grad)
    assert np.array_equal(plain.flat.grad, _serial_grad(cfg, x, y))
    kept, full = ctx_nbytes(ctx_again), ctx_nbytes(ctx_plain)
    # per block only the (B, T, D) input stays
    assert kept < full / 3
    grid.free()


def _serial_grad(cfg, x, y):
    model = ViT(cfg, seed=5)
    _one_backward(model, x, y)
    return model.flat.grad


def test_offload_equal_results_and_files(tmp_path):
    results = []
    for offload in (False, True):
        grid = _self_grid()
        model = ViT(NANO, seed=1)
        trainer = StepEngine(model, grid, accum=2, max_grad_norm=0.1)
        off = Offload(trainer, tmp_path / "off", 0) if offload else None
        it = random_steps(NANO, 8, 4, samples=16, seed=1)
        losses = [trainer.train_step(next(it)[1], 1e-2)["loss"] for _ in range(3)]
        if off is not None:
            assert off.nbytes == 2 * model.flat.data.nbytes       # exp_avg + exp_avg_sq
            assert sorted(p.name for p in off.files) == ["rank0.exp_avg.bin",
                                                           "rank0.exp_avg_sq.bin"]
            # the state is a view of the file mapping itself, not a copy of it
            for key, mm in zip(("exp_avg", "exp_avg_sq"), off.maps):
                state = trainer.optimizer.state[key]
                assert np.shares_memory(state, mm) and state.nbytes == mm.nbytes
            off.close()
            assert not any((tmp_path / "off").iterdir())
        results.append((losses, model.flat.data.copy()))
        grid.free()
    assert results[0][0] == results[1][0]
    assert np.array_equal(results[0][1], results[1][1])


def test_param_specs_match_the_serial_model():
    for cfg in (NANO, get_config("vit-nano", class_token=False, num_classes=7)):
        model = ViT(cfg)
        specs = [(n, tuple(s)) for unit in vit_param_specs(cfg) for n, s in unit]
        assert specs == [(n, tuple(s)) for n, (_, _, s) in model.flat.offsets.items()]


def test_bubble_formula_and_measurement():
    assert theoretical_bubble(4, 8) == pytest.approx(3 / 11)
    # two stages, two micro-batches, unit-time ops: a perfect GPipe diagram
    tl = np.array([[[0, 0, 0, 1], [0, 1, 1, 2], [1, 0, 4, 5], [1, 1, 5, 6]],
                   [[0, 0, 1, 2], [0, 1, 2, 3], [1, 0, 3, 4], [1, 1, 4, 5]]], float)
    assert measured_bubble(tl) == pytest.approx(1 - 4 / 6)


def test_timeline_legend_names_the_backward_of_each_schedule(tmp_path, monkeypatch):
    """Only ZB-H1 splits the backward (B: input, W: weight); under GPipe, 1F1B and
    interleaved the orange box is the whole backward, and the legend says so."""
    import matplotlib.axes
    labels, legend = [], matplotlib.axes.Axes.legend

    def recording_legend(ax, handles, **kwargs):     # the labels the chart shows
        labels.append([h.get_label() for h in handles])
        return legend(ax, handles=handles, **kwargs)
    monkeypatch.setattr(matplotlib.axes.Axes, "legend", recording_legend)
    # one stage, one micro-batch: F then B (then W for ZB-H1), unit-time ops, chunk 0
    unsplit = np.array([[[0, 0, 0, 1, 0], [1, 0, 1, 2, 0]]], float)
    split = np.array([[[0, 0, 0, 1, 0], [1, 0, 1, 2, 0], [2, 0, 2, 3, 0]]], float)
    for schedule, tl in (("gpipe", unsplit), ("1f1b", unsplit), ("interleaved", unsplit),
                         ("zb-h1", split)):
        plot_timeline(tl, tmp_path / f"{schedule}.png", schedule, schedule)
        assert (tmp_path / f"{schedule}.png").stat().st_size > 0
    whole = ["forward", "backward (B: input + weight)"]
    assert labels == [whole, whole, whole, ["forward", "backward (B: input)", "weight (W)"]]


# ------------------------------------------------------------ end to end
COMMON = ["--model", "vit-nano", "--data", "random", "--dtype", "float64",
          "--micro-batch", "2", "--global-batch", "8", "--warmup", "1", "--lr", "1e-2",
          "--random-samples", "32", "--threads", "1", "--no-progress"]


def _single(*args):
    proc = subprocess.run([sys.executable, PRETRAIN, *COMMON, *map(str, args)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _train_records(out):
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("kind") == "train"]


def _same_checkpoints(path, ref_path, groups):
    from minivit.checkpoint import CheckpointReader
    with CheckpointReader(ref_path) as r, CheckpointReader(path) as c:
        for group in groups:
            names = r.names(group)
            assert names and sorted(c.names(group)) == sorted(names)
            for name in names:   # relative to the tensor's scale (sums cancel near 0)
                want = r.read(group, name)
                np.testing.assert_allclose(c.read(group, name), want, rtol=0,
                                           atol=1e-10 * np.abs(want).max())


def _resume_both_ways(run_mpi, tmp_path, n, mp, other):
    """The serial step-2 run ``tmp_path/one`` resumed under the flags ``mp`` on ``n``
    ranks, and the ``mp`` run ``tmp_path/other`` resumed serially: both reach step 3
    like the serial resume (losses, norms, parameters and Adam moments to 1e-10)."""
    import shutil
    shutil.copytree(tmp_path / "one", tmp_path / "ref")
    _single("--steps", "3", "--resume", tmp_path / "ref")            # the serial reference
    run_mpi(n, [PRETRAIN, *COMMON, *mp, "--steps", "3", "--resume", tmp_path / "one"],
            timeout=120)                                             # serial -> mp
    _single("--steps", "3", "--resume", tmp_path / other)            # mp -> serial
    ref = _train_records(tmp_path / "ref")[-1]
    step3 = "ckpt/step_0000003.h5"
    for run in ("one", other):
        got = _train_records(tmp_path / run)[-1]
        assert got["step"] == 3
        np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-10)
        np.testing.assert_allclose(got["grad_norm"], ref["grad_norm"], rtol=1e-10)
        _same_checkpoints(tmp_path / run / step3, tmp_path / "ref" / step3,
                          ("params", "optim/exp_avg", "optim/exp_avg_sq"))


def test_pretrain_tp_pp_end_to_end_and_checkpoints_across_layouts(run_mpi, tmp_path):
    """run/pretrain.py at (dp, tp, pp) = (1, 2, 2), GPipe + recompute, equals one
    process (losses, norms, checkpoint tensors); --audit tp/pp lines agree with
    cost.py; --timeline writes the chart and the bubble.  Then each checkpoint
    is resumed in the other layout (1F1B): step 3 equals the serial resume."""
    _single("--steps", "2", "--out", tmp_path / "one")
    png = tmp_path / "gpipe.png"
    mp = ["--tp", "2", "--pp", "2"]
    proc = run_mpi(4, [PRETRAIN, *COMMON, *mp, "--steps", "2", "--schedule", "gpipe",
                       "--recompute", "--audit", "--timeline", png, "--out", tmp_path / "four"],
                   timeout=180)
    assert "world 4 = dp 1 x tp 2 x pp 2" in proc.stdout
    one, four = _train_records(tmp_path / "one"), _train_records(tmp_path / "four")
    np.testing.assert_allclose([r["loss"] for r in four], [r["loss"] for r in one], rtol=1e-10)
    np.testing.assert_allclose([r["grad_norm"] for r in four], [r["grad_norm"] for r in one],
                               rtol=1e-10)
    checks = [ln for ln in proc.stdout.splitlines() if "(cost.py tp/pp)" in ln]
    assert len(checks) >= 2 * 3 and all(" OK " in ln for ln in checks), checks
    assert png.exists() and png.stat().st_size > 10_000
    assert re.search(r"bubble measured [\d.]+% vs \(p-1\)/\(m\+p-1\) = 20.0%", proc.stdout)
    step2 = "ckpt/step_0000002.h5"
    _same_checkpoints(tmp_path / "four" / step2, tmp_path / "one" / step2,
                      ("params", "optim/exp_avg", "optim/exp_avg_sq"))

    _resume_both_ways(run_mpi, tmp_path, 4, mp, "four")


def test_pretrain_selective_recompute_tp2_equals_one_process(run_mpi, tmp_path):
    """run/pretrain.py --tp 2 --recompute --recompute-granularity selective (float64,
    vit-nano, 2 steps) equals one process without recompute: losses and gradient norms
    to 1e-10; --audit's activation lines say selective, hold
    the closed form with the log-sum-exp term and agree with the measurement."""
    _single("--steps", "2", "--save-every", "-1", "--out", tmp_path / "one")
    proc = run_mpi(2, [PRETRAIN, *COMMON, "--tp", "2", "--steps", "2", "--recompute",
                       "--recompute-granularity", "selective", "--audit", "--save-every", "-1",
                       "--out", tmp_path / "two"], timeout=180)
    one, two = _train_records(tmp_path / "one"), _train_records(tmp_path / "two")
    assert len(one) == len(two) == 2
    np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=1e-10)
    np.testing.assert_allclose([r["grad_norm"] for r in two], [r["grad_norm"] for r in one],
                               rtol=1e-10)
    acts = [ln for ln in proc.stdout.splitlines() if "[audit] activations on stage 0" in ln]
    per = cost.stage_activation_bytes(NANO, 2, 8, blocks=NANO.depth, tp=2,
                                      recompute="selective")
    assert len(acts) == 2 and all(ln.endswith(f"= {per:,} B  OK") for ln in acts), acts
    forms = [ln for ln in proc.stdout.splitlines() if "[audit]   per block" in ln]
    assert forms and all("+ 8 B T H/tp +" in ln and "recompute selective" in ln
                         for ln in forms), forms
    assert "recompute-granularity = \"selective\"" in (tmp_path / "two" / "config.toml").read_text()
    # the stage line accounts for the whole tp row of the table: activations + the norm
    tp_row = [ln for ln in proc.stdout.splitlines() if ln.startswith("[audit]   allreduce      tp")]
    stage = [ln for ln in proc.stdout.splitlines() if "predicted tp activation all-reduce" in ln]
    act = cost.tp_step_bytes(2, NANO.seq_len, NANO.dim, NANO.depth, 4, 2, 8, "selective")  # m = 8 / 2
    norm = cost.allreduce_bytes(1, 2, 8)
    assert stage and all(f"all-reduce {act:,} B" in ln and f"+ {norm:,} B for the gradient "
                         "norm's float64 sum of squares" in ln for ln in stage), stage
    assert tp_row and all(f"{act + norm:,}" in ln and ln.endswith("OK (cost.py tp/pp)")
                          for ln in tp_row), tp_row


def test_pretrain_interleaved_end_to_end_and_checkpoints_across_layouts(run_mpi, tmp_path):
    """run/pretrain.py --pp 2 --schedule interleaved --virtual-stages 2 equals one process
    (losses, norms, the checkpoint's tensors); its --audit pp sends and activation lines
    are OK and --timeline states the interleaved formula.  The serial checkpoint resumed
    interleaved, and the interleaved one resumed serially, equal the serial resume."""
    _single("--steps", "2", "--out", tmp_path / "one")
    png = tmp_path / "interleaved.png"
    mp = ["--pp", "2", "--schedule", "interleaved", "--virtual-stages", "2"]
    proc = run_mpi(2, [PRETRAIN, *COMMON, *mp, "--steps", "2", "--audit", "--timeline", png,
                       "--out", tmp_path / "two"], timeout=180)
    one, two = _train_records(tmp_path / "one"), _train_records(tmp_path / "two")
    np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=1e-10)
    np.testing.assert_allclose([r["grad_norm"] for r in two], [r["grad_norm"] for r in one],
                               rtol=1e-10)
    # stage 0 (rank 0 prints): 4 micro-batches x (2 v - 1) = 12 sends of b*s*h = 2*17*32 x 8 B
    sends = [ln for ln in proc.stdout.splitlines() if "send           pp" in ln]
    assert len(sends) == 2 and all("12       104,448       104,448  OK" in ln for ln in sends)
    acts = [ln for ln in proc.stdout.splitlines() if "[audit] activations on stage 0" in ln]
    assert len(acts) == 2 and all(ln.endswith("= 5 in flight, chunks of 136,320, 124,032 B "
                                              "= 669,312 B  OK") for ln in acts), acts
    assert re.search(r"bubble measured [\d.]+% vs \(p-1\)/\(vm\+p-1\) = 11.1%", proc.stdout)
    assert png.stat().st_size > 10_000
    step2 = "ckpt/step_0000002.h5"
    _same_checkpoints(tmp_path / "two" / step2, tmp_path / "one" / step2,
                      ("params", "optim/exp_avg", "optim/exp_avg_sq"))

    _resume_both_ways(run_mpi, tmp_path, 2, mp, "two")


def test_balance_virtual_stages_and_chunk_units():
    sizes = cost.vit_unit_sizes(NANO)
    # p = 2, v = 2: 4 virtual stages of one block; rank s holds virtual stages s and 2 + s
    assert balance_stages(sizes, 2, 2) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    with pytest.raises(ValueError, match=re.escape("pp=2 x virtual_stages=3 = 6 virtual "
                                                   "stages but depth=4 blocks")):
        balance_stages(sizes, 2, 3)
    from minivit.parallel.model_parallel import virtual_stage_units
    assert virtual_stage_units(balance_stages(sizes, 2, 2)) == [[0, 1], [2], [3], [4, 5]]
