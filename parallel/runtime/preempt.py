"""Graceful preemption: SIGTERM / SIGUSR1 end the run at a step boundary with a checkpoint.

Batch schedulers warn a job before killing it: Slurm sends SIGTERM (and
``--signal=USR1@T`` sends SIGUSR1 T seconds before the limit), PBS sends
SIGTERM.  The signal may reach only some ranks (a node-local ``kill``, or
``scancel --signal`` to one step), and a rank that stopped alone would leave
the others waiting in a collective.  So:

1. the signal handler only sets a local flag (async-signal-safe: no I/O, no MPI);
2. after every optimizer step all ranks all-reduce MAX of their flag on the
   world communicator (:meth:`Preemption.agree`, one 8-byte all-reduce),
   so every rank sees the same verdict at the same step;
3. the caller then writes a checkpoint from all ranks and exits 0; ``--resume``
   continues exactly from it.

Ctrl-C (SIGINT, in ``INTERACTIVE_SIGNALS``) takes the same path: the first
one asks for the checkpoint and a clean exit.  Users press Ctrl-C twice to
mean "stop now", so the first one also puts back the default action of
SIGINT, and a second one ends the process at once, without a checkpoint.  Under
``mpirun`` the launcher itself forwards the first Ctrl-C to every rank and
force-aborts the job on the second.

The agreement is posted *after* the step's ledger entries are summarised, so
it does not disturb the per-step ``--audit`` comparison with ``cost.py``.
"""
import os
import signal

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# for runs started from a terminal: Ctrl-C as well
INTERACTIVE_SIGNALS = DEFAULT_SIGNALS + (signal.SIGINT,)
CTRL_C_HINT = (b"[minivit] Ctrl-C: stopping after this step with a checkpoint; "
               b"press Ctrl-C again to abort without one\n")


class Preemption:
    """Signal flag plus the per-step collective agreement.

    Parameters
    ----------
    world : world :class:`~minivit.parallel.comm.Communicator` (every rank of the job).
    signals : signal numbers to catch (default SIGTERM and SIGUSR1;
        ``INTERACTIVE_SIGNALS`` adds SIGINT, whose second delivery ends the
        process at once).

    Attributes
    ----------
    received : signal number this rank caught, or None.
    stopped : True once :meth:`agree` found that some rank caught a signal.
    step : the step (1-based count) at which the ranks agreed to stop, or None.

    ``install()`` must run in the main thread (Python's ``signal`` rule).
    """

    def __init__(self, world, signals=DEFAULT_SIGNALS):
        self.world = world
        self.signals = tuple(signals)
        self.received = None
        self.stopped = False
        self.step = None
        self._previous = {}

    def _handler(self, signum, frame):
        # Only a flag: the step in progress finishes, the collective decides.
        if self.received is None:
            self.received = signum
        if signum == signal.SIGINT:
            # The kernel's default action, not a Python handler, for the second
            # Ctrl-C: a Python handler would only run once a long C call (a GEMM, an
            # MPI wait) returns, and "press twice" must stop at once.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            if self.world.rank == 0:
                os.write(2, CTRL_C_HINT)   # not print(): it may interrupt a print

    def install(self):
        """Install the handlers; returns self."""
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def uninstall(self):
        """Restore the handlers active before :meth:`install`."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def __enter__(self):
        return self.install()

    def __exit__(self, *exc):
        self.uninstall()

    def agree(self, step):
        """Collective over ``world``: True on every rank if any rank caught a signal.

        step : the number of optimizer steps completed (recorded in ``self.step``).
        """
        flag = 0.0 if self.received is None else 1.0
        if self.world.allreduce_scalar(flag, "max") > 0:
            self.stopped, self.step = True, step
        return self.stopped

    def describe(self):
        """One line for the log: which signal stopped the run at which step."""
        if not self.stopped:
            return "not preempted"
        if self.received == signal.SIGINT:
            return f"interrupted by SIGINT (Ctrl-C) after step {self.step}"
        name = signal.Signals(self.received).name if self.received else "a signal on another rank"
        return f"preempted by {name} after step {self.step}"
