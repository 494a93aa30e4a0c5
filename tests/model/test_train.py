"""Training step, gradient accumulation, overfitting, data arithmetic, FLOPs, and the
``run/pretrain.py`` smoke test."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from minivit.config import ViTConfig, get_config
from minivit.io import Loader
from minivit.io.random_images import RandomImages
from minivit.io.sources import LoaderSteps
from minivit.parallel.runtime.config import accumulation_steps
from minivit.flops import forward_matmul_flops, train_flops
from minivit.model import ViT
from minivit.optim import SGD, AdamW
from minivit.train import train_step

ROOT = Path(__file__).resolve().parents[2]


def test_overfit_16_random_images():
    """vit-nano drives the loss on 16 fixed random images below 0.05 within 300 steps."""
    model = ViT(get_config("vit-nano"), seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    opt = AdamW(model.flat, lr=2e-3, weight_decay=0.05)
    losses = []
    with threadpool_limits(limits=1, user_api="blas"):   # tiny matmuls: threads only add overhead
        for _ in range(300):
            losses.append(train_step(model, opt, [(x, y)], 2e-3, label_smoothing=0.0)["loss"])
            if losses[-1] < 0.05:
                break
    assert losses[0] > 2.0                  # started near log(10) = 2.30
    assert min(losses) < 0.05, f"loss after {len(losses)} steps: {losses[-1]:.4f}"


def test_accumulation_equals_full_batch():
    """2 micro-batches of 3 with scale 1/2 give the gradient and update of one batch of 6."""
    cfg = ViTConfig(image_size=8, patch_size=4, dim=8, depth=1, heads=2, mlp_dim=8,
                    num_classes=4, dtype="float64")
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((6, 3, 8, 8)), rng.integers(0, 4, 6)
    a, b = ViT(cfg, seed=2), ViT(cfg, seed=2)
    out_a = train_step(a, SGD(a.flat, lr=0.1), [(x, y)], 0.1)
    out_b = train_step(b, SGD(b.flat, lr=0.1), [(x[:3], y[:3]), (x[3:], y[3:])], 0.1)
    np.testing.assert_allclose(a.flat.grad, b.flat.grad, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(a.flat.data, b.flat.data, rtol=1e-12, atol=1e-14)
    assert out_a["loss"] == pytest.approx(out_b["loss"], rel=1e-12)
    assert out_a["grad_norm"] > 0


def test_clipping_and_hooks_are_called_in_order():
    cfg = get_config("vit-nano", dtype="float64")
    model = ViT(cfg)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16))
    calls = []

    def sync(m):
        calls.append(("sync", float(np.linalg.norm(m.flat.grad))))

    def clip_fn(grad, max_norm):
        calls.append(("clip", max_norm))
        return 123.0

    out = train_step(model, SGD(model.flat, lr=0.0), [(x, np.array([1, 2]))], 0.0, clip=0.5,
                     sync_grads=sync, clip_fn=clip_fn)
    assert [c[0] for c in calls] == ["sync", "clip"] and calls[0][1] > 0
    assert out["grad_norm"] == 123.0
    out = train_step(model, SGD(model.flat, lr=0.0), [(x, np.array([1, 2]))], 0.0, clip=1e-3)
    assert out["grad_norm"] > 1e-3
    assert np.linalg.norm(model.flat.grad) == pytest.approx(1e-3, rel=1e-4)


def test_accumulation_steps_errors():
    assert accumulation_steps(64, 16, 1) == 4
    assert accumulation_steps(64, 8, 4) == 2
    with pytest.raises(ValueError, match=r"--global-batch 60 is not divisible by --micro-batch "
                                         r"16 x dp 1 = 16"):
        accumulation_steps(60, 16, 1)
    with pytest.raises(ValueError, match="--micro-batch 0: expected >= 1"):
        accumulation_steps(60, 0, 1)


def test_random_data_deterministic_and_rank_slices():
    """--data random goes through the Loader: 2 ranks' micro-batches of a step are the
    global batch of 1 rank, across an epoch boundary (one rule for every source)."""
    ds = RandomImages(40, 8, 5, seed=3)
    (x1, y1), (x2, y2) = ds[7], RandomImages(40, 8, 5, seed=3)[7]
    assert x1.tobytes() == x2.tobytes() and y1 == y2 == 2
    assert x1.shape == (8, 8, 3) and x1.dtype == np.uint8
    assert [ds[i][1] for i in (0, 7, 12)] == [0, 2, 2]
    one = LoaderSteps(Loader(ds, 4, seed=1, prefetch=0), accum=2)
    two = [LoaderSteps(Loader(ds, 2, rank=r, world_size=2, seed=1, prefetch=0), accum=2)
           for r in range(2)]
    for _ in range(7):   # crosses the epoch boundary (5 steps of 8 per epoch)
        epoch, full = next(one)
        parts = [next(it) for it in two]
        assert all(p[0] == epoch for p in parts) and len(parts[0][1]) == 2
        step_labels = sorted(np.concatenate([mb[1] for _, mbs in parts for mb in mbs]))
        assert step_labels == sorted(np.concatenate([mb[1] for mb in full]))
    assert epoch == 1
    with pytest.raises(ValueError, match="num_classes=0"):
        RandomImages(40, 8, 0)


def test_flops_by_hand():
    cfg = ViTConfig(image_size=8, patch_size=4, dim=8, depth=1, heads=2, mlp_dim=16,
                    num_classes=3, in_chans=1)
    n, t, d, m = 4, 5, 8, 16
    per_image = (2 * n * 16 * d) + (2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d
                                    + 2 * 2 * t * d * m) + 2 * d * 3
    assert forward_matmul_flops(cfg, 2) == 2 * per_image
    assert train_flops(cfg, 2) == 6 * per_image
    # vit-base at 224: the published 17.6 "GFLOPs" (fvcore / timm) are multiply-adds,
    # so 2 x 17.6 = 35.1 GFLOPs per image forward
    assert forward_matmul_flops(get_config("vit-base"), 1) / 2e9 == pytest.approx(17.56, rel=0.01)


def test_pretrain_smoke(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run/pretrain.py"), "--model", "vit-nano", "--steps", "50",
         "--data", "random", "--out", str(out), "--threads", "1"],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(out / "metrics.jsonl") in proc.stdout
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["kind"] == "header" and lines[0]["blas_peak_gflops"] > 0
    records = [r for r in lines if r["kind"] == "train"]
    assert [r["step"] for r in records] == list(range(1, 51))
    for r in records:
        assert {"step", "epoch", "loss", "accuracy", "lr", "images_per_s", "gflops_per_s",
                "mfu", "comm_bytes"} <= set(r)
        assert r["comm_bytes"] == 0 and r["images_per_s"] > 0 and r["gflops_per_s"] > 0
    first = np.mean([r["loss"] for r in records[:5]])
    last = np.mean([r["loss"] for r in records[-5:]])
    assert last < first - 0.3, (first, last)
    assert json.loads((out / "config.json").read_text())["model"]["dim"] == 32


@pytest.mark.parametrize("flags, message", [
    (["--global-batch", "30", "--micro-batch", "8"], "not divisible by --micro-batch 8"),
    (["--data", "nowhere"], "--data 'nowhere'"),
    (["--model", "vit-colossal"], "invalid choice: 'vit-colossal'"),
])
def test_pretrain_bad_flags(flags, message, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "run/pretrain.py"), *flags,
                           "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "x").exists()     # rejected before any work


def test_pretrain_help_documents_every_flag():
    proc = subprocess.run([sys.executable, str(ROOT / "run/pretrain.py"), "--help"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    for flag in ("--model", "--steps", "--data", "--out", "--seed", "--dtype", "--micro-batch",
                 "--global-batch", "--lr", "--warmup", "--weight-decay", "--clip",
                 "--label-smoothing", "--classes", "--threads"):
        assert flag in proc.stdout


def test_pretrain_under_mpirun_writes_once(run_mpi, tmp_path):
    """Under mpirun only rank 0 writes: one record per step, no interleaved lines."""
    out = tmp_path / "mpi"
    proc = run_mpi(2, [ROOT / "run/pretrain.py", "--model", "vit-nano", "--data", "random",
                       "--steps", "3", "--out", out], timeout=180)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "train"] == [1, 2, 3]
    assert proc.stdout.count("wrote ") == 1
