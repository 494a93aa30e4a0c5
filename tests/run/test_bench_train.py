"""run/bench.py train: flags, JSON keys, breakdown, the dp comparison, and that
the PyTorch reference is the same model (when PyTorch is installed)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SINGLE_THREAD_ENV
from minivit.tools.bench import main, parse_args
from minivit.config import get_config
from minivit.model import ViT
from minivit.tools.profiler import CLASSES, Profiler, breakdown
from minivit.optim import AdamW

TINY = ["--model", "vit-nano", "--batch", "4", "--steps", "2", "--warmup", "1",
        "--threads", "1", "--peak-n", "64"]


def test_json_keys_and_values(capsys):
    assert main(TINY + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("ms_per_step", "images_per_s", "gflops_per_s", "mfu", "peak_gflops"):
        assert out[key] > 0, key
    assert out["ms_min"] <= out["ms_per_step"] <= out["ms_max"]
    assert out["images_per_s"] == pytest.approx(4 / out["ms_per_step"] * 1e3)
    assert out["mfu"] == pytest.approx(out["gflops_per_s"] / out["peak_gflops"])
    # the machine the figures belong to: CPU model and the BLAS kernel set chosen
    from minivit.tools.bench import machine_info
    assert out["cpu"] == machine_info()["cpu"] and out["cpu"] != ""
    assert "openblas" in out["blas"].lower() and "(" in out["blas"]
    # each BLAS named by whose it is: NumPy's runs the Linears, SciPy's the kernels' GEMMs
    assert "NumPy: " in out["blas"] and "SciPy (kernels): " in out["blas"]


def test_breakdown_json_has_rates_and_the_gemm_gap(capsys):
    assert main(TINY + ["--breakdown", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    classes = {r["class"]: r for r in out["classes"]}
    assert list(classes) == list(CLASSES)
    assert sum(r["ms"] for r in out["classes"]) == pytest.approx(out["total_ms"])
    for name, unit in (("matmul", "GFLOP/s"), ("attention", "GFLOP/s"), ("gelu", "GB/s")):
        assert classes[name]["rate"] > 0 and classes[name]["rate_unit"] == unit
    assert "rate" not in classes["copies"]
    gemms = {g["gemm"]: g for g in out["gemms"]}
    assert list(gemms) == ["qkv", "proj", "fc1", "fc2", "head", "all"]
    assert gemms["all"]["step_ms"] == pytest.approx(classes["matmul"]["ms"])
    assert gemms["fc1"]["step_over_alone"] == pytest.approx(
        gemms["fc1"]["step_ms"] / gemms["fc1"]["alone_ms"])


def test_bad_flags_are_named():
    with pytest.raises(SystemExit):
        parse_args(["--batch", "0"])
    with pytest.raises(SystemExit):
        parse_args(["--warmup", "-1"])


def test_breakdown_covers_the_step_and_restores_the_model():
    cfg = get_config("vit-nano")
    model = ViT(cfg, seed=0)
    opt = AdamW(model.flat, lr=1e-4)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, 3)
    bd = breakdown(model, opt, x, y, steps=2, warmup=0)
    assert [k for k, _ in bd.rows] == list(CLASSES)
    timed = dict(bd.rows)
    for k in ("matmul", "attention", "embed", "layernorm", "gelu", "optimizer"):
        assert timed[k] > 0, k
    # the per-GEMM timers split the matmul class exactly (the head is a Linear too)
    assert set(bd.gemms) == {"qkv", "proj", "fc1", "fc2", "head"}
    assert sum(bd.gemms.values()) == pytest.approx(timed["matmul"], rel=1e-6)
    # every module method is the class method again: no wrapper left behind
    prof = Profiler(model)
    prof.close()
    for unit in model.units:
        assert "forward" not in vars(unit) and "backward" not in vars(unit)
        assert "backward_input" not in vars(unit) and "backward_weight" not in vars(unit)


def test_breakdown_counts_the_attention_linears_backward_as_matmul(monkeypatch):
    # MultiHeadAttention.backward runs qkv/proj through backward_input/backward_weight:
    # a slow qkv weight gradient must land in matmul (and its qkv row), not in attention
    import time
    from minivit.layers import Linear
    orig = Linear.backward_weight

    def slow(self, wctx):
        if self.name.endswith(".qkv"):
            time.sleep(0.05)
        return orig(self, wctx)
    monkeypatch.setattr(Linear, "backward_weight", slow)
    cfg = get_config("vit-nano")
    model = ViT(cfg, seed=0)
    x = np.zeros((2, 3, 16, 16), np.float32)
    bd = breakdown(model, AdamW(model.flat, lr=1e-4), x, np.zeros(2, int), steps=1, warmup=0)
    assert dict(bd.rows)["attention"] < 0.05
    assert bd.gemms["qkv"] >= 0.05 * cfg.depth


def test_dp_comparison_under_mpirun(run_mpi):
    proc = run_mpi(2, ["run/bench.py", "train", "--dp", "2", "--json", *TINY[:-4]],
                   timeout=300)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["dp"] == 2 and out["global_batch"] == 8 and out["single_threads"] == 2
    assert out["ratio"] == pytest.approx(out["dp_images_per_s"] / out["single_images_per_s"])


def test_dp_rank_mismatch_is_a_usage_error_printed_once(run_mpi):
    proc = run_mpi(3, ["run/bench.py", "train", "--dp", "2", *TINY], timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("--dp 2 with 3 MPI rank(s): expected mpirun -n 2") == 1
    assert "Traceback" not in proc.stderr
    proc = run_mpi(2, ["run/bench.py", "train", *TINY], timeout=120, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("2 MPI ranks but --dp 1: expected --dp 2") == 1


@pytest.mark.parametrize("flags,message", [
    (["--dp", "2"], "--dp 2 with 1 MPI rank(s): expected mpirun -n 2"),
    (["--dp", "2", "--vs-torch"], "--vs-torch and --breakdown time one process"),
    (["--image-size", "15"], "image_size=15 is not divisible by patch_size=4"),
    (["--image-size", "0"], "image_size=0"),
])
def test_bad_layouts_and_shapes_are_usage_errors(flags, message):
    proc = subprocess.run([sys.executable, "run/bench.py", "train", *TINY, *flags],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_torch_reference_is_the_same_model():
    torch = pytest.importorskip("torch")
    from minivit.tools.torch_vit import TorchViT, load_minivit_state
    from minivit.loss import cross_entropy_forward
    cfg = get_config("vit-nano", dtype="float64")
    model = ViT(cfg, seed=3)
    ref = TorchViT(cfg).double()
    load_minivit_state(ref, model.flat.state_dict())
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16))
    logits, _ = model.forward(x)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="name mismatch"):
        load_minivit_state(ref, {"head.bias": np.zeros(10)})


def test_vs_torch_without_torch_says_how_to_install(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    from minivit.tools.bench import run
    with pytest.raises(SystemExit, match=r'pip install -e "\.\[torch\]"'):
        run(parse_args(TINY + ["--vs-torch"]))


def test_torch_bf16_autocast_reference_step():
    torch = pytest.importorskip("torch")
    from minivit.tools.torch_vit import TorchTrainer
    cfg = get_config("vit-nano")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, 4)
    state = ViT(cfg, seed=3).flat.state_dict()
    fp32 = TorchTrainer(cfg, x, y, state=state).step()
    bf16 = TorchTrainer(cfg, x, y, state=state, autocast="bfloat16").step()
    # the same model and batch: the bf16 loss is the fp32 one to bf16 precision, not equal
    assert bf16 != fp32 and abs(bf16 - fp32) < 0.05 * abs(fp32)
    with pytest.raises(ValueError, match="autocast='float8'"):
        TorchTrainer(cfg, x, y, autocast="float8")


def test_alternation_times_one_call_per_round_after_untimed_settle_calls(monkeypatch):
    from minivit.tools import bench
    log, clock = [], iter(range(1000))
    monkeypatch.setattr(bench.time, "perf_counter", lambda: float(next(clock)))
    fns = [lambda: log.append("a"), lambda: log.append("b")]
    times = bench.time_alternating(3, fns, warmup=1, settle=2)
    # warm-up once each, then per round: a a (untimed) a (timed), b b b
    assert "".join(log) == "ab" + "aaabbb" * 3
    assert [len(t) for t in times] == [3, 3]
    # only the timed call sits between the two clock reads: one tick each
    assert times == [[1.0] * 3, [1.0] * 3]
