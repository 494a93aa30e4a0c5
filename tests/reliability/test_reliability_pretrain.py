"""run/pretrain.py under signals (2 ranks, vit-nano, float32):

* SIGTERM to ONE rank mid-run: the ranks agree at the next step boundary, a
  checkpoint of that step is written (off the --save-every schedule), every
  rank exits 0; --resume then reproduces the uninterrupted run's losses bitwise.
* SIGKILL of one rank mid-run: the job ends (no hang), every step file left
  verifies and the newest loads completely.
* NaN steps under --skip-nonfinite 3: skipped, logged, and the run ends 0 (the
  budget running out is tested in-process in test_reliability_nonfinite.py).
"""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, SINGLE_THREAD_ENV, mpi_command
from minivit.checkpoint import CheckpointReader, latest_valid_checkpoint

PRETRAIN = str(ROOT / "run" / "pretrain.py")
STEPS = 60
COMMON = ["--model", "vit-nano", "--data", "random", "--micro-batch", "4", "--global-batch",
          "16", "--steps", str(STEPS), "--warmup", "2", "--lr", "3e-3", "--random-samples",
          "64", "--threads", "1", "--no-progress", "--log-every", "1000", "--holdout", "0",
          "--zero", "1"]


def _records(out):
    path = Path(out) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(ln) for ln in lines if ln.strip() and '"kind":"train"' in
            ln.replace(" ", "")]


def _losses(out):
    return {r["step"]: r["loss"] for r in _records(out)}


def _rank_pid(out, rank):
    """pid of the python process of MPI rank ``rank`` running with ``--out out``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(out).encode() in cmd and f"PMI_RANK={rank}".encode() in env:
            return int(entry.name)
    return None


def _start_and_signal(args, out, sig, after_step, rank=1):
    """Start ``mpirun -n 2 pretrain args``; send ``sig`` to ``rank`` after ``after_step``
    is logged; returns (CompletedProcess-like tuple rc, stdout, stderr, seconds to end)."""
    proc = subprocess.Popen(mpi_command(2, [PRETRAIN, *args]), cwd=ROOT,
                            env={**os.environ, **SINGLE_THREAD_ENV}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if any(r["step"] >= after_step for r in _records(out)):
                break
            time.sleep(0.02)
        pid = _rank_pid(out, rank)
        assert pid is not None and proc.poll() is None, "run ended before the signal"
        os.kill(pid, sig)
        sent = time.monotonic()
        stdout, stderr = proc.communicate(timeout=60)
        return proc.returncode, stdout, stderr, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Losses of the uninterrupted run (dp 2, ZeRO-1), steps 1..STEPS."""
    ref = tmp_path_factory.mktemp("ref")
    proc = subprocess.run(mpi_command(2, [PRETRAIN, *COMMON, "--out", ref]), cwd=ROOT,
                          env={**os.environ, **SINGLE_THREAD_ENV}, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = _losses(ref)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


def test_sigterm_checkpoints_exits_0_and_resumes_bitwise(run_mpi, reference, tmp_path):

    # --save-every -1 (never): the preemption checkpoint is written anyway
    pre = tmp_path / "pre"
    rc, stdout, stderr, seconds = _start_and_signal(
        [*COMMON, "--save-every", "-1", "--out", pre], pre, signal.SIGTERM, 2)
    assert rc == 0, stderr[-3000:]
    assert seconds < 30
    done = max(_losses(pre))
    assert 2 <= done < STEPS
    assert f"preempted by a signal on another rank after step {done}" in stdout, stdout
    assert [p.name for p in (pre / "ckpt").iterdir()] == [f"step_{done:07d}.h5"]
    with CheckpointReader(pre / "ckpt" / f"step_{done:07d}.h5") as reader:
        reader.verify()
        assert reader.step == done

    run_mpi(2, [PRETRAIN, *COMMON, "--save-every", "-1", "--resume", pre],
            timeout=180)
    resumed = _losses(pre)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert resumed == reference                          # bitwise, every step


def test_sigkill_of_one_rank_ends_job_and_newest_complete_checkpoint_loads(tmp_path):
    run = tmp_path / "kill"
    args = [*COMMON, "--save-every", "1", "--keep-last", "3", "--out", run]
    rc, _, stderr, seconds = _start_and_signal(args, run, signal.SIGKILL, 3)
    assert rc != 0
    assert seconds < 30, f"job took {seconds:.1f} s to end after the SIGKILL"
    newest = latest_valid_checkpoint(run / "ckpt")
    assert newest is not None
    # every step_*.h5 present verifies (a killed save leaves only a temporary file,
    # which is never taken for a checkpoint); the newest loads completely
    steps = []
    for path in sorted((run / "ckpt").glob("step_*.h5")):
        with CheckpointReader(path) as reader:
            reader.verify()
            steps.append(reader.step)
    assert newest.name == f"step_{max(steps):07d}.h5"
    assert max(steps) >= 2
    with CheckpointReader(newest) as reader:
        for name in reader.names("params"):
            reader.read("params", name)          # sha256 of each dataset checked


def test_skip_nonfinite_skips_and_logs(run_mpi, tmp_path):
    out = tmp_path / "skip"
    args = [a for a in COMMON]
    args[args.index("--steps") + 1] = "4"
    args[args.index("--lr") + 1] = "1e30"          # step 1 overflows the weights
    proc = run_mpi(2, [PRETRAIN, *args, "--skip-nonfinite", "3", "--save-every", "-1",
                       "--out", out], timeout=120, check=False)
    # steps 2, 3, 4 are non-finite and skipped: 3 of 3 allowed, the run ends normally
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _records(out)
    assert [r.get("skipped", False) for r in records] == [False, True, True, True]
    assert [r.get("skipped_total") for r in records[1:]] == [1, 2, 3]
    assert "step 2: loss nan grad norm nan, update skipped (1 of --skip-nonfinite 3)" \
        in proc.stdout
