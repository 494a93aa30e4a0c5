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
