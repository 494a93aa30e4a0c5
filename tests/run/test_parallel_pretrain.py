"""run/pretrain.py under mpirun: data parallel by default, ZeRO end to end equal
to one process, --audit agrees with cost.py, layout errors on every rank."""
import json
import sys

import numpy as np

from conftest import ROOT

PRETRAIN = str(ROOT / "run" / "pretrain.py")
COMMON = ["--model", "vit-nano", "--data", "random", "--dtype", "float64", "--micro-batch", "4",
          "--global-batch", "16", "--steps", "3", "--warmup", "1", "--lr", "1e-2",
          "--random-samples", "64", "--threads", "1"]


def _records(out):
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r.get("kind") == "train"]


def test_zero3_run_equals_single_process(run_mpi, tmp_path):
    import subprocess
    single = subprocess.run([sys.executable, PRETRAIN, *COMMON, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert single.returncode == 0, single.stderr[-3000:]
    proc = run_mpi(2, [PRETRAIN, *COMMON, "--zero", "3", "--audit", "--out", tmp_path / "two"],
                   timeout=120)
    assert "world 2 = dp 2 x tp 1 x pp 1, ZeRO-3" in proc.stdout
    assert "micro-batch 4 x accumulation 2 x dp 2" in proc.stdout
    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=1e-10)
    np.testing.assert_allclose([r["grad_norm"] for r in two], [r["grad_norm"] for r in one],
                               rtol=1e-10)
    assert all(r["comm_bytes"] > 0 for r in two) and all(r["comm_bytes"] == 0 for r in one)
    # the audit: 3 steps, each total equal to the padding-exact prediction
    totals = [ln for ln in proc.stdout.splitlines()
              if ln.startswith("[audit]   total") and "closed form" in ln]
    assert len(totals) == 3 and all(" OK; closed form" in ln for ln in totals), totals
    measured = [int(ln.split()[2].replace(",", "")) for ln in totals]
    assert measured == [r["comm_bytes"] for r in two]
    assert "[audit] memory per rank, ZeRO-3, dp=2 (closed form 16 Psi/p)" in proc.stdout
    # activations: measured context bytes equal the closed form (ZeRO-3 units wrapped)
    acts = [ln for ln in proc.stdout.splitlines() if ln.startswith("[audit] activations")]
    assert len(acts) == 3 and all(ln.endswith(" OK") for ln in acts), acts


def test_no_layout_flags_means_data_parallel(run_mpi, tmp_path):
    proc = run_mpi(3, [PRETRAIN, "--model", "vit-nano", "--data", "random", "--steps", "2",
                       "--warmup", "1", "--micro-batch", "4",
                       "--threads", "1", "--out", tmp_path / "dp"], timeout=120)
    assert "world 3 = dp 3 x tp 1 x pp 1, ZeRO-0" in proc.stdout
    assert "global batch 12 = micro-batch 4 x accumulation 1 x dp 3" in proc.stdout
    assert all(r["comm_bytes"] > 0 for r in _records(tmp_path / "dp"))


def test_bad_global_batch_fails_on_every_rank_printed_once(run_mpi, tmp_path):
    proc = run_mpi(2, [PRETRAIN, "--global-batch", "30", "--micro-batch", "8",
                       "--out", tmp_path / "x"], timeout=60, check=False)
    assert proc.returncode == 2
    message = "--global-batch 30 is not divisible by --micro-batch 8 x dp 2 = 16"
    assert proc.stderr.count(message) == 1, proc.stderr      # world rank 0 prints, all exit 2
    assert not (tmp_path / "x").exists()


def test_layout_errors(run_mpi, tmp_path):
    proc = run_mpi(3, [PRETRAIN, "--tp", "3", "--out", tmp_path / "x"], timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("the model's heads=4 is not divisible by tp=3") == 1, proc.stderr
    proc = run_mpi(2, [PRETRAIN, "--dp", "3", "--out", tmp_path / "x"], timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("dp=3 x tp=1 x pp=1 = 3 ranks, but the world has 2 ranks") == 1


def test_overlap_with_sharded_gradients_is_an_error(tmp_path):
    import subprocess
    proc = subprocess.run([sys.executable, PRETRAIN, "--zero", "2", "--overlap",
                           "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "--overlap --zero 2: overlap applies to ZeRO 0-1" in proc.stderr


def test_mixup_and_cutmix_run_equals_single_process(run_mpi, tmp_path):
    """Mixing is defined on the global batch, seeded by (seed, epoch, step): dp = 2 with
    mixup + cutmix gives the losses of one process (float64, 3 steps)."""
    import subprocess
    mixing = ["--mixup", "0.8", "--cutmix", "1.0", "--label-smoothing", "0.1"]
    single = subprocess.run([sys.executable, PRETRAIN, *COMMON, *mixing,
                             "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert single.returncode == 0, single.stderr[-3000:]
    run_mpi(2, [PRETRAIN, *COMMON, *mixing, "--out", tmp_path / "two"], timeout=120)
    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=1e-10)
    np.testing.assert_allclose([r["grad_norm"] for r in two], [r["grad_norm"] for r in one],
                               rtol=1e-10)
    # mixing changes the loss: the soft targets are not the hard labels
    plain = subprocess.run([sys.executable, PRETRAIN, *COMMON, "--label-smoothing", "0.1",
                            "--out", str(tmp_path / "plain")],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert _records(tmp_path / "plain")[0]["loss"] != one[0]["loss"]
