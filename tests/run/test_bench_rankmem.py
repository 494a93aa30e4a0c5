"""run/bench.py rankmem (issue 15): per-rank VmHWM of real training steps under mpirun
against plan.py's prediction, on vit-nano (the large presets are documented commands)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_rankmem_measures_every_rank_and_matches_the_plan(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(ROOT / "run" / "bench.py"), "rankmem",
                           "--model", "vit-nano", "--micro-batch", "2", "--ranks", "1,2",
                           "--layouts", "single,zero3,pp2", "--json", str(out),
                           "--plot", str(tmp_path / "r.png")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    names = [r["layout"]["name"] for r in data["results"]]
    assert names == ["single", "zero3-2", "pp2"]
    for r in data["results"]:
        assert len(r["ranks"]) == r["layout"]["ranks"]
        assert all(row["hwm"] > 0 and row["peak_reset"] for row in r["ranks"])
        assert abs(r["error"]) < 0.15, r["layout"]["name"]
    # ZeRO-3 halves the ledger's model state at 2 ranks (padded shards: at most +1%)
    assert 0.5 <= data["summary"]["zero3_model_state_ratio"] <= 0.505
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert "ZeRO-3 model state at 2 ranks / 1 rank" in proc.stdout
