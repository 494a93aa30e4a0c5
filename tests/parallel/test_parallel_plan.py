"""run/plan.py prints the cost.py predictions and rejects a bad layout."""
import runpy
from pathlib import Path

import pytest

PLAN = runpy.run_path(str(Path(__file__).resolve().parents[2] / "run" / "plan.py"))

def test_plan_vit_base_zero3(capsys):
    assert PLAN["main"](["--model", "vit-base", "--nodes", "1024", "--zero", "3"]) == 0
    out = capsys.readouterr().out
    assert "Psi = 86,567,656 parameters" in out
    assert "world 1024 = dp 1024 x tp 1 x pp 1, ZeRO stage 3" in out
    # 16 Psi / p bytes of model state at fp32
    assert f"{16 * 86_567_656 / 1024 / 2**20:10.3f} MiB" in out.split("model state / rank")[1]
    # 3 (p-1)/p Psi * 4 bytes of ZeRO-3 traffic
    dp_line = out.split("dp bytes sent / rank / step")[1].splitlines()[0]
    assert f"{3 * 1023 / 1024 * 86_567_656 * 4 / 2**20:10.3f} MiB" in dp_line

def test_plan_bad_layout(capsys):
    assert PLAN["main"](["--nodes", "10", "--dp", "3"]) == 2
    assert "dp=3 x tp=1 x pp=1 = 3 ranks, but the world has 10" in capsys.readouterr().err

def test_plan_pp_must_divide_depth(capsys):
    assert PLAN["main"](["--nodes", "5", "--pp", "5", "--dp", "1"]) == 2
    assert "pp=5: expected a divisor of the model depth 12" in capsys.readouterr().err


def test_plan_schedule_errors_name_plan_flags(capsys):
    """plan.py sets the micro-batches with --accum (or, in a strong-scaling sweep, with
    --global-batch / (--micro-batch x dp)): the schedule errors name those flags."""
    pipe = ["--model", "vit-base", "--nodes", "4", "--pp", "4"]
    assert PLAN["main"]([*pipe, "--schedule", "interleaved", "--virtual-stages", "2",
                         "--accum", "6"]) == 2
    err = capsys.readouterr().err
    assert "interleaved 1F1B with 6 micro-batches on pp=4 stages" in err
    assert "micro-batches = --accum)" in err and "--global-batch" not in err, err
    assert PLAN["main"]([*pipe, "--schedule", "1f1b", "--accum", "2"]) == 2
    assert "expected accum >= pp (accum = --accum)" in capsys.readouterr().err
    sweep = ["--model", "vit-base", "--pp", "4", "--schedule", "interleaved",
             "--virtual-stages", "3", "--strong-scaling", "4", "--global-batch", "40",
             "--micro-batch", "4"]
    assert PLAN["main"](sweep) == 2
    assert ("micro-batches = --global-batch 40 / (--micro-batch 4 x dp 1) at 4 nodes)"
            in capsys.readouterr().err)


@pytest.mark.parametrize("flags, message", [
    (["--pp", "0"], "--pp 0: expected a positive integer"),
    (["--tp", "0"], "--tp 0: expected a positive integer"),
    (["--pp", "-4"], "--pp -4: expected a positive integer"),
    (["--nodes", "0"], "--nodes 0: expected a positive integer"),
    (["--dp", "0"], "--dp 0: expected a positive integer"),
    (["--ranks-per-node", "0"], "--ranks-per-node 0: expected a positive integer"),
    (["--ranks-per-node", "-2"], "--ranks-per-node -2: expected a positive integer"),
    (["--accum", "-1"], "--accum -1: expected a positive integer"),
    (["--micro-batch", "0"], "--micro-batch 0: expected a positive integer"),
    (["--micro-batch", "-4"], "--micro-batch -4: expected a positive integer"),
    (["--virtual-stages", "0"], "--virtual-stages 0: expected a positive integer"),
])
def test_plan_numeric_flags_name_plan_flag(capsys, flags, message):
    """An integer flag below 1 is a usage error naming plan.py's flag (no traceback, no
    ZeroDivisionError, no negative step time printed with exit 0)."""
    base = ["--nodes", "4"] if "--nodes" not in flags else []
    assert PLAN["main"]([*base, *flags]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"plan.py: error: {message}", captured.err
    assert captured.out == ""


def test_plan_numeric_flags_in_a_sweep(capsys):
    assert PLAN["main"](["--strong-scaling", "1,2", "--ranks-per-node", "0"]) == 2
    assert "--ranks-per-node 0: expected a positive integer" in capsys.readouterr().err
    assert PLAN["main"](["--strong-scaling", "1,2", "--global-batch", "-64"]) == 2
    assert "--global-batch -64: expected a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("flags, fields, message", [
    (["--schedule", "zb-h1", "--zero", "2"], dict(schedule="zb-h1", zero=2),
     "--schedule zb-h1 with --zero 2:"),
    (["--schedule", "zb-h1", "--zero", "3"], dict(schedule="zb-h1", zero=3),
     "--schedule zb-h1 with --zero 3:"),
    (["--schedule", "zb-h1", "--overlap"], dict(schedule="zb-h1", overlap=True),
     "--schedule zb-h1 with --zero 0 --overlap:"),
    (["--overlap", "--zero", "2"], dict(overlap=True, zero=2),
     "--overlap --zero 2: overlap applies to ZeRO 0-1"),
])
def test_plan_refuses_what_pretrain_refuses(capsys, flags, fields, message):
    """plan.py (one layout and a sweep) and TrainConfig.validate share
    zero.check_gradient_sync: the same refusal, the same words."""
    from minivit.parallel.runtime.config import TrainConfig
    assert PLAN["main"](["--nodes", "4", "--pp", "2", "--accum", "4", *flags]) == 2
    assert message in capsys.readouterr().err
    sweep = ["--strong-scaling", "4", "--pp", "2", "--global-batch", "256", "--micro-batch", "4"]
    assert PLAN["main"]([*sweep, *flags]) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(ValueError) as exc:
        TrainConfig(pp=2, global_batch=64, micro_batch=8, **fields).validate(4)
    assert message in str(exc.value)


@pytest.mark.parametrize("flag", [["--global-batch", "64"], ["--plot", "x.png"]])
def test_sweep_only_flags_are_refused_in_a_single_plan(capsys, flag, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)          # a --plot that were honoured would land here
    assert PLAN["main"](["--model", "vit-tiny", "--nodes", "1", *flag]) == 2
    assert f"{flag[0]} applies to --strong-scaling only" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
