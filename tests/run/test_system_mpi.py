"""The system-MPI path: Debian's Open MPI (``apt-get install openmpi-bin``, as ``.ci/run``
does) launching run/pretrain.py, as a cluster's ``mpiexec`` would.

The test environment has the mpich extra installed too, so mpi4py would load the
mpich wheel's library first; ``MPI4PY_LIBMPI=libmpi.so.40`` (Open MPI's soname,
found by the dynamic loader) makes it load the system's.  A cluster install without
the mpich extra needs no variable: the site's libmpi is the only one.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SINGLE_THREAD_ENV, mpirun_executable

OPENMPI = shutil.which("mpirun.openmpi")
pytestmark = pytest.mark.skipif(
    OPENMPI is None, reason="mpirun.openmpi not found: Debian's Open MPI is not installed "
                            "(apt-get install openmpi-bin; .ci/run installs it)")

PRETRAIN = ROOT / "run" / "pretrain.py"
COMMON = ["--model", "vit-nano", "--data", "random", "--dtype", "float64", "--micro-batch", "4",
          "--global-batch", "16", "--steps", "3", "--warmup", "1", "--lr", "1e-2",
          "--random-samples", "64", "--threads", "1"]
OPENMPI_ENV = {**SINGLE_THREAD_ENV, "MPI4PY_LIBMPI": "libmpi.so.40",
               # containers often forbid the cross-memory-attach shared-memory path
               "OMPI_MCA_btl_vader_single_copy_mechanism": "none"}


def _openmpi(n, args, timeout=180):
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []   # CI runs as root
    return subprocess.run([OPENMPI, *root, "--oversubscribe", "-n", str(n), sys.executable,
                           *map(str, args)], cwd=ROOT, env={**os.environ, **OPENMPI_ENV},
                          capture_output=True, text=True, timeout=timeout)


def _train(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[0]), [r for r in map(json.loads, lines[1:]) if r["kind"] == "train"]


def test_dp2_and_tp2_under_open_mpi_equal_one_process(tmp_path):
    single = subprocess.run([sys.executable, PRETRAIN, *COMMON, "--out", tmp_path / "one"],
                            cwd=ROOT, env={**os.environ, **SINGLE_THREAD_ENV},
                            capture_output=True, text=True, timeout=180)
    assert single.returncode == 0, single.stderr[-3000:]
    _, one = _train(tmp_path / "one")
    for name, layout in (("dp2", []), ("tp2", ["--tp", "2"])):
        proc = _openmpi(2, [PRETRAIN, *COMMON, *layout, "--out", tmp_path / name])
        assert proc.returncode == 0, f"{name}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        first = proc.stdout.splitlines()[0]
        assert first.startswith("MPI: Open MPI v") and first.endswith("; world size 2"), first
        header, two = _train(tmp_path / name)
        assert header["mpi_library"].startswith("Open MPI v") and header["world_size"] == 2
        assert (header["dp"], header["tp"]) == ((2, 1) if name == "dp2" else (1, 2))
        assert len(two) == len(one) == 3
        np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one],
                                   rtol=1e-10, atol=0, err_msg=name)
        np.testing.assert_allclose([r["grad_norm"] for r in two],
                                   [r["grad_norm"] for r in one], rtol=1e-10, err_msg=name)


def test_open_mpi_library_under_another_launcher_is_refused_on_every_task(tmp_path):
    """The singleton trap as it happens: the site's library under another MPI's launcher
    (here the mpich extra's hydra ``mpirun -n 2``), so each task is a world of 1."""
    hydra = mpirun_executable()
    if "openmpi" in os.path.realpath(hydra):
        pytest.skip(f"no launcher of another MPI: {hydra} is Open MPI's")
    out = tmp_path / "out"
    proc = subprocess.run([hydra, "-n", "2", sys.executable, PRETRAIN, *COMMON, "--out", out],
                          cwd=ROOT, env={**os.environ, **OPENMPI_ENV}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("pretrain.py: error: launched as one of 2 tasks, but this "
                             "process is alone in an MPI world of 1.") == 2, proc.stderr
    assert proc.stderr.count("launcher: PMI_SIZE=2") == 2
    assert proc.stderr.count("mpi4py loaded: Open MPI v") == 2
    assert proc.stderr.count("Fix: ") == 2
    assert not out.exists() and "MPI: " not in proc.stdout
