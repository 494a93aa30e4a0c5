"""Collective watchdog: a job that stops making progress is reported and aborted.

A rank that dies without raising (a kernel OOM-kill of one process, a lost
node) or that blocks outside MPI (a stuck file system read) leaves the other
ranks waiting in their next collective for ever: MPI has no timeout.  This is
the failure mode NCCL's watchdog (``NCCL_TIMEOUT``/``TORCH_NCCL_*`` in
PyTorch, DeepSpeed's ``comm`` timeout) exists for.  Here a daemon thread per
rank holds a deadline on the monotonic clock; the deadline moves to
``now + timeout`` whenever the process makes progress, which is

* any call of the audited communicator starting or returning (the
  :class:`~minivit.parallel.comm.Ledger` bumps ``progress`` and records the
  call ``in_flight``), or
* an explicit :meth:`Watchdog.beat` (the training loop beats once per step).

When the deadline passes, the rank prints one report to stderr, e.g.::

    [minivit watchdog rank 0 (tp 0, dp 0, pp 0)] no progress for 2.0 s (timeout 2.0 s):
        waiting in allreduce on group 'dp' (16 bytes) for 2.0 s; last ledger entries: ...

waits a short grace period so that the other ranks' watchdogs (which expire
at about the same moment) print theirs too, and calls ``MPI_Abort``: every
rank ends with a non-zero exit.  It never waits for ever.

The timeout must exceed the longest stretch without a collective (about one
optimizer step of compute, plus a checkpoint write); it is off by default.

Usage (explicit objects, no global state)::

    dog = Watchdog(args.timeout, grid.ledger, MPI.COMM_WORLD, label=grid.coords).start()
    ...  # train; dog.beat() per step
    dog.stop()
"""
import sys
import threading
import time

LAST_ENTRIES = 5          # ledger entries quoted in the report


class Watchdog:
    """Abort the MPI job when this rank makes no progress for ``timeout`` seconds.

    Parameters
    ----------
    timeout : seconds (float > 0) without progress before the report and abort.
    ledger : the process's :class:`~minivit.parallel.comm.Ledger` (``grid.ledger``).
    abort_comm : mpi4py communicator whose ``Abort`` ends the job (``MPI.COMM_WORLD``),
        or any object with ``Abort(errorcode)``.
    label : text naming this rank in the report (``grid.coords``).
    errorcode : exit code handed to ``MPI_Abort``.
    grace : seconds between the report and the abort (lets the other ranks report);
        default ``min(2, timeout / 2)``.
    stream : where the report goes (default ``sys.stderr``).

    Raises ValueError for a timeout or grace that is not a positive finite number.
    """

    def __init__(self, timeout, ledger, abort_comm, *, label="rank ?", errorcode=1,
                 grace=None, stream=None):
        if not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
                and 0 < timeout < float("inf")):
            raise ValueError(f"timeout={timeout!r}: expected a positive number of seconds")
        grace = min(2.0, timeout / 2) if grace is None else grace
        if not 0 <= grace < float("inf"):
            raise ValueError(f"grace={grace!r}: expected >= 0 seconds")
        self.timeout, self.grace = float(timeout), float(grace)
        self.ledger, self.abort_comm = ledger, abort_comm
        self.label, self.errorcode = label, errorcode
        self.stream = stream
        self.fired = False
        self._beats = 0
        self._stop = threading.Event()
        self._thread = None

    def beat(self):
        """Signal progress outside the communicator (e.g. the end of a step)."""
        self._beats += 1

    def _marker(self):
        return (self._beats, self.ledger.progress)

    def start(self):
        """Start the daemon thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("watchdog already started")
        self._thread = threading.Thread(target=self._run, name="minivit-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop watching (the thread ends within one poll interval)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _run(self):
        # Poll a few times per timeout: the check reads two ints under the GIL, and
        # mpi4py releases the GIL while blocked in MPI, so this thread still runs.
        poll = min(0.5, self.timeout / 4)
        marker, deadline = self._marker(), time.monotonic() + self.timeout
        while not self._stop.wait(poll):
            now = time.monotonic()
            current = self._marker()
            if current != marker:
                marker, deadline = current, now + self.timeout
                continue
            if now >= deadline:
                self.fired = True
                self.report(now - deadline + self.timeout)
                if self._stop.wait(self.grace):
                    return            # stopped during the grace period: the job moved on
                self.abort_comm.Abort(self.errorcode)
                return

    def describe(self, stalled):
        """The report text (one string, several lines) for ``stalled`` seconds without progress."""
        head = (f"[minivit watchdog {self.label}] no progress for {stalled:.1f} s "
                f"(timeout {self.timeout:g} s), aborting the job")
        flight = self.ledger.in_flight
        if flight is not None:
            op, group, nbytes, since = flight
            where = (f"waiting in {op} on group '{group}' ({nbytes} bytes) for "
                     f"{time.monotonic() - since:.1f} s: a peer rank of that group has not "
                     "reached the same call")
        else:
            where = "not inside a collective (compute, data loading or I/O is stuck)"
        entries = list(self.ledger.recent)[-LAST_ENTRIES:]
        lines = [head, f"  this rank is {where}",
                 f"  last {len(entries)} ledger entries (op, group, bytes, seconds):"]
        lines += [f"    {e.op} {e.group} {e.bytes} {e.seconds:.4f}" for e in entries]
        if not entries:
            lines.append("    (none yet)")
        return "\n".join(lines)

    def report(self, stalled):
        stream = self.stream or sys.stderr
        stream.write(self.describe(stalled) + "\n")
        stream.flush()
        sys.stdout.flush()
