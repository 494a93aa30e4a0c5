"""run/bench.py only dispatches: --help lists the subcommands; an unknown one is a usage
error on stderr naming it (exit 2), printed once under mpirun."""
import runpy

from conftest import ROOT

BENCH = ROOT / "run" / "bench.py"
MAIN = runpy.run_path(str(BENCH))["main"]


def test_unknown_subcommand_is_named_on_stderr(capsys):
    assert MAIN(["nosuch"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("bench.py: error: unknown subcommand 'nosuch' (expected one of "
                          "synth, fidelity, io, train, attention,"), err
    assert err.count("\n") == 1


def test_help_lists_the_subcommands(capsys):
    assert MAIN(["--help"]) == 0 and MAIN([]) == 0
    out, err = capsys.readouterr()
    assert out.count("subcommands: synth, fidelity") == 2 and err == ""


def test_unknown_subcommand_under_mpirun_is_printed_once(run_mpi):
    proc = run_mpi(2, [BENCH, "nosuch"], timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("unknown subcommand 'nosuch'") == 1, proc.stderr
