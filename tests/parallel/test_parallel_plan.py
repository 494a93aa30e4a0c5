"""run/plan.py prints the cost.py predictions and rejects a bad layout."""
import runpy
from pathlib import Path

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
