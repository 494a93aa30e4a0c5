"""Optimizers over flat 1-D buffers: AdamW, SGD with momentum, global-norm clipping.

The update math is a function of 1-D arrays (``adamw_update``, ``sgd_update``),
so ZeRO can run it on the shard a rank owns.  The classes only hold state.

- AdamW: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR
  2019, Algorithm 2, with PyTorch ``torch.optim.AdamW`` conventions (bias
  correction of Kingma & Ba 2015, Algorithm 1; eps added after the sqrt).
- SGD: PyTorch ``torch.optim.SGD`` momentum (``buf = mu * buf + g``), with
  L2 weight decay added to the gradient where the decay mask is 1.
- Clipping: PyTorch ``clip_grad_norm_`` (coefficient ``max_norm / (norm + 1e-6)``).
"""
import math

import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy")
def _adamw_kernel(p, g, m, v, mask, lr, beta1, beta2, eps, wd, step_size, inv_sqrt_bc2):
    # one fused pass over the flat buffers (reads p, g, m, v, mask; writes p, m, v).
    # mask is bool: for a finite lr wd, the float mask's factor 1 - (lr wd) * mask
    # was 1 - lr wd or 1 - 0.0, so selecting between the two gives the same float64
    # (bitwise the old update) and reads 1 byte per parameter instead of 4 or 8
    lr_wd = lr * wd
    for i in range(p.size):
        gi = g[i]
        m[i] = beta1 * m[i] + (1.0 - beta1) * gi
        v[i] = beta2 * v[i] + (1.0 - beta2) * gi * gi
        pi = p[i] * (1.0 - (lr_wd if mask[i] else 0.0))
        p[i] = pi - step_size * m[i] / (math.sqrt(v[i]) * inv_sqrt_bc2 + eps)


def _check_flat(decay_mask=None, **arrays):
    """Every array 1-D, contiguous, of the first one's shape and dtype; the decay
    mask of that shape too, but numpy bool (1 byte per parameter, ``FlatParams``)."""
    ref_name, ref = next(iter(arrays.items()))
    if decay_mask is not None:
        arrays["decay_mask"] = decay_mask
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.ndim != 1 or a.shape != ref.shape:
            raise ValueError(f"{name} shape {getattr(a, 'shape', None)}: expected a 1-D array "
                             f"of the shape of {ref_name} {ref.shape}")
        want = np.dtype(bool) if name == "decay_mask" else ref.dtype
        if a.dtype != want:
            raise ValueError(f"{name} dtype {a.dtype}: expected {want}" +
                             (" (True where weight decay applies)" if name == "decay_mask"
                              else f" like {ref_name}"))
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} is not contiguous: expected a contiguous buffer")


def adamw_update(param, grad, exp_avg, exp_avg_sq, decay_mask, lr, beta1, beta2, eps,
                 weight_decay, step):
    """One AdamW step in place on 1-D arrays of one dtype (fused Numba kernel).

    decay_mask: 1-D numpy bool, True where weight decay applies.
    step: 1-based count of this update (bias correction ``1 - beta**step``).
    param -= lr * wd * mask * param;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
    param -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    Raises ValueError on mismatched arrays or step < 1.
    """
    _check_flat(param=param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq,
                decay_mask=decay_mask)
    if step < 1:
        raise ValueError(f"step={step}: expected the 1-based index of this update")
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    _adamw_kernel(param, grad, exp_avg, exp_avg_sq, decay_mask, float(lr), float(beta1),
                  float(beta2), float(eps), float(weight_decay), lr / bc1, 1.0 / math.sqrt(bc2))


def adamw_update_reference(param, grad, exp_avg, exp_avg_sq, decay_mask, lr, beta1, beta2,
                           eps, weight_decay, step):
    """Plain-NumPy reference of ``adamw_update`` (same in-place contract)."""
    # the 0/1 mask in the parameter dtype, as the float mask was: the same
    # arithmetic (and float32 rounding) as before the mask became bool
    decay_mask = np.asarray(decay_mask, dtype=param.dtype)
    param *= 1.0 - lr * weight_decay * decay_mask
    exp_avg[...] = beta1 * exp_avg + (1.0 - beta1) * grad
    exp_avg_sq[...] = beta2 * exp_avg_sq + (1.0 - beta2) * grad * grad
    denom = np.sqrt(exp_avg_sq) / math.sqrt(1.0 - beta2 ** step) + eps
    param -= lr / (1.0 - beta1 ** step) * exp_avg / denom


@njit(cache=True, error_model="numpy")
def _sgd_kernel(p, g, buf, mask, lr, momentum, wd, nesterov):
    for i in range(p.size):
        # (wd if mask else 0.0) is the float mask's wd * mask for a finite wd: the
        # same product with p, signed zeros and non-finite p included
        d = g[i] + (wd if mask[i] else 0.0) * p[i]
        buf[i] = momentum * buf[i] + d
        p[i] -= lr * ((d + momentum * buf[i]) if nesterov else buf[i])


def sgd_update(param, grad, momentum_buf, decay_mask, lr, momentum, weight_decay,
               nesterov=False):
    """One SGD-with-momentum step in place (PyTorch semantics, no dampening).

    d = g + wd * mask * p;  buf = mu * buf + d;  p -= lr * (nesterov ? d + mu buf : buf).
    """
    _check_flat(param=param, grad=grad, momentum_buf=momentum_buf, decay_mask=decay_mask)
    _sgd_kernel(param, grad, momentum_buf, decay_mask, float(lr), float(momentum),
                float(weight_decay), bool(nesterov))


def sgd_update_reference(param, grad, momentum_buf, decay_mask, lr, momentum, weight_decay,
                         nesterov=False):
    """Plain-NumPy reference of ``sgd_update`` (same in-place contract)."""
    decay_mask = np.asarray(decay_mask, dtype=param.dtype)   # as the float mask was
    d = grad + weight_decay * decay_mask * param
    momentum_buf[...] = momentum * momentum_buf + d
    param -= lr * ((d + momentum * momentum_buf) if nesterov else momentum_buf)


_SUMSQ_BLOCK = 4096   # elements per partial sum (pairwise-like accuracy, fixed order)


@njit(cache=True, error_model="numpy")
def _sumsq_kernel(g):
    nblk = (g.size + _SUMSQ_BLOCK - 1) // _SUMSQ_BLOCK
    part = np.zeros(nblk)
    for blk in range(nblk):
        s = 0.0
        for i in range(blk * _SUMSQ_BLOCK, min(g.size, (blk + 1) * _SUMSQ_BLOCK)):
            v = np.float64(g[i])
            s += v * v
        part[blk] = s
    total = 0.0
    for blk in range(nblk):
        total += part[blk]
    return total


def grad_sumsq(grad):
    """Sum of squares of a 1-D gradient (shard), accumulated in float64; a Python float.

    Sharded clipping all-reduces these partial sums before ``clip_coefficient``.
    A Numba reduction in fixed blocks: no float64 copy of a float32 buffer
    (46 MB for vit-tiny).
    """
    g = np.ascontiguousarray(grad).ravel()
    if g.size == 0:
        return 0.0
    return float(_sumsq_kernel(g))


def clip_coefficient(total_norm, max_norm):
    """Factor (<= 1) that scales gradients of global L2 norm ``total_norm`` to ``max_norm``."""
    if max_norm <= 0:
        raise ValueError(f"max_norm={max_norm!r}: expected a positive float")
    return min(1.0, max_norm / (total_norm + 1e-6))


def clip_grad_norm_(flat_grad, max_norm):
    """Scale ``flat_grad`` in place to global norm <= ``max_norm``; returns the norm before."""
    norm = math.sqrt(grad_sumsq(flat_grad))
    coef = clip_coefficient(norm, max_norm)
    if coef < 1.0:
        flat_grad *= flat_grad.dtype.type(coef)
    return norm


def _unpack(params, grad, decay_mask):
    """Accept a FlatParams-like object (``.data/.grad/.decay_mask/.offsets``) or three arrays."""
    if grad is None and hasattr(params, "decay_mask"):
        return params.data, params.grad, params.decay_mask, dict(params.offsets)
    if grad is None or decay_mask is None:
        raise ValueError("expected a FlatParams, or param, grad and decay_mask 1-D arrays")
    return params, grad, decay_mask, None


class _FlatOptimizer:
    """State arrays shaped like the parameter buffer, saved per parameter name."""

    state_names = ()

    def __init__(self, params, grad, decay_mask, offsets):
        self.param, self.grad, self.decay_mask, default_offsets = _unpack(params, grad, decay_mask)
        _check_flat(param=self.param, grad=self.grad, decay_mask=self.decay_mask)
        # name -> (start, stop, shape) inside these arrays; one "flat" entry if unnamed
        self.offsets = offsets or default_offsets or {
            "flat": (0, self.param.size, self.param.shape)}
        self.state = {k: np.zeros_like(self.param) for k in self.state_names}
        self.step_count = 0

    def _hyper(self):
        raise NotImplementedError

    def state_dict(self):
        """``{"step", "hyper", state_name: {param_name: array}}`` (copies)."""
        out = {"step": self.step_count, "hyper": self._hyper()}
        for k, buf in self.state.items():
            out[k] = {n: buf[lo:hi].reshape(s).copy() for n, (lo, hi, s) in self.offsets.items()}
        return out

    def load_state_dict(self, state):
        """Restore from ``state_dict()`` output; raises ValueError on missing names or shapes."""
        for k, buf in self.state.items():
            named = state[k]
            missing = sorted(set(self.offsets) - set(named))
            if missing:
                raise ValueError(f"optimizer state {k!r} lacks parameters {missing}")
            for n, (lo, hi, s) in self.offsets.items():
                value = np.asarray(named[n])
                if value.shape != tuple(s):
                    raise ValueError(f"optimizer state {k}[{n}] shape {value.shape}, expected {s}")
                buf[lo:hi] = value.ravel()
        self.step_count = int(state["step"])


class AdamW(_FlatOptimizer):
    """AdamW over a FlatParams (or ``param, grad, decay_mask`` 1-D arrays).

    ``step(lr=None)`` applies one update with the current gradient (lr defaults
    to the constructor's).  State: ``exp_avg``, ``exp_avg_sq`` (each the size
    of the parameter buffer: with fp32 params and grads, 16 bytes/parameter).
    """

    state_names = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, grad=None, decay_mask=None, *, lr=1e-3, betas=(0.9, 0.999),
                 eps=1e-8, weight_decay=0.05, offsets=None):
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"betas={betas!r}: expected each in [0, 1)")
        if lr < 0 or eps <= 0 or weight_decay < 0:
            raise ValueError(f"lr={lr}, eps={eps}, weight_decay={weight_decay}: expected "
                             "lr >= 0, eps > 0, weight_decay >= 0")
        super().__init__(params, grad, decay_mask, offsets)
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay

    def _hyper(self):
        return {"lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay}

    def step(self, lr=None):
        self.step_count += 1
        adamw_update(self.param, self.grad, self.state["exp_avg"], self.state["exp_avg_sq"],
                     self.decay_mask, self.lr if lr is None else lr, self.betas[0],
                     self.betas[1], self.eps, self.weight_decay, self.step_count)


class SGD(_FlatOptimizer):
    """SGD with momentum over a FlatParams (or three 1-D arrays); state ``momentum_buffer``."""

    state_names = ("momentum_buffer",)

    def __init__(self, params, grad=None, decay_mask=None, *, lr=0.1, momentum=0.9,
                 weight_decay=0.0, nesterov=False, offsets=None):
        if lr < 0 or not 0.0 <= momentum < 1.0 or weight_decay < 0:
            raise ValueError(f"lr={lr}, momentum={momentum}, weight_decay={weight_decay}: "
                             "expected lr >= 0, 0 <= momentum < 1, weight_decay >= 0")
        super().__init__(params, grad, decay_mask, offsets)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.nesterov = nesterov

    def _hyper(self):
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "nesterov": self.nesterov}

    def step(self, lr=None):
        self.step_count += 1
        sgd_update(self.param, self.grad, self.state["momentum_buffer"], self.decay_mask,
                   self.lr if lr is None else lr, self.momentum, self.weight_decay,
                   self.nesterov)


class WarmupCosine:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine decay.

    lr(s) = base_lr * (s + 1) / warmup_steps                       for s < warmup_steps
    lr(s) = min_lr + (base_lr - min_lr) * (1 + cos(pi * q)) / 2    after, with
            q = min(1, (s - warmup_steps) / max(1, total_steps - warmup_steps))
    (Loshchilov & Hutter, "SGDR", ICLR 2017, eq. 5, without restarts; warmup as
    in Goyal et al., "Accurate, Large Minibatch SGD", 2017, section 2.2).
    The schedule is a pure function of the step, so resuming needs only the
    step; ``state_dict`` stores the settings so a resume can check them.
    """

    def __init__(self, base_lr, warmup_steps, total_steps, min_lr=0.0):
        if base_lr < 0 or min_lr < 0 or min_lr > base_lr:
            raise ValueError(f"base_lr={base_lr}, min_lr={min_lr}: expected 0 <= min_lr <= base_lr")
        # warmup_steps > total_steps is allowed: a short run (a smoke test) simply
        # ends inside the warmup instead of failing on a default flag value.
        if warmup_steps < 0 or total_steps < 1:
            raise ValueError(f"warmup_steps={warmup_steps}, total_steps={total_steps}: expected "
                             "warmup_steps >= 0 and total_steps >= 1")
        self.base_lr, self.min_lr = float(base_lr), float(min_lr)
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)

    def __call__(self, step):
        if step < 0:
            raise ValueError(f"step={step}: expected a 0-based step >= 0")
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        q = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * q))

    def state_dict(self):
        return {"base_lr": self.base_lr, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "min_lr": self.min_lr}

    def load_state_dict(self, state):
        self.__init__(**state)
