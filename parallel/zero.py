"""ZeRO stages 1, 2 and 3 over the data-parallel group.

Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models", section 5.1 (P_os, P_g, P_p) and section 7 (communication).

What each stage keeps per rank (Psi parameters, p = dp size, fp32 AdamW) and
what moves per optimizer step (see ``cost.step_comm_bytes`` for exact bytes):

======  ========================  ============================================
stage   persistent state          communication
======  ========================  ============================================
1       params Psi, grads Psi,    all-reduce grads (``DataParallel``), update
        Adam state Psi/p          own shard, all-gather params per unit
2       params Psi, grads Psi/p,  per micro-batch, each unit's gradient is
        Adam state Psi/p          reduce-scattered right after its backward;
                                  update own shard; all-gather params per unit
3       params Psi/p, grads       each unit all-gathered before its forward
        Psi/p, Adam state Psi/p   and again before its backward, freed after;
                                  grads reduce-scattered per unit
======  ========================  ============================================

Shards are per unit, padded so every dp size works (``shard.ShardLayout``).
At stage 3 the runtime's model arrives already sharded (``build_model(...,
zero=3)``, ``shard.py``: no rank ever holds the full model); a model built
whole is sharded here from its full buffers, with the same result bitwise.
Gradients arrive pre-scaled by ``1 / (accum * dp)`` (the loss backward's
``scale``), so summing collectives yield the mean gradient.
"""
import numpy as np

from minivit.optim import adamw_update, clip_coefficient, grad_sumsq

from .model_parallel import weighted_sumsq
from .shard import ShardLayout
from .units import UnitWrapper, wrap_units


class ZeroOptimizer:
    """AdamW with ZeRO-sharded state for ``model`` over the dp communicator ``comm``.

    At stages 2 and 3 the units must then be wrapped by :func:`shard_units`
    (``ShardedUnit`` moves gradients, and at stage 3 parameters, unit by unit).
    Build it after the initial parameter broadcast.  ``sync_gradients()``: the
    dp all-reduce of stage 1 (``dp``, a ``DataParallel``); stages 2-3 have
    reduce-scattered inside each unit's backward already.

    step(lr, step, max_grad_norm=None, norm=None) -> global gradient norm (float,
    before clipping; ``norm`` passes one already measured by :meth:`grad_norm`).  Hyper-parameters as in ``minivit.optim.AdamW``;
    clipping follows ``minivit.optim.clip_grad_norm_`` (PyTorch ``clip_grad_norm_``).
    A model built shard by shard (``ModelShard(sharded=True)``, its
    ``zero_shards``) hands over its shards; any other model is sharded here
    from its full buffers.  allocate : ``f(name, n, dtype, values=None) -> array``
    placing the parameter shard (stage 3) and the Adam moments (default: the
    heap; ``offload.Offload.allocate``: mapped files, so no heap copy exists).
    Raises ValueError for a stage outside 1..3, or a model built sharded for
    another dp group or stage.
    """

    kind = "adamw"

    def __init__(self, model, comm, stage, *, dp=None, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.05, allocate=None):
        if stage not in (1, 2, 3):
            raise ValueError(f"zero stage={stage!r}: expected 1, 2 or 3 (0 is plain DP)")
        self.model, self.comm, self.stage, self.dp = model, comm, stage, dp
        self.hyper = dict(beta1=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay)
        # where the optimizer state lives: the heap, or offload.Offload's mapped files
        allocate = allocate or heap_array
        self.dtype = model.flat.dtype
        self.norm_weight = getattr(model, "norm_weight", None)
        self.norm_groups = list(getattr(model, "norm_groups", ()))
        self.grad_shard = self.param_shard = None
        if getattr(model, "zero_shards", None) is not None:
            param_shard = self._take_built_shards(model.zero_shards)
        else:
            param_shard = self._extract_shards(model.flat)
        if stage == 3:      # first, so an offloaded copy replaces the heap one before more comes
            self.param_shard = allocate("param_shard", self.layout.numel, self.dtype, param_shard)
        del param_shard
        self.exp_avg = allocate("exp_avg", self.layout.numel, self.dtype)
        self.exp_avg_sq = allocate("exp_avg_sq", self.layout.numel, self.dtype)
        if stage >= 2:
            self.grad_shard = np.zeros(self.layout.numel, self.dtype)

    def _extract_shards(self, flat):
        """Shards of a fully built model; returns the parameter shard at stage 3, else None."""
        self.layout = ShardLayout(self.model.unit_ranges(), self.comm.size, self.comm.rank)
        self.decay_shard = self.layout.extract(flat.decay_mask)
        # tensor/pipeline parallel: count replicated tensors once, sum over tp and pp
        if self.norm_weight is not None and self.stage >= 2:
            self.norm_weight = self.layout.extract(self.norm_weight)
        return self.layout.extract(flat.data) if self.stage == 3 else None

    def _take_built_shards(self, shards):
        """Take over the shards of a model built shard by shard (``shard.build_sharded``)."""
        lay = shards.layout
        if self.stage != 3 or (lay.p, lay.rank) != (self.comm.size, self.comm.rank):
            raise ValueError(f"a model built sharded over {lay.p} ranks (rank {lay.rank}) with "
                             f"zero={self.stage} over {self.comm.size} (rank {self.comm.rank}): "
                             "expected zero=3 over the dp group it was built for")
        self.layout, self.decay_shard = lay, shards.decay_shard
        self.norm_weight = shards.norm_weight
        param_shard = shards.param_shard
        shards.param_shard = shards.decay_shard = shards.norm_weight = None   # owned here now
        return param_shard

    def sync_gradients(self):
        """Stage 1: all-reduce the gradients over dp; stages 2-3: nothing left to do."""
        if self.stage == 1:
            self.dp.sync_gradients()

    def _bind(self, unit, u, buf, attr):
        """Point each parameter's ``attr`` ("data"/"grad") at its slice of unit buffer ``buf``."""
        start = self.layout.ranges[u][0]
        for prm in unit.parameters():
            lo, hi, shape = self.model.flat.offsets[prm.name]
            setattr(prm, attr, buf[lo - start:hi - start].reshape(shape))

    # ------------------------------------------------------------ optimizer step
    def grad_norm(self):
        """Global L2 norm of the mean gradient over unique parameters.

        Stage 1 holds the full all-reduced gradient, so the norm is local;
        stages 2-3 all-reduce the sum of squares of their shards (padding is zero).
        Under tensor/pipeline parallelism (``ModelShard``) the sum of squares is
        further all-reduced over tp and pp, tp-replicated tensors weighted once.
        """
        grad = self.model.flat.grad if self.stage == 1 else self.grad_shard
        local = (grad_sumsq(grad) if self.norm_weight is None
                 else weighted_sumsq(grad, self.norm_weight))
        if self.stage >= 2:
            local = self.comm.allreduce_scalar(local)
        for comm in self.norm_groups:
            local = comm.allreduce_scalar(local)
        return float(np.sqrt(local))

    def step(self, lr, step, max_grad_norm=None, norm=None):
        # norm: the caller may have measured it already (the non-finite guard in
        # parallel/step.py does, before deciding to update), saving a collective
        norm = self.grad_norm() if norm is None else norm   # measured even without clipping
        coef = clip_coefficient(norm, max_grad_norm) if max_grad_norm else 1.0
        coef = self.dtype.type(coef)
        lay, flat = self.layout, self.model.flat
        if self.stage == 3:
            grad = self.grad_shard
            if coef < 1:          # in place: the shard is zeroed right after the update
                grad *= coef
            adamw_update(self.param_shard, grad, self.exp_avg, self.exp_avg_sq,
                         self.decay_shard, lr=lr, step=step, **self.hyper)
            self.grad_shard.fill(0)
            return norm
        for u in range(len(lay.ranges)):
            lo, hi = lay.owned(u)
            if hi == lo:
                continue
            if self.stage == 1:
                grad = flat.grad[lo:hi]
            else:
                grad = lay.shard_view(self.grad_shard, u, owned_only=True)
            if coef < 1:
                grad = grad * coef
            # the owned slice of the full parameter buffer is updated in place: no copy
            adamw_update(flat.data[lo:hi], grad,
                         lay.shard_view(self.exp_avg, u, owned_only=True),
                         lay.shard_view(self.exp_avg_sq, u, owned_only=True),
                         self.decay_shard[lay.offsets[u]:lay.offsets[u] + hi - lo],
                         lr=lr, step=step, **self.hyper)
        self._allgather_params()
        if self.stage == 1:
            flat.zero_grad()
        else:
            self.grad_shard.fill(0)
        return norm

    def drop_gradients(self):
        """Discard the accumulated gradients without updating (a skipped step)."""
        if self.stage == 1:
            self.model.flat.zero_grad()
        else:
            self.grad_shard.fill(0)

    def _allgather_params(self):
        lay, data = self.layout, self.model.flat.data
        for u, (a, b) in enumerate(lay.ranges):
            lo, hi = lay.owned(u)
            send = np.zeros(lay.blocks[u], self.dtype)   # padded block (last rank may be short)
            send[:hi - lo] = data[lo:hi]
            gathered = self.comm.allgather(send, np.empty(lay.p * lay.blocks[u], self.dtype))
            data[a:b] = gathered[:b - a]

    # ------------------------------------------------------------ memory ledger
    def memory(self):
        """Measured persistent bytes on this rank: ``params``, ``grads``, ``optim``, ``total``."""
        flat = self.model.flat
        params = self.param_shard.nbytes if self.stage == 3 else flat.data.nbytes
        grads = self.grad_shard.nbytes if self.stage >= 2 else flat.grad.nbytes
        optim = self.exp_avg.nbytes + self.exp_avg_sq.nbytes
        return {"params": params, "grads": grads, "optim": optim,
                "total": params + grads + optim}

    def _gather_full(self, shard):
        """The full flat vector of a shard vector (all-gather per unit, padding dropped)."""
        out = np.empty(self.layout.total, self.dtype)
        for u, (a, b) in enumerate(self.layout.ranges):
            out[a:b] = self.layout.gather_unit(self.comm, shard, u)[:b - a]
        return out

    def state_dict(self, step):
        """Optimizer state in ``minivit.optim.AdamW.state_dict`` format, on every rank.

        The shards are all-gathered into full per-parameter arrays, so the state
        does not depend on the dp size (layout-independent checkpoints).
        """
        named = self.model.flat.offsets
        out = {"step": step, "hyper": {"betas": [self.hyper["beta1"], self.hyper["beta2"]],
                                       "eps": self.hyper["eps"],
                                       "weight_decay": self.hyper["weight_decay"]}}
        for key in ("exp_avg", "exp_avg_sq"):
            full = self._gather_full(getattr(self, key))
            out[key] = {n: full[lo:hi].reshape(s).copy() for n, (lo, hi, s) in named.items()}
        return out

    def load_state_dict(self, state):
        """Take this rank's shard of a full ``state_dict`` (from any dp size or AdamW).

        Raises ValueError when a parameter is missing or has the wrong shape.
        """
        for key in ("exp_avg", "exp_avg_sq"):
            full = np.empty(self.layout.total, self.dtype)
            for name, (lo, hi, shape) in self.model.flat.offsets.items():
                if name not in state[key]:
                    raise ValueError(f"optimizer state {key!r} lacks parameter {name!r}")
                value = np.asarray(state[key][name])
                if value.shape != tuple(shape):
                    raise ValueError(f"optimizer state {key}[{name}] shape {value.shape}, "
                                     f"expected {tuple(shape)}")
                full[lo:hi] = value.ravel()
            getattr(self, key)[...] = self.layout.extract(full)

    def full_parameters(self):
        """The full flat parameter vector (gathered at stage 3; a copy otherwise)."""
        if self.stage < 3:
            return self.model.flat.data.copy()
        return self._gather_full(self.param_shard)


def check_gradient_sync(zero, overlap, schedule="1f1b", pp=1):
    """ValueError (naming the flags) for a ZeRO stage, ``--overlap`` and a pipeline
    schedule that cannot run together; the one check of run/pretrain.py and run/plan.py.

    ZB-H1 (pp > 1) runs the weight-gradient passes after the input backward, while
    ZeRO-2/3 and ``--overlap`` reduce a unit's gradient right after its whole
    backward; ``--overlap`` applies to stages 0-1 only (stages 2-3 reduce-scatter
    each unit inside its backward already).
    """
    if pp > 1 and schedule == "zb-h1" and (zero >= 2 or overlap):
        raise ValueError(f"--schedule zb-h1 with --zero {zero}"
                         f"{' --overlap' if overlap else ''}: the weight-gradient "
                         "passes run after the input backward, and ZeRO-2/3 and --overlap "
                         "reduce a unit's gradient right after its whole backward; "
                         "expected --zero 0 or 1 without --overlap")
    if overlap and zero >= 2:
        raise ValueError(f"--overlap --zero {zero}: overlap applies to ZeRO 0-1 "
                         "(stages 2-3 reduce-scatter each unit inside its backward already)")


def heap_array(name, n, dtype, values=None):
    """The default ``allocate`` of :class:`ZeroOptimizer`: ``values`` itself, or zeros.

    name : which state ("param_shard", "exp_avg", ...), for allocators that
    name files (``offload.Offload.allocate``).  n, dtype : length and dtype.
    """
    return np.zeros(n, dtype) if values is None else values


def shard_units(model, optimizer):
    """Wrap every unit of ``model`` in :class:`ShardedUnit` for ``optimizer`` (a
    ZeroOptimizer of stage 2 or 3) and release the full buffers the shards
    replace: the gradients (stage >= 2) and the parameters (stage 3).  Stage 1
    keeps full buffers and needs no wrapper.  Returns ``model``.
    """
    if optimizer.stage < 2:
        return model
    for unit in model.units:
        for prm in unit.parameters():
            prm.grad = None
            if optimizer.stage == 3:
                prm.data = None
    wrap_units(model, ShardedUnit, optimizer)
    model.flat.grad = None              # gradients now live in grad_shard only
    if optimizer.stage == 3:
        model.flat.data = None          # parameters now live in param_shard only
        model.flat.decay_mask = None
    return model


class ShardedUnit(UnitWrapper):
    """A unit whose gradients (stage 2-3) and parameters (stage 3) live in shards.

    forward(x): stage 3 all-gathers the unit's parameters, runs the unit, frees them.
    backward(dy, ctx): stage 3 gathers the parameters again; the unit's
    gradient is accumulated in a temporary unit buffer, reduce-scattered (sum
    over dp) and added to this rank's gradient shard; buffers are freed.
    """

    def __init__(self, unit, index, zero):
        super().__init__(unit, index)
        self.zero = zero       # the ZeroOptimizer holding the shards

    def _gather(self):
        zero = self.zero
        full = zero.layout.gather_unit(zero.comm, zero.param_shard, self.index)
        zero._bind(self.unit, self.index, full, "data")

    def _release(self, attr):
        for prm in self.unit.parameters():
            setattr(prm, attr, None)

    def forward(self, x):
        if self.zero.stage == 3:
            self._gather()
        y, ctx = self.unit.forward(x)
        if self.zero.stage == 3:
            self._release("data")
        return y, ctx

    def backward(self, dy, ctx):
        zero, u = self.zero, self.index
        if zero.stage == 3:
            self._gather()
        k = zero.layout.blocks[u]
        unit_grad = np.zeros(zero.layout.p * k, zero.dtype)   # padded: p equal blocks
        zero._bind(self.unit, u, unit_grad, "grad")
        dx = self.unit.backward(dy, ctx)
        block = zero.comm.reduce_scatter(unit_grad, np.empty(k, zero.dtype))
        zero.layout.shard_view(zero.grad_shard, u)[...] += block
        self._release("grad")
        if zero.stage == 3:
            self._release("data")
        return dx

    def backward_input(self, dy, ctx):
        raise ValueError("ShardedUnit reduces the unit's gradient after its whole backward: the "
                         "split backward of a zero-bubble schedule needs ZeRO 0-1 without "
                         "--overlap")
