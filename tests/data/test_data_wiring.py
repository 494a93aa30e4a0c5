"""--data specs (minivit.io.sources), TOML flags (minivit.parallel.runtime.cliconfig), the
held-out Evaluator (single process; the dp version is in test_pretrain_cli.py),
the pre-trained backbone loader and the metrics plot."""
import argparse
import json
import math
import tomllib
from dataclasses import asdict

import numpy as np
import pytest

from minivit.parallel.runtime.cliconfig import dumps_toml, parse_with_config, toml_defaults
from minivit.config import get_config
from minivit.io import Loader
from minivit.io.sources import (LoaderSteps, Subset, check_source, open_data, parse_spec,
                                stratified_split)
from minivit.model import ViT


# ----------------------------------------------------------------- --data specs
def test_parse_spec():
    assert parse_spec("synthetic:newton") == ("synthetic", "newton")
    assert parse_spec("digits") == ("builtin", "digits")
    assert parse_spec("some/dir") == ("shards", "some/dir")
    with pytest.raises(ValueError, match="unknown generator 'julia'"):
        parse_spec("synthetic:julia")
    with pytest.raises(ValueError, match="expected DIR"):
        parse_spec("")


def test_check_source_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="'nowhere': no such file"):
        check_source("nowhere")
    with pytest.raises(FileNotFoundError, match="no index.json and no .tar"):
        check_source(str(tmp_path))
    check_source("synthetic:fractaldb")   # nothing to check on disk


def test_stratified_split_is_disjoint_and_per_class():
    labels = np.repeat(np.arange(4), [10, 5, 1, 20])
    train, held = stratified_split(labels, 0.2)
    assert not set(train) & set(held) and len(train) + len(held) == len(labels)
    assert [int((labels[held] == c).sum()) for c in range(4)] == [2, 1, 0, 4]
    # seed None holds out the last samples of each class: the top instance range
    assert list(held[labels[held] == 0]) == [8, 9]
    again = stratified_split(labels, 0.2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(again, stratified_split(labels, 0.2, 3)))
    with pytest.raises(ValueError, match="expected 0 < fraction < 1"):
        stratified_split(labels, 1.0)


def test_synthetic_splits_are_disjoint_instance_ranges():
    s = open_data("synthetic:fractaldb", classes=3, image_size=16, instances=20, holdout=0.25)
    assert s.num_classes == 3 and len(s.train) == 3 * 15 and len(s.eval) == 3 * 5
    assert list(s.train.instances) == list(range(15))
    assert list(s.eval.instances) == list(range(15, 20))
    image, label = s.eval[5]
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8 and label == 1
    with pytest.raises(ValueError, match="needs --classes"):
        open_data("synthetic:newton", image_size=16, instances=4)
    with pytest.raises(ValueError, match="exceeds the 1000 instances"):
        open_data("synthetic:fractaldb", classes=2, image_size=16, instances=1001)


def test_digits_builtin_split():
    s = open_data("digits", holdout=0.2, split_seed=0)
    assert s.num_classes == 10 and len(s.train) + len(s.eval) == 1797
    assert not set(s.train.indices) & set(s.eval.indices)
    counts = np.bincount(s.eval.labels, minlength=10)
    full = np.bincount(s.train.labels, minlength=10) + counts
    assert np.array_equal(counts, [math.ceil(0.2 * n) for n in full])   # stratified
    image, label = s.eval[0]
    assert image.shape == (8, 8, 3) and 0 <= label < 10
    with pytest.raises(ValueError, match="--classes 5 but --data 'digits' has 10"):
        open_data("digits", classes=5)


def test_loader_steps_accumulation_and_dtype():
    s = open_data("synthetic:fractaldb", classes=2, image_size=16, instances=8, holdout=0)
    loader = Loader(s.train, 2, rank=1, world_size=2, seed=0, image_size=16, prefetch=0)
    epoch, micro = next(LoaderSteps(loader, accum=2, dtype="float64"))
    assert epoch == 0 and len(micro) == 2
    assert all(x.shape == (2, 3, 16, 16) and x.dtype == np.float64 and y.shape == (2,)
               for x, y in micro)
    ref = Loader(s.train, 2, rank=1, world_size=2, seed=0, image_size=16, prefetch=0)
    ref.next_batch()                      # the step's second micro-batch is the 2nd call
    np.testing.assert_array_equal(micro[1][0], ref.next_batch()[0])
    with pytest.raises(ValueError, match="accum=0"):
        LoaderSteps(loader, 0)


def test_subset_renumbers():
    s = open_data("digits")
    sub = Subset(s.train.dataset, [5, 7])
    assert len(sub) == 2 and sub[1][1] == s.train.dataset[7][1]
    with pytest.raises(ValueError, match="non-empty"):
        Subset(s.train.dataset, [])


# ----------------------------------------------------------------- TOML flags
def _parser():
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--model", default="vit-nano", choices=["vit-nano", "vit-micro"])
    p.add_argument("--audit", action="store_true")
    p.add_argument("--out", default=None)
    return p


def test_toml_overrides_defaults_and_cli_overrides_toml(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('lr = 0.5\nsteps = 7\nmodel = "vit-micro"\naudit = true\n')
    args = parse_with_config(_parser(), ["--config", str(cfg), "--steps", "3"])
    assert (args.lr, args.steps, args.model, args.audit) == (0.5, 3, "vit-micro", True)
    args = parse_with_config(_parser(), ["--steps", "3"])      # no file: plain defaults
    assert (args.lr, args.steps, args.model) == (1e-3, 3, "vit-nano")


@pytest.mark.parametrize("text, message", [
    ("learning_rate = 1.0\n", "key 'learning_rate' is not a flag"),
    ("steps = 2.5\n", "expected an integer"),
    ("model = \"vit-huge\"\n", "expected one of ['vit-nano', 'vit-micro']"),
    ("audit = 1\n", "expected true or false"),
    ("[table]\nx = 1\n", "tables are not supported"),
    ("steps = \n", "--config"),
])
def test_bad_toml_is_a_clear_error(tmp_path, capsys, text, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(SystemExit) as exc:
        toml_defaults(_parser(), str(cfg))
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_toml_writer_round_trips():
    flat = {"lr": 1e-3, "steps": 7, "model": 'vit "micro"\\x\n', "audit": False,
            "out": None, "clip": float("inf"), "param": ["a=1", "b=2"], "neg": -0.0}
    back = tomllib.loads(dumps_toml(flat, header="two\nlines"))
    assert back == {k.replace("_", "-"): v for k, v in flat.items() if v is not None}
    assert math.copysign(1, back["neg"]) == -1


# ----------------------------------------------------------------- evaluation
def test_evaluator_single_process_matches_direct_computation():
    from mpi4py import MPI

    from minivit.parallel.runtime.evaluate import Evaluator, per_sample_xent, topk_correct
    from minivit.parallel.grid import ProcessGrid
    grid = ProcessGrid(MPI.COMM_SELF, dp=1)
    s = open_data("digits")
    held = Subset(s.eval.dataset, s.eval.indices[:37])   # 37: the last batch is partial
    model = ViT(get_config("vit-nano", dtype="float64"), seed=1)
    ev = Evaluator(held, grid.dp_group, batch_size=16, image_size=16, dtype="float64")
    got = ev.evaluate(model)
    again = ev.evaluate(model)                           # a second pass sees the same images
    ev.close()
    x, y = Loader(held, 37, shuffle=False, image_size=16, prefetch=0).next_batch()
    logits, _ = model.forward(x.astype(np.float64))
    assert got == again and got["samples"] == 37
    assert got["accuracy"] == topk_correct(logits, y) / 37
    np.testing.assert_allclose(got["loss"], per_sample_xent(logits, y).mean(), rtol=1e-12)
    assert topk_correct(logits, y, k=10) == 37
    grid.free()


# ----------------------------------------------------------------- transfer
def test_load_backbone_keeps_a_fresh_head(tmp_path):
    from minivit.checkpoint import CheckpointError, CheckpointWriter
    from minivit.transfer import load_backbone, open_pretrained, pretrained_config
    src = ViT(get_config("vit-nano", num_classes=7), seed=3)
    with CheckpointWriter(tmp_path / "ckpt" / "step_0000002.h5") as w:
        for name, array in src.flat.state_dict().items():
            w.write("params", name, array)
        w.commit({"step": 2, "preset": "vit-nano", "model_config": asdict(src.config)})
    with open_pretrained(tmp_path) as reader:            # a run folder resolves to ckpt/
        config = pretrained_config(reader, 4, "float64")
        model = ViT(config, seed=9)
        head = model.flat.state_dict()["head.weight"].copy()
        loaded, kept = load_backbone(model, reader)
    assert kept == ["head.weight", "head.bias"] and len(loaded) == len(src.flat.offsets) - 2
    got, want = model.flat.state_dict(), src.flat.state_dict()
    assert got["head.weight"].shape == (4, 32) and np.array_equal(got["head.weight"], head)
    assert all(np.array_equal(got[n], want[n].astype(np.float64)) for n in loaded)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no valid step_XXXXXXX.h5"):
        open_pretrained(tmp_path / "empty")


# ----------------------------------------------------------------- plotting
def test_plot_writes_a_png(tmp_path):
    from PIL import Image

    from minivit.tools.plotting import moving_average, plot_runs, read_metrics
    path = tmp_path / "metrics.jsonl"
    lines = [{"kind": "header", "blas_peak_gflops": 1.0}]
    lines += [{"kind": "train", "step": i, "loss": 2.0 / i, "accuracy": i / 20}
              for i in range(1, 21)]
    lines += [{"kind": "eval", "step": 10, "loss": 0.3, "accuracy": 0.4, "samples": 5}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    header, train, evals = read_metrics(path)
    assert header["blas_peak_gflops"] == 1.0 and len(train) == 20 and len(evals) == 1
    np.testing.assert_allclose(moving_average([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])
    png = plot_runs([("a", path), ("b", path)], tmp_path / "out" / "m.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 500


def test_spread_subset_keeps_classes_balanced():
    from minivit.io.sources import spread_subset
    s = open_data("synthetic:fractaldb", classes=4, image_size=16, instances=50, holdout=0.5)
    sub = spread_subset(s.eval, 20)
    assert len(sub) == 20 and np.bincount(s.eval.labels[sub.indices]).tolist() == [5] * 4
    assert spread_subset(s.eval, 1000) is s.eval
    with pytest.raises(ValueError, match="positive number"):
        spread_subset(s.eval, 0)


def test_gemm_peak_is_2n3_over_the_best_repeat(monkeypatch):
    import time

    from minivit.flops import measure_gemm_peak
    # a fake clock: the repeats take 3, 1 and 2 ms, so the best is 1 ms
    ticks = iter([0.0, 0.003, 1.0, 1.001, 2.0, 2.002])
    monkeypatch.setattr(time, "perf_counter", lambda: next(ticks))
    assert measure_gemm_peak(8, "float64", repeats=3) == pytest.approx(2 * 8**3 / 0.001,
                                                                       rel=1e-9)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="n=0"):
        measure_gemm_peak(0)
