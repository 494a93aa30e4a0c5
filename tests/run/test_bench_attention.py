"""run/bench.py attention: the attention core against PyTorch's SDPA, alternated
(flags, JSON keys, and that both sides ran on the shapes asked for)."""
import json

import pytest

from minivit.tools.bench_attention import main, parse_args


def test_json_rows_for_each_shape(capsys):
    pytest.importorskip("torch", reason="the reference side is PyTorch's SDPA (extra [torch])")
    assert main(["--shapes", "vit-nano:2", "--threads", "1", "--rounds", "2", "--warmup", "0",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (row,) = out["rows"]
    assert (row["B"], row["T"], row["H"], row["head_dim"]) == (2, 17, 4, 8)
    assert row["minivit_ms"] > 0 and row["torch_ms"] > 0
    assert row["ratio"] == pytest.approx(row["minivit_ms"] / row["torch_ms"])
    assert row["minivit_gflops"] == pytest.approx(12 * 2 * 17 * 17 * 32 / row["minivit_ms"] / 1e6)


@pytest.mark.parametrize("flags", [["--shapes", "vit-nope:2"], ["--shapes", "vit-nano:0"],
                                   ["--rounds", "0"]])
def test_bad_flags_are_usage_errors(flags):
    with pytest.raises(SystemExit) as exc:
        parse_args(flags)
    assert exc.value.code == 2
