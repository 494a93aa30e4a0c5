"""run/pretrain.py data flags, eval records and config files; run/finetune.py on
digits; bad input under mpirun; the dp Evaluator against one process.

``python tests/run/test_pretrain_cli.py evaluator`` is the per-rank driver of the
Evaluator test (launched by ``run_mpi``).
"""
import json
import subprocess
import sys
import tomllib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN, FINETUNE = str(ROOT / "run" / "pretrain.py"), str(ROOT / "run" / "finetune.py")
TINY = ["--model", "vit-nano", "--micro-batch", "4", "--steps", "3", "--warmup", "1",
        "--threads", "1", "--no-progress", "--eval-batch", "8"]


def _run(args, timeout=180):
    proc = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _lines(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_synthetic_data_eval_records_and_config_toml(tmp_path):
    out = tmp_path / "syn"
    cfg = tmp_path / "run.toml"
    # the file sets steps=99 and lr; the command line's --steps 3 must win
    cfg.write_text('steps = 99\nlr = 0.002\ndata = "synthetic:fractaldb"\nclasses = 3\n'
                   'instances = 12\nholdout = 0.25\neval-every = 2\n')
    proc = _run([PRETRAIN, "--config", cfg, *TINY, "--out", out])
    lines = _lines(out)
    header, train = lines[0], [r for r in lines if r["kind"] == "train"]
    evals = [r for r in lines if r["kind"] == "eval"]
    assert header["kind"] == "header" and header["blas_peak_gflops"] > 0
    assert [r["step"] for r in train] == [1, 2, 3] and train[0]["lr"] < 0.002 + 1e-12
    assert all(0 <= r["accuracy"] <= 1 and r["mfu"] > 0 for r in train)
    assert [r["step"] for r in evals] == [0, 2, 3]     # before training, every 2, the last
    assert all(r["samples"] == 3 * 3 and 0 <= r["accuracy"] <= 1 for r in evals)
    resolved = tomllib.loads((out / "config.toml").read_text())
    assert resolved["steps"] == 3 and resolved["lr"] == 0.002 and resolved["classes"] == 3
    assert str(out / "metrics.jsonl") in proc.stdout and "held-out top-1" in proc.stdout
    assert "note: --warmup" not in proc.stdout        # --warmup 1 of 3 steps: the peak is reached
    # the resolved file reproduces the run
    again = tmp_path / "again"
    _run([PRETRAIN, "--config", out / "config.toml", "--out", again])
    assert [r["loss"] for r in _lines(again) if r["kind"] == "train"] == \
        [r["loss"] for r in train]


def test_shard_folder_with_holdout(tmp_path):
    data = tmp_path / "digits"
    _run([ROOT / "run" / "pack.py", "digits", "--out", data, "--split", "test"])
    out = tmp_path / "shards"
    proc = _run([PRETRAIN, *TINY, "--data", data, "--holdout", "0.1", "--eval-every", "0",
                 "--out", out])
    assert "318 train / 41 held-out" in proc.stdout
    evals = [r for r in _lines(out) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 3] and evals[-1]["samples"] == 41


def _checkpoint(path, classes=7):
    from minivit.checkpoint import CheckpointWriter
    from minivit.config import get_config
    from minivit.model import ViT
    model = ViT(get_config("vit-nano", num_classes=classes), seed=3)
    with CheckpointWriter(path) as w:
        for name, array in model.flat.state_dict().items():
            w.write("params", name, array)
        w.commit({"step": 4, "preset": "vit-nano", "model_config": asdict(model.config)})
    return model


def test_a_run_shorter_than_its_warmup_says_the_peak_lr(tmp_path):
    # the last --warmup wins over TINY's
    proc = _run([PRETRAIN, *TINY, "--warmup", "6", "--lr", "0.003", "--data", "random",
                 "--out", tmp_path / "short"])
    # lr(s) = lr (s + 1) / warmup: the last of 3 steps runs at 0.003 * 3 / 6
    assert ("note: --warmup 6 is more than the run's 3 steps: it ends inside the warmup, so "
            "the learning rate peaks at 0.0015, not --lr 0.003") in proc.stdout
    # at --lr 0 there is no peak to miss: no note
    proc = _run([PRETRAIN, *TINY, "--warmup", "6", "--lr", "0", "--min-lr", "0",
                 "--data", "random", "--out", tmp_path / "zero"])
    assert "note: --warmup" not in proc.stdout


def test_finetune_digits_from_checkpoint_and_scratch(tmp_path):
    ckpt = tmp_path / "pre" / "ckpt" / "step_0000004.h5"
    _checkpoint(ckpt)
    common = ["--data", "digits", "--epochs", "1",
              "--max-steps", "2", "--micro-batch", "16", "--threads", "1", "--no-progress",
              "--eval-batch", "128"]
    proc = _run([FINETUNE, "--checkpoint", tmp_path / "pre", *common, "--out", tmp_path / "ft"])
    result = json.loads((tmp_path / "ft" / "result.json").read_text())
    assert result["mode"] == "pretrained" and result["steps"] == 2
    assert result["heldout_samples"] == 364 and 0 <= result["top1"] <= 1
    assert f"tensors from {ckpt}" in result["origin"] and "new head head.weight" in proc.stdout
    evals = [r for r in _lines(tmp_path / "ft") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2] and evals[-1]["accuracy"] == result["top1"]
    # the baseline: same preset and budget, no checkpoint needed
    _run([FINETUNE, "--model", "vit-nano", *common, "--from-scratch", "--out", tmp_path / "sc"])
    scratch = json.loads((tmp_path / "sc" / "result.json").read_text())
    assert scratch["mode"] == "scratch" and scratch["steps"] == result["steps"]
    # a different starting point: the first losses differ
    first = [next(r for r in _lines(tmp_path / d) if r["kind"] == "train")["loss"]
             for d in ("ft", "sc")]
    assert first[0] != first[1]


def test_finetune_bad_checkpoint(tmp_path):
    proc = subprocess.run([sys.executable, FINETUNE, "--checkpoint", tmp_path / "none",
                           "--out", tmp_path / "x"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "no such file or directory" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, FINETUNE, "--checkpoint", tmp_path / "empty",
                           "--out", tmp_path / "x"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "no valid step_XXXXXXX.h5" in proc.stderr
    proc = subprocess.run([sys.executable, FINETUNE, "--model", "vit-nano",
                           "--out", tmp_path / "x"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "--checkpoint is required" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_bad_input_fails_fast_on_every_rank(run_mpi, tmp_path):
    proc = run_mpi(2, [PRETRAIN, "--data", tmp_path / "nothing", "--out", tmp_path / "x"],
                   timeout=60, check=False)
    # every rank exits 2; the message is printed once, by rank 0
    assert proc.returncode == 2
    assert proc.stderr.count(f"--data '{tmp_path / 'nothing'}': no such file") == 1, proc.stderr
    proc = run_mpi(2, [PRETRAIN, "--dp", "4", "--out", tmp_path / "x"], timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("dp=4 x tp=1 x pp=1 = 4 ranks, but the world has 2 ranks") == 1
    assert not (tmp_path / "x").exists()


def test_evaluator_over_dp_equals_one_process(run_mpi):
    proc = run_mpi(3, [__file__, "evaluator"], timeout=120)
    assert proc.stdout.count("evaluator OK") == 3, proc.stdout + proc.stderr


def _evaluator_driver():
    from mpi4py import MPI

    from minivit.config import get_config
    from minivit.io import Loader
    from minivit.io.sources import Subset, open_data
    from minivit.model import ViT
    from minivit.parallel.runtime.evaluate import Evaluator, per_sample_xent, topk_correct
    from minivit.parallel.grid import ProcessGrid
    grid = ProcessGrid(MPI.COMM_WORLD, dp=MPI.COMM_WORLD.Get_size())
    s = open_data("digits")
    held = Subset(s.eval.dataset, s.eval.indices[:29])   # 29 = 3 ranks x 4 x 2 + 5: padded
    model = ViT(get_config("vit-nano", dtype="float64"), seed=2)
    ev = Evaluator(held, grid.dp_group, batch_size=4, image_size=16, dtype="float64")
    got = ev.evaluate(model)
    ev.close()
    x, y = Loader(held, 29, shuffle=False, image_size=16, prefetch=0).next_batch()
    logits, _ = model.forward(x.astype(np.float64))
    assert got["samples"] == 29, got
    assert got["accuracy"] == topk_correct(logits, y) / 29, got
    np.testing.assert_allclose(got["loss"], per_sample_xent(logits, y).mean(), rtol=1e-10)
    print("evaluator OK", flush=True)
    grid.free()


if __name__ == "__main__" and sys.argv[1:] == ["evaluator"]:
    from minivit.parallel.runtime.guard import install_guard
    from mpi4py import MPI
    install_guard(MPI.COMM_WORLD)
    _evaluator_driver()


@pytest.mark.parametrize("script", [PRETRAIN, FINETUNE])
@pytest.mark.parametrize("bad", ["0", "-1"])
def test_threads_below_one_is_a_usage_error(script, bad, tmp_path):
    extra = ["--from-scratch", "--model", "vit-nano"] if script == FINETUNE else []
    proc = subprocess.run([sys.executable, script, *extra, "--threads", bad,
                           "--out", str(tmp_path / "x")], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert f"--threads {bad}: expected >= 1" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()
