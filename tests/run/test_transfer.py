"""run/transfer.py and minivit.parallel.tools.transfer on a tiny grid (vit-nano, a tiny
Fashion-MNIST folder, 3 sources x 2 protocols): cells, resume, rendered shards,
backbones, tables."""
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from minivit.parallel.tools.transfer import load_grid, markdown_table, mean_std
from tests.support.fashion_support import write_fashion

ROOT = Path(__file__).resolve().parents[2]
TRANSFER = ROOT / "run" / "transfer.py"

GRID = """model = "vit-nano"
threads = 1
seeds = [0]
protocols = ["finetune", "linear"]
[pretrain]
classes = 10
steps = 3
micro_batch = 8
warmup = 1
[sources.scratch]
[sources.random]
data = "random"
random_samples = 64
[sources.newton]
data = "synthetic:newton"
instances = 4
direct = true
[tasks.fm-tiny]
data = "fashion-mnist:{fm}"
labels_per_class = 3
[finetune]
max_steps = 2
epochs = 50
micro_batch = 8
holdout = 0.25
eval_samples = 10
[protocol.linear]
lr = 1e-2
"""


def _transfer(tmp_path, *extra):
    return subprocess.run([sys.executable, TRANSFER, "--grid", tmp_path / "grid.toml",
                           "--results", tmp_path / "results", "--work", tmp_path / "work",
                           *extra], capture_output=True, text=True, timeout=400, cwd=ROOT)


def test_grid_runs_resumes_and_writes_the_tables(tmp_path):
    write_fashion(tmp_path / "fm", per_class_train=8, per_class_test=2)
    (tmp_path / "grid.toml").write_text(GRID.format(fm=tmp_path / "fm"))
    proc = _transfer(tmp_path, "--dry-run", "--sources", "random,newton")
    assert proc.stdout.splitlines()[1:] == [
        "  random/fm-tiny/finetune/0", "  newton/fm-tiny/finetune/0",
        "  random/fm-tiny/linear/0", "  newton/fm-tiny/linear/0"]
    proc = _transfer(tmp_path, "--dry-run", "--tasks", "cifar")
    assert proc.returncode == 2 and "['cifar'] not in the grid (fm-tiny)" in proc.stderr
    proc = _transfer(tmp_path, "--max-cells", "3")
    assert proc.returncode == 0, proc.stderr
    results = tmp_path / "results"
    assert len(list((results / "cells").glob("*.json"))) == 3
    # synthetic:KIND is rendered once into shards (10 classes x 4 instances, the top one held out)
    shards = tmp_path / "work" / "data" / "newton-10x4-direct"
    assert (shards / "index.json").is_file()
    synth = json.loads((shards / "synth.json").read_text())
    assert synth["size"] == 16 and synth["render_size"] == 16   # --direct: drawn at 16 px
    log = (tmp_path / "work" / "pretrain-newton.log").read_text()
    assert f"--data {shards}" in (results / "backbones" / "newton.json").read_text()
    assert "30 train / 10 held-out" in log
    # the backbone: float32 weights only, and its pre-training record
    with h5py.File(results / "backbones" / "random.h5") as f:
        assert set(f) >= {"params"} and "optim" not in f
        assert all(f["params"][n].dtype == np.float32 for n in f["params"])
    info = json.loads((results / "backbones" / "random.json").read_text())
    assert info["images"] == 3 * 8 and info["steps"] == 3
    # resumed: only the missing cell runs; the finished ones are not redone
    before = {p.name: p.stat().st_mtime_ns for p in (results / "cells").glob("*.json")}
    proc = _transfer(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "6 cells, 3 done, 3 to run" in proc.stdout and "6 done, 0 to run" in proc.stdout
    after = {p.name: p.stat().st_mtime_ns for p in (results / "cells").glob("*.json")}
    assert all(after[name] == t for name, t in before.items()) and len(after) == 6
    records = json.loads((results / "transfer.json").read_text())
    assert len(records) == 6
    for r in records:
        assert {"source", "task", "protocol", "seeds", "test_top1", "val_top1",
                "pretrain_images", "finetune_steps"} <= set(r)
        assert r["seeds"] == [0] and r["finetune_steps"] == 2 and 0 <= r["test_top1"][0] <= 1
        assert r["pretrain_images"] == (0 if r["source"] == "scratch" else 24)
    cell = json.loads((results / "cells" / "random__fm-tiny__linear__seed0.json").read_text())
    assert cell["protocol"] == "linear" and "--linear-probe" in cell["command"]
    assert cell["lr"] == 1e-2 and cell["test_samples"] == 20
    assert "| scratch |" in (results / "transfer.md").read_text()
    assert (results / "transfer.png").stat().st_size > 1000


def test_grid_file_errors_name_the_key(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(GRID.format(fm="x").replace("seeds = [0]", "seeds = []"))
    with pytest.raises(ValueError, match="seeds = \\[\\]"):
        load_grid(path)
    path.write_text(GRID.format(fm="x").replace('data = "random"\n', ""))
    with pytest.raises(ValueError, match=r"\[sources.random\] has no data"):
        load_grid(path)
    path.write_text(GRID.format(fm="x").replace("lr = 1e-2", "seed = 3"))
    with pytest.raises(ValueError, match="set by the runner per cell"):
        load_grid(path)
    path.write_text(GRID.format(fm="x").replace('"linear"]', '"knn"]'))
    with pytest.raises(ValueError, match="expected a subset of"):
        load_grid(path)


def test_table_is_mean_and_sample_std(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(GRID.format(fm="x"))
    grid = load_grid(path)
    assert mean_std([0.5, 0.7]) == pytest.approx((0.6, 0.1414213562))
    records = [{"source": "random", "task": "fm-tiny", "protocol": "linear", "seeds": [0, 1],
                "test_top1": [0.5, 0.7], "val_top1": [0.4, 0.4]}]
    text = markdown_table(records, grid)
    assert "| random | 60.0 ± 14.1 (2); val 40.0 ± 0.0 |" in text
    assert "| scratch | - |" in text
