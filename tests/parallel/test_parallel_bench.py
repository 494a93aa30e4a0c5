"""bench.py scaling: flag validation and one tiny end-to-end run (no timing asserted)."""
import json

import pytest

from minivit.parallel.tools import bench_scaling


def test_bad_flags_are_rejected(capsys):
    with pytest.raises(SystemExit):
        bench_scaling.main(["--ranks", "3", "--global-batch", "64"])
    assert "--ranks 3: expected a positive divisor of --global-batch 64" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_scaling.main(["--zero", "4"])
    assert "expected stages among 0, 1, 2, 3" in capsys.readouterr().err


def test_tiny_run_reports_every_configuration(capsys):
    assert bench_scaling.main(["--ranks", "1,2", "--model", "vit-nano", "--global-batch", "8",
                               "--zero", "3", "--steps", "1", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["zero"], r["ranks"]) for r in rows] == [(3, 1), (3, 2)]
    for r in rows:
        assert r["images_per_s"] > 0 and r["efficiency"] == pytest.approx(r["speedup"] / r["ranks"])
        assert (r["comm_mib"] > 0) == (r["ranks"] > 1)


def test_accumulation_gflops_oversubscription_and_plot(capsys, tmp_path):
    png = tmp_path / "scaling.png"
    assert bench_scaling.main(["--ranks", "1,4", "--model", "vit-nano", "--global-batch", "8",
                               "--micro-batch", "2", "--steps", "1", "--json",
                               "--plot", str(png)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    # the global batch is fixed: one rank accumulates 4 sub-steps of 2, four ranks 1 each
    assert [(r["ranks"], r["accum"], r["micro_batch"]) for r in rows] == [(1, 4, 2), (4, 1, 2)]
    assert all(r["gflops_per_s"] > 0 for r in rows)
    assert [r["oversubscribed"] for r in rows] == [False, 4 > __import__("os").cpu_count()]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        bench_scaling.main(["--ranks", "1,2", "--global-batch", "8", "--micro-batch", "3"])
    assert "--micro-batch 3 with --ranks 1" in capsys.readouterr().err


def test_bubble_bench_reports_each_schedule_against_its_formula(run_mpi, tmp_path):
    """bench.py bubble: one line per schedule, the formula the one of pipeline.py
    (interleaved p=2, m=2, v=2: 1/(4+1)), a measured share in [0, 1), PNGs drawn."""
    from conftest import ROOT
    proc = run_mpi(2, [str(ROOT / "run" / "bench.py"), "bubble", "--model", "vit-nano",
                       "--depth", "4", "--micro-batch", "2", "--micro-batches", "2",
                       "--steps", "1", "--schedules", "1f1b,interleaved", "--json",
                       "--png-dir", tmp_path], timeout=180)
    rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert [(r["schedule"], r["v"]) for r in rows] == [("1f1b", 1), ("interleaved", 2)]
    assert rows[0]["formula_bubble"] == pytest.approx(1 / 3)
    assert rows[1]["formula_bubble"] == pytest.approx(1 / 5)
    assert rows[1]["formula"] == "(p-1)/(vm+p-1)"
    assert all(0 <= r["measured_bubble"] < 1 for r in rows)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["pipeline_1f1b.png",
                                                             "pipeline_interleaved.png"]
    with pytest.raises(SystemExit):
        from minivit.parallel.tools import bench_bubble
        bench_bubble.parse_args(["--schedules", "1f1b,zb"])
