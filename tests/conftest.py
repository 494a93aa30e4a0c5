"""Shared pytest fixtures.

``run_mpi`` spawns ``mpirun -n N python ...`` with one BLAS/Numba thread per
rank and a hard timeout, so a hang fails the test instead of the CI run.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# tests live in sub-folders by package (model, parallel, data, run, reliability,
# architecture); their shared helpers and MPI drivers in support/
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

# Tests run tiny models; oversubscribed ranks must not fight over BLAS threads.
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}


def mpirun_executable():
    """Path of ``mpirun`` (the ``mpich`` wheel installs it next to python)."""
    exe = shutil.which("mpirun") or shutil.which("mpiexec")
    if exe is None:
        candidate = Path(sys.executable).with_name("mpirun")
        if candidate.exists():
            exe = str(candidate)
    if exe is None:
        raise RuntimeError("mpirun not found: install the project (pip install -e .) "
                           "which brings the mpich wheel")
    return exe


def mpi_command(n, args):
    """The argv list for ``mpirun -n n python args...`` (oversubscription allowed)."""
    return [mpirun_executable(), "-n", str(n), sys.executable, *map(str, args)]


@pytest.fixture
def run_mpi():
    """Run ``python ARGS`` under ``mpirun -n N``; returns ``CompletedProcess``.

    ``timeout`` (seconds) kills the whole job: a hang is a test failure.
    """
    def _run(n, args, timeout=300, env=None, check=True, cwd=ROOT):
        full_env = {**os.environ, **SINGLE_THREAD_ENV, **(env or {})}
        proc = subprocess.run(mpi_command(n, args), cwd=cwd, env=full_env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"mpirun -n {n} {' '.join(map(str, args))} exited {proc.returncode}\n"
                f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
        return proc
    return _run
