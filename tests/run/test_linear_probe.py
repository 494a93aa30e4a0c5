"""The linear probe (``minivit.transfer.LinearProbe`` + ``StepEngine(trainable=...)``):
the backbone stays bitwise unchanged, the head learns, and the head's gradient equals
the full model's; ``run/finetune.py --linear-probe`` on a tiny Fashion-MNIST folder
reports validation and test top-1 apart."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from minivit.config import get_config
from minivit.loss import cross_entropy_backward, cross_entropy_forward
from minivit.model import ViT
from minivit.parallel.grid import ProcessGrid
from minivit.parallel.runtime.step import StepEngine
from minivit.transfer import LinearProbe
from tests.support.fashion_support import write_fashion

ROOT = Path(__file__).resolve().parents[2]
CONFIG = get_config("vit-nano", depth=2, dtype="float64")


def _batch(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 3, CONFIG.image_size, CONFIG.image_size))
    return x, rng.integers(0, CONFIG.num_classes, 6)


def test_probe_trains_the_head_and_freezes_the_rest():
    probe = LinearProbe(ViT(CONFIG, seed=1))
    lo, hi = probe.trainable
    offsets = probe.flat.offsets
    assert (lo, hi) == (offsets["head.weight"][0], offsets["head.bias"][1])
    assert hi == probe.flat.numel          # the classifier is the end of the buffer
    before = probe.flat.data.copy()
    engine = StepEngine(probe, ProcessGrid(MPI.COMM_SELF, dp=1), max_grad_norm=1.0,
                        weight_decay=0.1, trainable=probe.trainable)
    losses = [engine.train_step([_batch(s % 2)], lr=1e-2)["loss"] for s in range(6)]
    after = probe.flat.data
    # frozen: bitwise, although weight decay 0.1 applies to the blocks' weights
    assert np.array_equal(after[:lo].view(np.uint64), before[:lo].view(np.uint64))
    assert not np.array_equal(after[lo:hi], before[lo:hi])
    assert losses[-1] < losses[0]
    assert set(engine.optimizer.state_dict()["exp_avg"]) == {"head.weight", "head.bias"}


def test_probe_head_gradient_equals_the_full_backward():
    full, probe = ViT(CONFIG, seed=2), LinearProbe(ViT(CONFIG, seed=2))
    x, y = _batch(0)
    for model in (full, probe):
        logits, ctx = model.forward(x)
        _, loss_ctx = cross_entropy_forward(logits, y)
        model.backward(cross_entropy_backward(loss_ctx), ctx)
    lo, hi = probe.trainable
    np.testing.assert_array_equal(probe.flat.grad[lo:hi], full.flat.grad[lo:hi])
    assert not probe.flat.grad[:lo].any() and full.flat.grad[:lo].any()


def test_trainable_slice_is_checked():
    model = ViT(CONFIG, seed=0)
    grid = ProcessGrid(MPI.COMM_SELF, dp=1)
    with pytest.raises(ValueError, match="expected 0 <= start < stop"):
        StepEngine(model, grid, trainable=(5, model.flat.numel + 1))
    with pytest.raises(ValueError, match="trains with zero 0"):
        StepEngine(model, grid, zero=1, trainable=(0, 10))


def test_finetune_linear_probe_reports_validation_and_test(tmp_path):
    from tests.run.test_pretrain_cli import _checkpoint
    write_fashion(tmp_path / "fm", per_class_train=8, per_class_test=2)
    _checkpoint(tmp_path / "pre" / "ckpt" / "step_0000004.h5")
    out = tmp_path / "probe"
    proc = subprocess.run(
        [sys.executable, ROOT / "run" / "finetune.py", "--checkpoint", tmp_path / "pre",
         "--data", f"fashion-mnist:{tmp_path / 'fm'}", "--labels-per-class", "4",
         "--holdout", "0.25", "--linear-probe", "--epochs", "2", "--micro-batch", "8",
         "--threads", "1", "--no-progress", "--out", out],
        capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["protocol"] == "linear" and result["labels_per_class"] == 4
    assert result["val_samples"] == 20 and result["test_samples"] == 20
    assert 0 <= result["val_top1"] <= 1 and 0 <= result["test_top1"] <= 1
    assert result["steps"] == 2 * (40 // 8)
    assert "linear probe: backbone frozen" in result["origin"] and "test top-1" in proc.stdout
