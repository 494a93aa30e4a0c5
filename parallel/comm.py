"""Instrumented communicator: every collective and point-to-point call of the
project goes through :class:`Communicator`, which records
``(op, group, bytes sent per rank, seconds)`` in an explicit :class:`Ledger`.

"Bytes sent per rank" follows the ring-algorithm accounting defined (once) in
``parallel/cost.py``, so that ledger totals can be compared *exactly* with the
closed forms there.  "seconds" is the wall time this rank was blocked in the
call; for a non-blocking call it is the time spent in ``wait()`` (the part the
overlap did not hide).

Buffers are NumPy arrays passed to mpi4py's buffer (upper-case) methods, so no
pickling happens; they must be C-contiguous (a strided view would be silently
copied by some MPI paths and not others), receive buffers must be writable.
"""
import time
from collections import deque, namedtuple

import numpy as np

from . import cost

# mpi4py's binary wheel loads the first libmpi it finds; without one, name the fix
NO_MPI_LIBRARY = ('mpi4py found no MPI library. On a laptop or one machine install the mpich '
                  'wheel: python -m pip install -e ".[mpich]"; on a cluster load the site\'s '
                  'MPI so its libmpi.so is found (e.g. module load openmpi), or set '
                  'MPI4PY_LIBMPI=/path/to/libmpi.so. See README.md, "On a cluster".')
try:
    from mpi4py import MPI
except RuntimeError as exc:     # mpi4py's "cannot load MPI library", with the paths tried
    raise RuntimeError(f"{NO_MPI_LIBRARY}\n{exc}") from None

Entry = namedtuple("Entry", "op group bytes seconds")

_OPS = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}


class Ledger:
    """Append-only list of :class:`Entry` records with per-step summaries.

    Use ``mark = ledger.mark()`` at the start of a step and
    ``ledger.summary(since=mark)`` at its end.
    """

    def __init__(self):
        self.entries = []
        # What this process is blocked in right now, and a counter bumped at every
        # call entry and exit: the watchdog (parallel/watchdog.py) reads both from
        # its own thread to tell "waiting in a collective" from "no progress".
        self.in_flight = None       # (op, group, bytes, time.monotonic() at entry) or None
        self.progress = 0
        self.recent = deque(maxlen=8)   # last entries, kept across clear() for reports

    def begin(self, op, group, nbytes):
        """Mark ``op`` on ``group`` as in flight (called by the wrapper on entry)."""
        self.in_flight = (op, group, int(nbytes), time.monotonic())
        self.progress += 1

    def end(self):
        """Clear the in-flight mark (called by the wrapper when the call returns)."""
        self.in_flight = None
        self.progress += 1

    def record(self, op, group, nbytes, seconds):
        entry = Entry(op, group, int(nbytes), float(seconds))
        self.entries.append(entry)
        self.recent.append(entry)
        return entry

    def mark(self):
        """Index of the next entry; pass it as ``since`` to look at later calls only."""
        return len(self.entries)

    def since(self, since=0):
        return self.entries[since:]

    def total_bytes(self, since=0, group=None, op=None):
        """Sum of bytes sent per rank over entries after ``since`` (optionally filtered)."""
        return sum(e.bytes for e in self.entries[since:]
                   if (group is None or e.group == group) and (op is None or e.op == op))

    def summary(self, since=0):
        """``{(op, group): {"count", "bytes", "seconds"}}`` over entries after ``since``."""
        out = {}
        for e in self.entries[since:]:
            row = out.setdefault((e.op, e.group), {"count": 0, "bytes": 0, "seconds": 0.0})
            row["count"] += 1
            row["bytes"] += e.bytes
            row["seconds"] += e.seconds
        return out

    def clear(self):
        self.entries.clear()


def _check_buffer(buf, what, writable):
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"{what}: expected a numpy.ndarray, got {type(buf).__name__}")
    if not buf.flags.c_contiguous:
        raise ValueError(
            f"{what}: non-contiguous array (shape {buf.shape}, strides {buf.strides}); "
            "expected a C-contiguous buffer (pass np.ascontiguousarray or a flat slice)")
    if writable and not buf.flags.writeable:
        raise ValueError(f"{what}: read-only array; expected a writable receive buffer")


class Request:
    """A pending non-blocking call; ``wait()`` completes it and books its seconds."""

    def __init__(self, mpi_request, ledger, op, group, nbytes):
        self._request = mpi_request
        self._ledger = ledger
        self._info = (op, group, nbytes)
        self.done = False

    def wait(self):
        if not self.done:
            start = time.perf_counter()
            self._ledger.begin(*self._info)
            self._request.Wait()
            self._ledger.end()
            self.done = True
            self._ledger.record(*self._info, time.perf_counter() - start)

    @staticmethod
    def wait_all(requests):
        for request in requests:
            request.wait()


class Communicator:
    """mpi4py intra-communicator wrapper that books every call in a ledger.

    Parameters
    ----------
    mpi_comm : mpi4py ``Intracomm``.
    name : group label written to the ledger (``"dp"``, ``"tp"``, ``"pp"``, ``"world"``).
    ledger : :class:`Ledger` shared by the communicators of one process.
    before_op : optional ``callable(op_name)`` run before every call; tests use
        it to inject delays on one rank.
    """

    def __init__(self, mpi_comm, name, ledger, before_op=None):
        self.comm = mpi_comm
        self.name = name
        self.ledger = ledger
        self.before_op = before_op
        self.rank = mpi_comm.Get_rank()
        self.size = mpi_comm.Get_size()

    def _run(self, op, nbytes, call):
        if self.before_op is not None:
            self.before_op(op)
        start = time.perf_counter()
        self.ledger.begin(op, self.name, nbytes)
        call()
        self.ledger.end()
        self.ledger.record(op, self.name, nbytes, time.perf_counter() - start)

    def _post(self, op, nbytes, call):
        if self.before_op is not None:
            self.before_op(op)
        return Request(call(), self.ledger, op, self.name, nbytes)

    # ----------------------------------------------------------- collectives
    def allreduce(self, buf, op="sum"):
        """In-place all-reduce of ``buf`` (any shape, C-contiguous); returns ``buf``.

        op : ``"sum"``, ``"max"`` or ``"min"``.  Bytes: ``2 (p-1) ceil(n/p) itemsize``.
        """
        _check_buffer(buf, "allreduce buffer", writable=True)
        mpi_op = self._mpi_op(op)
        nbytes = cost.allreduce_bytes(buf.size, self.size, buf.itemsize)
        self._run("allreduce", nbytes, lambda: self.comm.Allreduce(MPI.IN_PLACE, buf, mpi_op))
        return buf

    def iallreduce(self, buf, op="sum"):
        """Non-blocking in-place all-reduce; returns a :class:`Request`.

        ``buf`` must not be read or written until ``request.wait()``.
        """
        _check_buffer(buf, "iallreduce buffer", writable=True)
        mpi_op = self._mpi_op(op)
        nbytes = cost.allreduce_bytes(buf.size, self.size, buf.itemsize)
        return self._post("allreduce", nbytes,
                          lambda: self.comm.Iallreduce(MPI.IN_PLACE, buf, mpi_op))

    def allreduce_scalar(self, value, op="sum"):
        """All-reduce one float64 value; returns the reduced Python float."""
        box = np.array([value], dtype=np.float64)
        return float(self.allreduce(box, op)[0])

    def reduce_scatter(self, sendbuf, recvbuf):
        """Sum ``sendbuf`` (``p * k`` elements) over the group; rank r receives the
        r-th block of ``k`` elements in ``recvbuf`` (MPI_Reduce_scatter_block).

        Raises ValueError unless ``sendbuf.size == p * recvbuf.size`` and the
        dtypes match.  Bytes: ``(p-1) k itemsize``.
        """
        _check_buffer(sendbuf, "reduce_scatter sendbuf", writable=False)
        _check_buffer(recvbuf, "reduce_scatter recvbuf", writable=True)
        self._check_blocks("reduce_scatter", sendbuf, recvbuf)
        nbytes = cost.reduce_scatter_bytes(recvbuf.size, self.size, recvbuf.itemsize)
        self._run("reduce_scatter", nbytes,
                  lambda: self.comm.Reduce_scatter_block(sendbuf, recvbuf, MPI.SUM))
        return recvbuf

    def allgather(self, sendbuf, recvbuf):
        """Concatenate every rank's ``sendbuf`` (``k`` elements) into ``recvbuf``
        (``p * k`` elements, rank order).  Bytes: ``(p-1) k itemsize``."""
        _check_buffer(sendbuf, "allgather sendbuf", writable=False)
        _check_buffer(recvbuf, "allgather recvbuf", writable=True)
        self._check_blocks("allgather", recvbuf, sendbuf)
        nbytes = cost.allgather_bytes(sendbuf.size, self.size, sendbuf.itemsize)
        self._run("allgather", nbytes, lambda: self.comm.Allgather(sendbuf, recvbuf))
        return recvbuf

    def broadcast(self, buf, root=0):
        """In-place broadcast of ``buf`` from group rank ``root``; returns ``buf``."""
        _check_buffer(buf, "broadcast buffer", writable=True)
        if not 0 <= root < self.size:
            raise ValueError(f"root={root!r}: expected a rank in [0, {self.size})")
        nbytes = cost.broadcast_bytes(buf.size, self.size, buf.itemsize)
        self._run("broadcast", nbytes, lambda: self.comm.Bcast(buf, root=root))
        return buf

    def barrier(self):
        self._run("barrier", 0, self.comm.Barrier)

    # --------------------------------------------------------- point to point
    def send(self, buf, dest, tag=0):
        """Blocking send of ``buf`` to group rank ``dest``.  Bytes: ``buf.nbytes``."""
        _check_buffer(buf, "send buffer", writable=False)
        self._run("send", buf.nbytes, lambda: self.comm.Send(buf, dest=dest, tag=tag))

    def recv(self, buf, source, tag=0):
        """Blocking receive into ``buf`` from group rank ``source``.  Bytes: 0."""
        _check_buffer(buf, "recv buffer", writable=True)
        self._run("recv", 0, lambda: self.comm.Recv(buf, source=source, tag=tag))
        return buf

    def isend(self, buf, dest, tag=0):
        _check_buffer(buf, "isend buffer", writable=False)
        return self._post("send", buf.nbytes, lambda: self.comm.Isend(buf, dest=dest, tag=tag))

    def irecv(self, buf, source, tag=0):
        _check_buffer(buf, "irecv buffer", writable=True)
        return self._post("recv", 0, lambda: self.comm.Irecv(buf, source=source, tag=tag))

    # ----------------------------------------------------------------- helpers
    @staticmethod
    def _mpi_op(op):
        if op not in _OPS:
            raise ValueError(f"op={op!r}: expected one of {sorted(_OPS)}")
        return _OPS[op]

    def _check_blocks(self, what, full, block):
        if full.dtype != block.dtype:
            raise ValueError(f"{what}: dtypes differ ({full.dtype} vs {block.dtype}); "
                             "expected the same dtype on both buffers")
        if full.size != self.size * block.size:
            raise ValueError(
                f"{what}: full buffer has {full.size} elements, block has {block.size}; "
                f"expected full == group size {self.size} x block")

    def __repr__(self):
        return f"Communicator({self.name!r}, rank {self.rank} of {self.size})"
