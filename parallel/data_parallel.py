"""Data parallelism: bucketed gradient all-reduce over the dp group, optionally
overlapped with the backward pass.

Li et al. 2020, "PyTorch Distributed: Experiences on Accelerating Data
Parallel Training", section 3.2 (gradient bucketing, overlap with backward);
volume per rank 2 (p-1)/p Psi (Rajbhandari et al. 2020, section 7.1).

The flat gradient buffer (``FlatParams.grad``) is cut into consecutive buckets
of ``bucket_bytes``.  Each bucket is one contiguous slice, so its all-reduce
works in place with no packing copy.  Gradients arrive pre-scaled by
``1 / (accum * dp)`` (the loss backward's ``scale``), so the all-reduce sum is
the mean over the global batch.

Overlap: the backward runs units in reverse flat order (head first), so once
unit ``u`` has finished its backward on the *last* micro-batch, every flat
element from ``unit_start[u]`` on is final; buckets starting there are posted
with ``MPI_Iallreduce`` while earlier units still compute.
"""
import hashlib

import numpy as np

from .cost import bucket_sizes


class DataParallel:
    """Gradient synchronisation for a model whose units are contiguous in ``flat``.

    Parameters
    ----------
    model : object with ``flat`` (FlatParams), ``units`` and ``unit_ranges()``.
    comm : dp :class:`~minivit.parallel.comm.Communicator`.
    bucket_bytes : bucket size in bytes (>= one element); default 25 MiB (PyTorch DDP).
    overlap : post bucket all-reduces during the backward of the last micro-batch.

    Raises ValueError for a non-positive ``bucket_bytes``.
    """

    def __init__(self, model, comm, bucket_bytes=25 * 2**20, overlap=False):
        if not bucket_bytes > 0:
            raise ValueError(f"bucket_bytes={bucket_bytes!r}: expected a positive size in bytes")
        self.model, self.comm, self.overlap = model, comm, overlap
        itemsize = model.flat.data.itemsize
        self.numel = model.flat.numel
        self.bucket_elems = max(1, int(bucket_bytes) // itemsize)
        starts = np.cumsum([0] + bucket_sizes(self.numel, self.bucket_elems)[:-1])
        self.buckets = [(int(s), int(min(s + self.bucket_elems, self.numel))) for s in starts]
        self.unit_starts = [a for a, _ in model.unit_ranges()]
        self._requests = {}
        self._armed = False
        if overlap:
            for u, unit in enumerate(model.units):
                model.units[u] = _GradReadyUnit(unit, u, self)

    # ----------------------------------------------------------- parameters
    def broadcast_parameters(self, root=0):
        """Copy rank ``root``'s parameters to every dp rank (one broadcast)."""
        self.comm.broadcast(self.model.flat.data, root=root)

    def verify_replicas(self):
        """Raise RuntimeError unless every dp rank holds bitwise-identical parameters."""
        digest = parameter_digest(self.model.flat.data)
        all_digests = self.comm.allgather(digest, np.empty(self.comm.size, np.uint64))
        if len(set(all_digests.tolist())) != 1:
            raise RuntimeError(f"dp replicas differ: parameter digests {all_digests.tolist()}")

    # ------------------------------------------------------------ gradients
    def arm(self):
        """Call before the backward of the last micro-batch (overlap mode)."""
        self._armed = self.overlap

    def _unit_done(self, u):
        if not self._armed:
            return
        ready_from = self.unit_starts[u]
        for i in range(len(self.buckets) - 1, -1, -1):     # tail buckets are ready first
            start, stop = self.buckets[i]
            if start >= ready_from and i not in self._requests:
                self._requests[i] = self.comm.iallreduce(self.model.flat.grad[start:stop])

    def sync_gradients(self):
        """All-reduce (sum) every bucket not already posted and wait for all.

        After it, ``flat.grad`` holds the mean gradient of the global batch on every rank.
        """
        grad = self.model.flat.grad
        for i in range(len(self.buckets) - 1, -1, -1):
            if i not in self._requests:
                start, stop = self.buckets[i]
                self.comm.allreduce(grad[start:stop])
        for request in self._requests.values():
            request.wait()
        self._requests.clear()
        self._armed = False


def parameter_digest(data):
    """A 1-element uint64 array: the first 8 bytes of SHA-256 of ``data``'s bytes."""
    digest = hashlib.sha256(np.ascontiguousarray(data).tobytes()).digest()
    return np.frombuffer(digest[:8], dtype=np.uint64).copy()


class _GradReadyUnit:
    """Wrapper that tells :class:`DataParallel` when a unit's backward has finished."""

    def __init__(self, unit, index, dp):
        self.unit, self.index, self.dp = unit, index, dp
        self.name = getattr(unit, "name", f"unit{index}")

    def parameters(self):
        return self.unit.parameters()

    def forward(self, x):
        return self.unit.forward(x)

    def backward(self, dy, ctx):
        dx = self.unit.backward(dy, ctx)
        self.dp._unit_done(self.index)
        return dx
