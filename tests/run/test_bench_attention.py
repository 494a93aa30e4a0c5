"""run/bench.py attention: the attention core against PyTorch's SDPA, alternated
(flags, JSON keys, and that both sides ran on the shapes asked for)."""
import json

import pytest

from conftest import ROOT

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


@pytest.mark.parametrize("flags, message", [
    (["--shapes", "vit-tiny:0"], "argument --shapes: 'vit-tiny:0': batch '0': expected a "
                                 "positive integer"),
    (["--shapes", "vit-tiny:32,vit-nope:2"], "'vit-nope:2': unknown preset 'vit-nope'"),
    (["--shapes", "vit-tiny"], "'vit-tiny': expected PRESET:BATCH, e.g. vit-tiny:32"),
    (["--threads", "0"], "argument --threads: 0: expected an integer >= 1"),
    (["--rounds", "0"], "argument --rounds: 0: expected an integer >= 1"),
    (["--warmup", "-1"], "argument --warmup: -1: expected an integer >= 0"),
    (["--rounds", "x"], "argument --rounds: 'x': expected an integer"),
])
def test_usage_errors_name_the_flag_value_and_the_wrong_part(capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        parse_args(flags)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "--rounds >= 1, --warmup" not in err       # not one message for every flag


def test_help_describes_every_option(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "against PyTorch's scaled_dot_product_attention on the same shapes" in out
    assert "comma-separated PRESET:BATCH pairs" in out
    for flag in ("--threads THREADS BLAS", "--rounds ROUNDS timed", "--warmup WARMUP untimed",
                 "--json print"):
        assert flag in out, out


def test_selective_subcommand_times_both_paths(capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_cli", ROOT / "run" / "bench.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["selective", "--shape", "vit-nano:2", "--threads", "1", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "keep P" in out and "selective" in out and "(1.00x)" in out
    with pytest.raises(SystemExit) as exc:
        cli.main(["selective", "--shape", "vit-nano:0"])
    assert exc.value.code == 2
    assert "batch '0': expected a positive integer" in capsys.readouterr().err
