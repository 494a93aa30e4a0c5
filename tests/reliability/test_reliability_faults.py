"""Injected faults end the whole MPI job promptly and loudly; the watchdog and the
preemption flag work in-process.

The mpirun cases use ``tests/support/fault_driver.py`` (3 ranks: rank 0, the middle
rank 1 and the last rank 2 fail in turn).  Each must end every rank with a
non-zero exit within 30 s and print the failing rank's traceback prefixed
with its grid coordinates.  The pipeline case runs pp = 3 stages (so the
prefix shows "pp k"); the others dp = 3.
"""
import io
import os
import signal
import threading
import time

import pytest

from conftest import ROOT

DRIVER = str(ROOT / "tests" / "support" / "fault_driver.py")
PHASES = {"forward": "injected fault in forward on rank {k}",
          "backward": "injected fault in backward on rank {k}",
          "gather": "injected fault in the ZeRO-3 all-gather on rank {k}",
          "pipesend": "injected fault in a pipeline send on rank {k}",
          "loader": "injected fault in the loader (sample"}


def _run_fault(run_mpi, spec):
    start = time.monotonic()
    proc = run_mpi(3, [DRIVER], timeout=90, check=False, env={"MINIVIT_FAULT": spec})
    return proc, time.monotonic() - start


@pytest.mark.parametrize("phase", sorted(PHASES))
@pytest.mark.parametrize("k", [0, 1, 2])
def test_exception_on_rank_k_ends_the_job(run_mpi, phase, k):
    proc, elapsed = _run_fault(run_mpi, f"{phase}:{k}")
    coords = f"dp 0, pp {k}" if phase == "pipesend" else f"dp {k}, pp 0"
    prefix = f"[minivit rank {k} (tp 0, {coords})] "
    assert proc.returncode != 0
    assert elapsed < 30, f"job took {elapsed:.1f} s to end"
    assert prefix + "Injected: " + PHASES[phase].format(k=k) in proc.stderr, proc.stderr[-3000:]
    assert prefix + "Traceback (most recent call last):" in proc.stderr
    assert "finished without the fault firing" not in proc.stdout


def test_driver_without_fault_finishes(run_mpi):
    proc, _ = _run_fault(run_mpi, "none:-1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("finished without the fault firing") == 3


def test_rank_sleeping_past_timeout_is_reported_and_aborts(run_mpi):
    # rank 0 sleeps after step 1; ranks 1 and 2 block in step 2's gradient all-reduce
    proc, elapsed = _run_fault(run_mpi, "sleep:0:2")
    assert proc.returncode != 0
    assert elapsed < 30, f"job took {elapsed:.1f} s to end"   # not the 60 s sleep
    err = proc.stderr
    assert "[minivit watchdog rank 0 (tp 0, dp 0, pp 0)] no progress for" in err, err[-3000:]
    assert "not inside a collective" in err
    waiting = [line for line in err.splitlines()
               if "this rank is waiting in allreduce on group 'dp'" in line]
    assert waiting, err[-3000:]
    assert "ledger entries (op, group, bytes, seconds):" in err
    assert "    allreduce dp 32 " in err           # step 1's loss/top-1 all-reduce, kept
    assert "finished without the fault firing" not in proc.stdout


# ---------------------------------------------------------------- in-process units
class _Ledger:
    def __init__(self):
        self.in_flight, self.progress, self.recent = None, 0, []


class _Abort:
    def __init__(self):
        self.called = threading.Event()
        self.code = None

    def Abort(self, code):  # noqa: N802 - mpi4py's name
        self.code = code
        self.called.set()


def test_watchdog_fires_and_names_the_collective():
    from minivit.parallel.comm import Entry
    from minivit.parallel.runtime.watchdog import Watchdog
    ledger, abort, out = _Ledger(), _Abort(), io.StringIO()
    ledger.recent = [Entry("allgather", "dp", 64, 0.01)]
    ledger.in_flight = ("reduce_scatter", "dp", 128, time.monotonic())
    dog = Watchdog(0.2, ledger, abort, label="rank 3 (tp 0, dp 3, pp 0)", grace=0.0,
                   stream=out).start()
    assert abort.called.wait(5.0), "watchdog never fired"
    dog.stop()
    text = out.getvalue()
    assert abort.code == 1 and dog.fired
    assert text.startswith("[minivit watchdog rank 3 (tp 0, dp 3, pp 0)] no progress for")
    assert "waiting in reduce_scatter on group 'dp' (128 bytes)" in text
    assert "    allgather dp 64 0.0100" in text


def test_watchdog_quiet_while_progress_is_made():
    from minivit.parallel.runtime.watchdog import Watchdog
    ledger, abort = _Ledger(), _Abort()
    with Watchdog(0.3, ledger, abort, grace=0.0, stream=io.StringIO()) as dog:
        for _ in range(12):          # 1.2 s in total, 4x the timeout, with progress
            time.sleep(0.1)
            if _ % 2:
                dog.beat()
            else:
                ledger.progress += 1
    assert not abort.called.is_set() and not dog.fired


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), "5", True])
def test_watchdog_rejects_bad_timeout(bad):
    from minivit.parallel.runtime.watchdog import Watchdog
    with pytest.raises(ValueError, match="timeout="):
        Watchdog(bad, _Ledger(), _Abort())


def test_preemption_flag_and_agreement():
    from mpi4py import MPI
    from minivit.parallel.comm import Communicator, Ledger
    from minivit.parallel.runtime.preempt import Preemption
    world = Communicator(MPI.COMM_SELF, "world", Ledger())
    before = signal.getsignal(signal.SIGUSR1)
    with Preemption(world) as pre:
        assert not pre.agree(1)
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)                         # the handler runs between bytecodes
        assert pre.received == signal.SIGUSR1
        assert pre.agree(2) and pre.step == 2
        assert pre.describe() == "preempted by SIGUSR1 after step 2"
    assert signal.getsignal(signal.SIGUSR1) == before
    assert [e.op for e in world.ledger.entries] == ["allreduce", "allreduce"]
