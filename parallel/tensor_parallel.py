"""Tensor (intra-layer) model parallelism for the ViT block.

Shoeybi et al. 2019, "Megatron-LM: Training Multi-Billion Parameter Language
Models Using Model Parallelism", section 3 (Figures 3 and 4).

Inside a block the two matmul pairs are split so each needs one all-reduce
per direction::

    x --f--> [qkv: column-parallel, heads/tp heads] -> attention -> [proj: row-parallel] --g--> + b
    x --f--> [fc1: column-parallel]  -> GELU ->                     [fc2: row-parallel]  --g--> + b

``f`` is the identity forward and an all-reduce over tp backward; ``g`` is
its conjugate.  Per block and micro-batch that is 2 all-reduces of
``(b, s, h)`` forward and 2 backward (``cost.tp_comm_elements``).

LayerNorms, the embedding, class token, position embedding, head and the
biases of row-parallel layers are replicated: every tp rank computes the same
gradient for them (their inputs and output gradients are full after ``f``/``g``),
so they stay bitwise identical without communication.  Their gradients are
counted once in the global norm (``ModelShard.norm_weight``).

Sharded init: every shard is ``init_shard(seed, name, full_shape, ...)``,
the exact slice of the serial parameter.  The head is not split, so the class
count needs no divisibility; heads and MLP width must divide by tp.
"""
import numpy as np

from minivit.attention import MultiHeadAttention
from minivit.layers import GELU, LayerNorm, Linear, Sequential, Residual
from minivit.params import Parameter, init_shard


class CopyToTensorParallel:
    """Megatron's ``f``: forward identity, backward all-reduce (sum) over tp.

    x, dy: (..., h) arrays, any dtype.  ``comm``: the tp Communicator.
    """

    def __init__(self, comm):
        self.comm = comm

    def parameters(self):
        return []

    def forward(self, x):
        return x, None

    def backward(self, dy, ctx):
        # forward: y = x on every tp rank, so dL/dx = sum over ranks of dL/dy
        return self.comm.allreduce(np.ascontiguousarray(dy))


class ReduceFromTensorParallel:
    """Megatron's ``g``: forward all-reduce (sum) over tp, backward identity."""

    def __init__(self, comm):
        self.comm = comm

    def parameters(self):
        return []

    def forward(self, x):
        return self.comm.allreduce(np.ascontiguousarray(x)), None

    def backward(self, dy, ctx):
        # forward: y = sum over ranks of x_r, so dL/dx_r = dL/dy
        return dy


def _shard_param(seed, name, full_shape, kind, dtype, decay, index, sharded):
    prm = Parameter(name, init_shard(seed, name, full_shape, kind, dtype, index), decay)
    prm.tp_sharded = sharded
    return prm


def check_divisible(what, value, tp):
    """Raise ValueError unless ``value`` divides by ``tp`` (message names both)."""
    if value % tp:
        raise ValueError(f"{what}={value} is not divisible by tp={tp}: expected a multiple "
                         "of the tensor-parallel size")


class ColumnParallelLinear(Linear):
    """Linear whose output features are split over tp: y_r = f(x) W_r^T + b_r.

    x: (..., in_features) replicated -> y: (..., len(rows)) local.
    rows: the output-feature indices this rank owns (int array); the weight
    shard is ``W_full[rows]`` (len(rows), in), the bias ``b_full[rows]``.
    """

    def __init__(self, name, in_features, out_features, rows, dtype, seed, comm):
        rows = np.asarray(rows)
        self.name, self.in_features, self.out_features = name, in_features, len(rows)
        self.weight = _shard_param(seed, f"{name}.weight", (out_features, in_features),
                                   "trunc_normal", dtype, True, rows, True)
        self.bias = _shard_param(seed, f"{name}.bias", (out_features,), "zeros", dtype, False,
                                 rows, True)
        self.f = CopyToTensorParallel(comm)

    def forward(self, x):
        return Linear.forward(self, x)

    # backward: Linear.backward, the composition of the two halves below

    def backward_input(self, dy, ctx):
        # forward: y_r = x @ W_r.T + b_r (x entered through f): f's all-reduce is on dx
        dx, wctx = Linear.backward_input(self, dy, ctx)
        return self.f.backward(dx, None), wctx


class RowParallelLinear(Linear):
    """Linear whose input features are split over tp: y = g(x_r W_r^T) + b.

    x: (..., len(cols)) local -> y: (..., out_features) replicated.  The weight
    shard is ``W_full[:, cols]``; the bias is replicated and added once, after
    the all-reduce (adding it on every rank before would count it tp times).
    """

    def __init__(self, name, in_features, out_features, cols, dtype, seed, comm):
        cols = np.asarray(cols)
        self.name, self.in_features, self.out_features = name, len(cols), out_features
        self.weight = _shard_param(seed, f"{name}.weight", (out_features, in_features),
                                   "trunc_normal", dtype, True, (slice(None), cols), True)
        self.bias = _shard_param(seed, f"{name}.bias", (out_features,), "zeros", dtype, False,
                                 slice(None), False)
        self.g = ReduceFromTensorParallel(comm)

    def forward(self, x):
        x2d = x.reshape(-1, self.in_features)
        y, _ = self.g.forward(x2d @ self.weight.data.T)
        y += self.bias.data
        return y.reshape(*x.shape[:-1], self.out_features), x2d

    def backward(self, dy, ctx):
        # forward: y = allreduce(x_r @ W_r.T) + b
        return Linear.backward(self, dy, ctx)


class TensorParallelAttention(MultiHeadAttention):
    """Multi-head attention with heads split over tp; (B, T, D) -> (B, T, D).

    qkv is column-parallel over the rows of this rank's heads in each of q, k
    and v (timm's (3, heads, head_dim) output order); proj is row-parallel over
    the same head columns.  Raises ValueError unless heads divides by tp.
    """

    def __init__(self, name, dim, heads, dtype, seed, comm):
        tp, r = comm.size, comm.rank
        check_divisible("heads", heads, tp)
        self.name, self.dim = name, dim
        self.heads, self.head_dim = heads // tp, dim // heads
        self.scale = self.head_dim ** -0.5
        width = self.heads * self.head_dim
        cols = np.arange(r * width, (r + 1) * width)
        rows = np.concatenate([s * dim + cols for s in range(3)])
        self.qkv = ColumnParallelLinear(f"{name}.qkv", dim, 3 * dim, rows, dtype, seed, comm)
        self.proj = RowParallelLinear(f"{name}.proj", dim, dim, cols, dtype, seed, comm)


class TensorParallelMLP(Sequential):
    """fc1 column-parallel -> GELU -> fc2 row-parallel; (..., D) -> (..., D).

    Raises ValueError unless the MLP width divides by tp.
    """

    def __init__(self, name, dim, hidden, dtype, seed, comm):
        tp, r = comm.size, comm.rank
        check_divisible("mlp_dim", hidden, tp)
        part = np.arange(r * hidden // tp, (r + 1) * hidden // tp)
        self.fc1 = ColumnParallelLinear(f"{name}.fc1", dim, hidden, part, dtype, seed, comm)
        self.act = GELU()
        self.fc2 = RowParallelLinear(f"{name}.fc2", hidden, dim, part, dtype, seed, comm)
        super().__init__([self.fc1, self.act, self.fc2])


class TensorParallelBlock(Sequential):
    """The pre-LN ViT block (``minivit.model.Block``) with TP attention and MLP.

    Same parameter names as the serial block; (B, T, D) -> (B, T, D).
    """

    def __init__(self, name, config, seed, comm):
        c, dt = config, config.dtype
        self.name = name
        self.norm1 = LayerNorm(f"{name}.norm1", c.dim, dt, seed, c.ln_eps)
        self.attn = TensorParallelAttention(f"{name}.attn", c.dim, c.heads, dt, seed, comm)
        self.norm2 = LayerNorm(f"{name}.norm2", c.dim, dt, seed, c.ln_eps)
        self.mlp = TensorParallelMLP(f"{name}.mlp", c.dim, c.mlp_dim, dt, seed, comm)
        super().__init__([Residual(Sequential([self.norm1, self.attn])),
                          Residual(Sequential([self.norm2, self.mlp]))])


def shard_index(name, config, tp, rank):
    """Index into the serial parameter ``name`` giving this rank's TP shard, or
    ``slice(None)`` for a replicated parameter (used by tests and gathers)."""
    parts = name.split(".")
    if len(parts) != 5 or parts[0] != "blocks":
        return slice(None)
    layer, kind = parts[3], parts[4]
    d, m = config.dim, config.mlp_dim
    if layer == "qkv":
        width = d // tp
        cols = np.arange(rank * width, (rank + 1) * width)
        return np.concatenate([s * d + cols for s in range(3)])
    if layer == "fc1":
        return np.arange(rank * m // tp, (rank + 1) * m // tp)
    if layer in ("proj", "fc2") and kind == "weight":
        n = d if layer == "proj" else m
        return (slice(None), np.arange(rank * n // tp, (rank + 1) * n // tp))
    return slice(None)


def tp_local_shape(shape, index):
    """The shape of ``array[index]`` for an array of ``shape`` and a :func:`shard_index`
    result (a slice, an index array on axis 0, or ``(slice, index array)``)."""
    index = index if isinstance(index, tuple) else (index,)
    out = list(shape)
    for axis, ix in enumerate(index):
        out[axis] = len(range(*ix.indices(shape[axis]))) if isinstance(ix, slice) else len(ix)
    return tuple(out)

