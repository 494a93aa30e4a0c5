"""Test-only driver: resume errors under ``mpirun -n 2`` (tests/run/test_pretrain_resume.py).

    mpirun -n 2 python tests/support/resume_error_driver.py RUN_DIR OUT_DIR unreadable
        rank 1 alone cannot read RUN_DIR's checkpoint (a folder its node does not see):
        ``resume_point`` must raise on every rank, with one message naming rank 1
    mpirun -n 2 python tests/support/resume_error_driver.py RUN_DIR OUT_DIR -- FLAGS...
        ``run/pretrain.py``'s ``main(FLAGS)``

Each rank writes ``OUT_DIR/rank<R>`` (its return code, or the message it raised), so
the test sees every rank's outcome, not only mpirun's merged exit status.
"""
import runpy
import sys
from pathlib import Path

from mpi4py import MPI

from minivit.checkpoint import CheckpointError
from minivit.parallel.grid import ProcessGrid
from minivit.parallel.runtime import resume

ROOT = Path(__file__).resolve().parents[2]


class Unreadable:
    """Stands in for ``CheckpointReader`` on a rank that cannot open the file."""

    def __init__(self, path):
        raise CheckpointError(f"{path}: cannot read (not mounted on this node)")


def unreadable(run_dir):
    grid = ProcessGrid(MPI.COMM_WORLD, dp=MPI.COMM_WORLD.Get_size())
    if grid.rank == 1:
        resume.CheckpointReader = Unreadable
    try:
        resume.resume_point(run_dir, grid.world)
        return "no error"
    except CheckpointError as exc:
        return f"raised: {exc}"
    finally:
        grid.free()


if __name__ == "__main__":
    run_dir, out_dir, mode, *flags = sys.argv[1:]
    rank = MPI.COMM_WORLD.Get_rank()
    if mode == "unreadable":
        outcome = unreadable(run_dir)
    else:
        outcome = runpy.run_path(str(ROOT / "run" / "pretrain.py"))["main"](flags)
    (Path(out_dir) / f"rank{rank}").write_text(str(outcome))
    sys.exit(outcome if isinstance(outcome, int) else 0)
