"""Abort the whole MPI job when any rank raises.

Without this, an uncaught exception ends one rank while the others wait
forever in their next collective: the job hangs instead of failing.  The
guard replaces ``sys.excepthook`` (and ``threading.excepthook``, for loader
threads) with a hook that

1. prints ``[minivit rank R (tp .., dp .., pp ..)]`` and the traceback to stderr,
2. flushes stdout and stderr (MPI_Abort does not flush Python buffers),
3. calls ``MPI_Abort(world, 1)``, which kills every rank of the job.

Usage (the first lines of a script run under ``mpirun``)::

    guard = install_guard(MPI.COMM_WORLD)
    grid = ProcessGrid(MPI.COMM_WORLD, dp=...)
    guard.label = grid.coords        # richer prefix once the grid exists

``usage_from_rank0(parser, comm)`` is the other end of the same contract: a
bad flag is not an exception but the same ``parser.error`` on every rank,
printed once (rank 0) with every rank exiting 2.
"""
import os
import sys
import threading
import time
import traceback

# seconds between writing the report and MPI_Abort (see AbortGuard.__call__)
FORWARD_GRACE_S = 1.0


class AbortGuard:
    """Excepthook that prints the rank-prefixed traceback and aborts ``comm``.

    Attributes
    ----------
    label : text after ``[minivit `` in the prefix; starts as ``"rank R"`` and
        may be replaced (e.g. by ``ProcessGrid.coords``).
    errorcode : exit code handed to ``MPI_Abort`` (default 1).
    """

    def __init__(self, comm, errorcode=1):
        self.comm = comm
        self.errorcode = errorcode
        self.label = f"rank {comm.Get_rank()}"
        self._previous = None

    def report(self, exc_type, exc, tb):
        """Write the prefixed traceback to stderr in one write, after flushing stdout."""
        prefix = f"[minivit {self.label}] "
        lines = "".join(traceback.format_exception(exc_type, exc, tb)).splitlines()
        text = "".join(f"{prefix}{line}\n"
                       for line in ["uncaught exception, aborting all ranks", *lines])
        sys.stdout.flush()
        sys.stderr.flush()
        # One unbuffered write of the whole report: split writes were seen to
        # lose the traceback when MPI_Abort killed the job between them.
        try:
            fd = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):    # a replaced stream (e.g. pytest capture)
            sys.stderr.write(text)
            sys.stderr.flush()
            return
        data = text.encode("utf-8", "replace")
        while data:
            data = data[os.write(fd, data):]

    def __call__(self, exc_type, exc, tb):
        self.report(exc_type, exc, tb)
        if issubclass(exc_type, KeyboardInterrupt) and self.comm.Get_size() == 1:
            return
        # mpirun's proxies forward stderr asynchronously and MPI_Abort kills
        # them too; a short pause lets this rank's report reach the terminal.
        time.sleep(FORWARD_GRACE_S)
        self.comm.Abort(self.errorcode)

    def _thread_hook(self, args):
        if args.exc_type is SystemExit:
            return
        self(args.exc_type, args.exc_value, args.exc_traceback)

    def install(self):
        """Install as ``sys.excepthook`` and ``threading.excepthook``; returns self."""
        self._previous = (sys.excepthook, threading.excepthook)
        sys.excepthook = self
        threading.excepthook = self._thread_hook
        return self

    def uninstall(self):
        """Restore the hooks that were active before :meth:`install`."""
        if self._previous is not None:
            sys.excepthook, threading.excepthook = self._previous
            self._previous = None


def usage_from_rank0(parser, comm):
    """Let only rank 0 of ``comm`` print ``parser``'s usage, help and error text; returns it.

    Under ``mpirun -n N`` every rank parses the same arguments and reaches the
    same ``parser.error``, so the terminal got N copies of the usage and the
    message.  On the other ranks ``print_usage``/``print_help`` print nothing
    and ``exit`` drops its message; every rank still exits with argparse's
    status (2 for an error, 0 for ``--help``) on its own: no collective, no
    ``MPI_Abort``, nothing to wait for.  Only for checks that give the same
    verdict on every rank; a rank-local error would then be silent off rank 0.
    """
    if comm.Get_rank() != 0:
        parser.print_usage = lambda file=None: None
        parser.print_help = lambda file=None: None
        parser.exit = lambda status=0, message=None: sys.exit(status)
    return parser


def install_guard(comm, errorcode=1):
    """Create an :class:`AbortGuard` on ``comm`` (usually ``MPI.COMM_WORLD``) and install it."""
    return AbortGuard(comm, errorcode).install()
