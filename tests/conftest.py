"""Shared pytest fixtures.

``run_mpi`` spawns ``mpirun -n N python ...`` with one BLAS/Numba thread per
rank and a hard timeout, so a hang fails the test instead of the CI run.
"""
import os
import shutil
import site
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
    """Path of ``mpirun``: the ``mpich`` extra's, next to the interpreter (of the venv, or of
    the Python it was made from), before any other on the PATH.

    A system MPI's ``/usr/bin/mpirun`` (CI installs Debian's Open MPI) must not launch
    tests whose mpi4py loads the mpich wheel's library: MPICH aborts under Open MPI's
    PMIx.  With no launcher next to Python (a cluster install), the PATH's is used.
    """
    folders = [Path(sys.executable).parent]
    if sys.base_prefix in site.PREFIXES:   # a venv that sees the base Python's packages
        folders.append(Path(sys.base_prefix) / "bin")
    for folder in folders:
        candidate = folder / "mpirun"
        if candidate.exists():
            return str(candidate)
    exe = shutil.which("mpirun") or shutil.which("mpiexec")
    if exe is None:
        raise RuntimeError('mpirun not found: install the project with its mpich extra '
                           '(pip install -e ".[mpich,test]") or load the site\'s MPI')
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
