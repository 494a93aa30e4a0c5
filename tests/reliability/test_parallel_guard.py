"""The MPI guard: one rank's exception ends every rank promptly, with a
non-zero exit and that rank's traceback; the job never hangs.

``python tests/reliability/test_parallel_guard.py`` is the per-rank driver.
"""
import sys
import time

import numpy as np


def test_one_rank_raises_all_ranks_end(run_mpi):
    start = time.monotonic()
    proc = run_mpi(3, [__file__], timeout=60, check=False)
    elapsed = time.monotonic() - start
    assert elapsed < 30, f"job took {elapsed:.1f} s to end"
    assert proc.returncode != 0
    assert "[minivit rank 1 (tp 0, dp 1, pp 0)] RuntimeError: injected failure on rank 1" \
        in proc.stderr, proc.stderr
    assert "[minivit rank 1 (tp 0, dp 1, pp 0)] Traceback" in proc.stderr
    # the other ranks were blocked in a collective and were killed, not finished
    assert "unreachable" not in proc.stdout


def test_guard_report_format(capsys):
    from mpi4py import MPI
    from minivit.parallel.runtime.guard import AbortGuard
    guard = AbortGuard(MPI.COMM_SELF)
    guard.label = "rank 7 (tp 0, dp 3, pp 0)"
    try:
        raise KeyError("lost")
    except KeyError as exc:
        guard.report(type(exc), exc, exc.__traceback__)
    err = capsys.readouterr().err
    assert err.splitlines()[0] == \
        "[minivit rank 7 (tp 0, dp 3, pp 0)] uncaught exception, aborting all ranks"
    assert "[minivit rank 7 (tp 0, dp 3, pp 0)] KeyError: 'lost'" in err


def _driver():
    from mpi4py import MPI
    from minivit.parallel.grid import ProcessGrid
    from minivit.parallel.runtime.guard import install_guard
    guard = install_guard(MPI.COMM_WORLD)
    grid = ProcessGrid(MPI.COMM_WORLD, dp=3)
    guard.label = grid.coords
    if grid.rank == 1:
        time.sleep(0.5)           # the others are already waiting in the all-reduce
        raise RuntimeError("injected failure on rank 1")
    grid.dp_group.allreduce(np.ones(4))
    print("unreachable", flush=True)


if __name__ == "__main__":
    _driver()
