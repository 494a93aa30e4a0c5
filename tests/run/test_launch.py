"""Which MPI ran, the singleton trap, and logs that read well when redirected.

The system-MPI (Open MPI) side of the same contract is ``test_system_mpi.py``.
"""
import importlib.util
import io
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, SINGLE_THREAD_ENV, mpi_command
from minivit.parallel.runtime.launch import (launcher_tasks, library_path, library_version,
                                             singleton_trap_message)
from minivit.parallel.runtime.runlog import RunLog

PRETRAIN = ROOT / "run" / "pretrain.py"
NANO = ["--model", "vit-nano", "--data", "random", "--micro-batch", "4", "--warmup", "1",
        "--random-samples", "64", "--threads", "1"]


# ------------------------------------------------------------ launcher_tasks (pure)
@pytest.mark.parametrize("environ", [
    {},                                             # plain python
    {"PMI_SIZE": "1", "PMI_RANK": "0"},             # mpirun -n 1 (MPICH hydra)
    {"OMPI_COMM_WORLD_SIZE": "1", "PMIX_RANK": "0"},  # mpirun -n 1 (Open MPI)
    {"SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "1", "SLURM_PROCID": "0"},  # srun -n 1
    {"SLURM_NTASKS": "8", "SLURM_PROCID": "0"},     # the batch script / salloc shell itself
    {"PMI_SIZE": "two", "OMPI_COMM_WORLD_SIZE": ""},  # not integers: ignored
])
def test_one_task_launches_are_not_a_trap(environ):
    assert launcher_tasks(environ) is None


@pytest.mark.parametrize("environ, tasks, names", [
    ({"OMPI_COMM_WORLD_SIZE": "4"}, 4, ["OMPI_COMM_WORLD_SIZE=4"]),
    ({"PMI_SIZE": "2", "PMI_RANK": "1"}, 2, ["PMI_SIZE=2"]),
    ({"MV2_COMM_WORLD_SIZE": "3"}, 3, ["MV2_COMM_WORLD_SIZE=3"]),
    ({"SLURM_STEP_NUM_TASKS": "16", "SLURM_NTASKS": "16"}, 16, ["SLURM_STEP_NUM_TASKS=16"]),
    ({"PMIX_RANK": "5"}, 6, ["PMIX_RANK=5"]),       # a PMIx rank: at least rank + 1 tasks
    # srun -n 4 around mpirun -n 1: four copies of a one-process run
    ({"SLURM_STEP_NUM_TASKS": "4", "OMPI_COMM_WORLD_SIZE": "1"}, 4,
     ["SLURM_STEP_NUM_TASKS=4"]),
    ({"PMI_SIZE": "2", "SLURM_STEP_NUM_TASKS": "8"}, 8, ["PMI_SIZE=2", "SLURM_STEP_NUM_TASKS=8"]),
])
def test_multi_task_launches_are_seen(environ, tasks, names):
    found, evidence = launcher_tasks(environ)
    assert found == tasks
    assert [part.split(",")[0] for part in evidence.split("; ")] == names


def test_library_helpers(tmp_path):
    version = library_version()
    assert version and "\x00" not in version and "\n" not in version
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 12 /usr/lib/libc.so.6\n"
                    "7f02-7f03 r-xp 00000000 08:01 13 /opt/mpi/lib/libmpi.so.40.30.4\n")
    assert library_path(str(maps)) == "/opt/mpi/lib/libmpi.so.40.30.4"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 12 /usr/lib/libc.so.6\n")
    assert library_path(str(maps)) is None
    assert library_path(str(tmp_path / "absent")) is None
    text = singleton_trap_message(2, "PMI_SIZE=2, set by a PMI launcher", "Some MPI 1.0")
    assert "one of 2 tasks" in text and "PMI_SIZE=2" in text and "Some MPI 1.0" in text
    assert "Fix:" in text and "On a cluster" in text


# ------------------------------------------------------------ the trap, end to end
@pytest.mark.parametrize("variable", ["PMI_SIZE", "SLURM_STEP_NUM_TASKS"])
def test_world_of_one_under_a_two_task_launch_exits_2_before_writing(variable, tmp_path):
    """The environment of a 2-task launch around a process whose MPI made a world of 1."""
    out = tmp_path / "out"
    env = {**os.environ, **SINGLE_THREAD_ENV, variable: "2"}
    proc = subprocess.run([sys.executable, PRETRAIN, *NANO, "--steps", "1", "--out", out],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "pretrain.py: error: launched as one of 2 tasks" in proc.stderr
    assert f"launcher: {variable}=2" in proc.stderr
    assert f"mpi4py loaded: {library_version()}" in proc.stderr
    assert "Fix:" in proc.stderr and proc.stdout == ""
    assert not out.exists()


# ------------------------------------------------------------ the first line and logs
def test_redirected_log_names_the_mpi_has_no_carriage_return_and_a_line_per_logged_step(
        tmp_path):
    """``mpirun -n 2 pretrain.py > log 2>&1``: what a batch job writes."""
    out, log = tmp_path / "out", tmp_path / "job.log"
    with open(log, "wb") as f:
        proc = subprocess.run(mpi_command(2, [PRETRAIN, *NANO, "--steps", "5", "--log-every",
                                              "2", "--out", out]),
                              cwd=ROOT, env={**os.environ, **SINGLE_THREAD_ENV}, stdout=f,
                              stderr=subprocess.STDOUT, timeout=180)
    text = log.read_bytes()
    assert proc.returncode == 0, text[-3000:]
    assert b"\r" not in text
    lines = text.decode().splitlines()
    assert lines[0].startswith(f"MPI: {library_version()}")
    assert lines[0].endswith("; world size 2")
    steps = [int(ln.split()[1].split("/")[0]) for ln in lines if ln.startswith("step ")]
    assert steps == [1, 2, 4, 5]       # every --log-every 2, the first and the last
    header = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert header["kind"] == "header" and header["world_size"] == 2
    assert header["mpi_library"] == lines[0][len("MPI: "):-len("; world size 2")]


def test_mpirun_n_1_is_not_a_trap(run_mpi, tmp_path):
    proc = run_mpi(1, [PRETRAIN, *NANO, "--steps", "1", "--out", tmp_path / "one"],
                   timeout=120)
    assert proc.stdout.splitlines()[0].endswith("; world size 1")


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def _log_three_steps(stream, capsys):
    log = RunLog(True, None, steps=3, peak=1e9, log_every=2, stream=stream)
    for step in (1, 2, 3):
        log.train({"step": step, "epoch": 0, "loss": 1.0, "accuracy": 0.5, "lr": 1e-3,
                   "images_per_s": 10.0, "gflops_per_s": 0.1, "comm_bytes": 0})
    log.close()
    return capsys.readouterr().out


def test_bar_only_on_a_terminal(capsys):
    tty, pipe = _Stream(True), _Stream(False)
    printed = _log_three_steps(tty, capsys)
    assert "\r" in tty.getvalue() and "3/3" in tty.getvalue()     # the bar's frames
    assert "step     1/3" in printed and "step     3/3" in printed
    printed = _log_three_steps(pipe, capsys)
    assert pipe.getvalue() == ""                                   # no bar at all
    assert "\r" not in printed
    assert [ln.split()[1] for ln in printed.splitlines()] == ["1/3", "2/3", "3/3"]


def test_make_dataset_redirected_prints_a_line_per_shard(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_dataset", ROOT / "run" / "make_dataset.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "newton"
    code = script.main(["--kind", "newton", "--classes", "3", "--per-class", "2", "--size",
                        "16", "--shard-size", "2", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "\r" not in captured.out + captured.err
    wrote = [ln for ln in captured.out.splitlines() if ln.startswith("rank 0/1: wrote ")]
    assert len(wrote) == 3 and wrote[-1].split("(")[1].startswith("3/3 shards of rank 0")


def test_default_threads_divide_the_node_by_its_ranks():
    from mpi4py import MPI
    from minivit.parallel.runtime.launch import default_threads
    # this process is a world of 1: one rank on its node gets every core
    assert default_threads(MPI.COMM_WORLD) == max(1, os.cpu_count() or 1)


def test_no_mpi_library_names_the_fix():
    """``pip install -e .`` without the mpich extra on a machine with no MPI."""
    env = {**os.environ, "MPI4PY_LIBMPI": "/nonexistent/libmpi.so"}
    proc = subprocess.run([sys.executable, "-c", "import minivit.parallel.comm"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    last = proc.stderr[proc.stderr.index("RuntimeError: "):]
    assert last.startswith("RuntimeError: mpi4py found no MPI library.")
    assert 'pip install -e ".[mpich]"' in last and "MPI4PY_LIBMPI" in last
    assert "/nonexistent/libmpi.so" in last      # mpi4py's own list of what it tried


def test_two_checkouts_mixed_are_named(tmp_path):
    from pathlib import Path
    from minivit.parallel.runtime.launch import _package_dir, mixed_checkout_warning
    # this checkout: both packages come from the same folder, no warning
    assert _package_dir("minivit") == _package_dir("minivit.parallel")
    assert mixed_checkout_warning(_package_dir("minivit"), _package_dir("minivit.parallel")) == ""
    line = mixed_checkout_warning(Path("/work/trial"), Path("/work/main"))
    assert "minivit is imported from /work/trial but minivit.parallel from /work/main" in line
    assert line.startswith("[minivit rank 0] warning:") and "mpirun -n N" in line
