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
import math

import numpy as np

from minivit.optim import SGD, AdamW, clip_coefficient, grad_sumsq

from .cost import bucket_sizes
from .model_parallel import weighted_sumsq
from .units import UnitWrapper


class DataParallel:
    """Gradient synchronisation for a model whose units are contiguous in ``flat``.

    Parameters
    ----------
    model : object with ``flat`` (FlatParams), ``units`` and ``unit_ranges()``.
    comm : dp :class:`~minivit.parallel.comm.Communicator`.
    bucket_bytes : bucket size in bytes (>= one element); default 25 MiB (PyTorch DDP).
    overlap : post bucket all-reduces during the backward of the last micro-batch;
        the model's units must then be wrapped in :class:`GradReadyUnit`
        (``units.wrap_units(model, GradReadyUnit, dp)``), which tells this object
        when each unit's backward is done.

    Raises ValueError for a non-positive ``bucket_bytes``.
    """

    def __init__(self, model, comm, bucket_bytes=25 * 2**20, overlap=False):
        if not bucket_bytes > 0:
            raise ValueError(f"bucket_bytes={bucket_bytes!r}: expected a positive size in bytes")
        self.model, self.comm, self.overlap = model, comm, overlap
        itemsize = model.flat.dtype.itemsize
        self.numel = model.flat.numel
        self.bucket_elems = max(1, int(bucket_bytes) // itemsize)
        starts = np.cumsum([0] + bucket_sizes(self.numel, self.bucket_elems)[:-1])
        self.buckets = [(int(s), int(min(s + self.bucket_elems, self.numel))) for s in starts]
        self.unit_starts = [a for a, _ in model.unit_ranges()]
        self._requests = {}
        self._armed = False

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


class GradReadyUnit(UnitWrapper):
    """A unit that tells :class:`DataParallel` ``dp`` when its backward has finished."""

    def __init__(self, unit, index, dp):
        super().__init__(unit, index)
        self.dp = dp

    def backward(self, dy, ctx):
        dx = self.unit.backward(dy, ctx)
        self.dp._unit_done(self.index)
        return dx

    def backward_input(self, dy, ctx):
        raise ValueError("GradReadyUnit reduces the unit's gradient after its whole backward: the "
                         "split backward of a zero-bubble schedule needs ZeRO 0-1 without "
                         "--overlap")


class ReplicatedOptimizer:
    """ZeRO stage 0, plain data parallelism: every dp rank holds the full parameters,
    gradients and optimizer state, and updates all of them after one all-reduce.

    It has the interface of ``zero.ZeroOptimizer`` (``sync_gradients``,
    ``grad_norm``, ``step``, ``drop_gradients``, ``memory``, ``state_dict``,
    ``load_state_dict``, ``full_parameters``), so the train step holds no branch
    on the stage.  model : ViT or ModelShard; dp : its :class:`DataParallel`.
    kind : "adamw" or "sgd" (``minivit.optim``); hyper-parameters as there.
    trainable : None (every parameter), or ``(start, stop)``: only this slice of the
        flat buffer is updated, clipped and counted in the gradient norm; the rest
        stays bitwise unchanged (a linear probe's frozen backbone).
    The wrapped optimizer is ``inner``; ``state`` and ``step_count`` are its own.
    Raises ValueError for an unknown kind or a slice outside the buffer.
    """

    stage = 0

    def __init__(self, model, dp, kind="adamw", *, betas=(0.9, 0.999), eps=1e-8,
                 momentum=0.9, weight_decay=0.05, trainable=None):
        if kind not in ("adamw", "sgd"):
            raise ValueError(f"optimizer={kind!r}: expected 'adamw' or 'sgd'")
        self.model, self.dp, self.kind = model, dp, kind
        flat = model.flat
        lo, hi = (0, flat.numel) if trainable is None else trainable
        if not 0 <= lo < hi <= flat.numel:
            raise ValueError(f"trainable={trainable!r}: expected 0 <= start < stop <= "
                             f"{flat.numel} (the flat buffer)")
        if trainable is not None and getattr(model, "norm_groups", ()):
            raise ValueError("trainable= with tensor/pipeline parallelism: expected a "
                             "data-parallel model (one ViT per rank)")
        self.trainable = (lo, hi)
        # views of the trainable slice: the update never touches the rest of the buffer
        self.grad = flat.grad[lo:hi]
        arrays = (flat.data[lo:hi], self.grad, flat.decay_mask[lo:hi])
        offsets = {n: (a - lo, b - lo, s) for n, (a, b, s) in flat.offsets.items()
                   if lo <= a and b <= hi}
        self.inner = (SGD(*arrays, lr=0.0, momentum=momentum, weight_decay=weight_decay,
                          offsets=offsets)
                      if kind == "sgd" else
                      AdamW(*arrays, lr=0.0, betas=betas, eps=eps, weight_decay=weight_decay,
                            offsets=offsets))

    @property
    def state(self):
        return self.inner.state

    @property
    def step_count(self):
        return self.inner.step_count

    @step_count.setter
    def step_count(self, value):
        self.inner.step_count = value

    def _hyper(self):
        return self.inner._hyper()

    def sync_gradients(self):
        """All-reduce the gradient buckets over dp: the mean gradient on every rank."""
        self.dp.sync_gradients()

    def grad_norm(self):
        """Global L2 norm of the synchronised mean gradient.  Under tensor/pipeline
        parallelism it spans every shard and stage, tp-replicated tensors counted once."""
        groups = getattr(self.model, "norm_groups", ())
        if not groups:
            return math.sqrt(grad_sumsq(self.grad))
        local = weighted_sumsq(self.model.flat.grad, self.model.norm_weight)
        for comm in groups:
            local = comm.allreduce_scalar(local)
        return math.sqrt(local)

    def step(self, lr, step, max_grad_norm=None, norm=None):
        """Clip by the measured global ``norm``, update, zero the gradients; returns norm.

        ``step`` is not used: the inner optimizer counts its own steps."""
        norm = self.grad_norm() if norm is None else norm
        grad = self.grad
        if max_grad_norm:
            coef = clip_coefficient(norm, max_grad_norm)
            if coef < 1.0:      # as minivit.optim.clip_grad_norm_, from the measured norm
                grad *= grad.dtype.type(coef)
        self.inner.step(lr)
        self.model.flat.zero_grad()
        return norm

    def drop_gradients(self):
        """Discard the accumulated gradients without updating (a skipped step)."""
        self.model.flat.zero_grad()

    def memory(self):
        """Measured persistent bytes per rank: ``params``, ``grads``, ``optim``, ``total``."""
        flat = self.model.flat
        optim = sum(buf.nbytes for buf in self.inner.state.values())
        return {"params": flat.data.nbytes, "grads": flat.grad.nbytes, "optim": optim,
                "total": flat.data.nbytes + flat.grad.nbytes + optim}

    def state_dict(self, step=None):
        """The inner optimizer's ``state_dict`` (full named arrays)."""
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)

    def full_parameters(self):
        """A copy of the full flat parameter vector."""
        return self.model.flat.data.copy()
