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
so they stay bitwise identical without communication (under sequence
parallelism the LayerNorms see a part of the tokens and their gradients are
all-reduced: ``sequence_parallel.py``).  Their gradients are counted once in
the global norm (``ModelShard.norm_weight``).

Sequence parallelism (Korthikanti et al. 2022, section 4.2.2) swaps ``f`` and
``g`` for their sequence-parallel conjugates ``g`` (all-gather along T forward,
reduce-scatter backward) and ``g-bar`` (reduce-scatter forward, all-gather
backward), defined below; the linears take them as their ``f`` / ``g``.

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


def _sequence_allgather(comm, x, tokens):
    # (B, T/t, D) on each rank -> (B, t T/t, D) in rank order -> the first ``tokens``
    b, tl, d = x.shape
    full = comm.allgather(np.ascontiguousarray(x), np.empty((comm.size, b, tl, d), x.dtype))
    return np.ascontiguousarray(full.transpose(1, 0, 2, 3).reshape(b, -1, d)[:, :tokens])


def _sequence_reduce_scatter(comm, x, local):
    # (B, tokens, D), zero-padded to (B, t local, D), summed over ranks; rank r keeps
    # tokens [r local, (r+1) local): the padding adds zeros, never a value
    b, tokens, d = x.shape
    full = np.zeros((b, comm.size * local, d), x.dtype)
    full[:, :tokens] = x
    blocks = np.ascontiguousarray(full.reshape(b, comm.size, local, d).transpose(1, 0, 2, 3))
    return comm.reduce_scatter(blocks, np.empty((b, local, d), x.dtype))


class _SequenceOp:
    # the two ops' shared state: the tp group, T, and T_loc = ceil(T / t) per rank
    def __init__(self, comm, tokens):
        self.comm, self.tokens = comm, tokens
        self.local = -(-tokens // comm.size)

    def parameters(self):
        return []


class GatherFromSequenceParallel(_SequenceOp):
    """Korthikanti et al. 2022 (arXiv 2205.05198), section 4.2.2, Figure 6: ``g``.

    Forward all-gather along the sequence, backward reduce-scatter: it replaces
    Megatron's ``f`` (identity forward, all-reduce backward) in front of the
    column-parallel qkv and fc1 when the LayerNorm region is sequence-parallel.
    x: (B, T_loc, D) this rank's tokens -> (B, tokens, D), the first ``tokens`` of
    the ``t T_loc`` gathered ones, ``T_loc = ceil(tokens / t)`` (the rest is
    padding, ``sequence_parallel.py``).  Backward: dy (B, tokens, D) -> (B, T_loc, D).
    Bytes each way: ``(t-1) B T_loc D s``.
    """

    def forward(self, x):
        return _sequence_allgather(self.comm, x, self.tokens), None

    def backward(self, dy, ctx):
        # forward: y = concat_r(x_r)[:tokens], so dL/dx_r = rank r's block of sum_ranks dL/dy
        return _sequence_reduce_scatter(self.comm, dy, self.local)


class ReduceScatterToSequenceParallel(_SequenceOp):
    """Korthikanti et al. 2022, section 4.2.2, Figure 6: ``g-bar``, the conjugate of ``g``.

    Forward reduce-scatter along the sequence, backward all-gather: it replaces
    Megatron's ``g`` (all-reduce forward) after the row-parallel proj and fc2.
    x: (B, tokens, D) partial sums -> (B, T_loc, D), this rank's tokens of the sum
    (``T_loc = ceil(tokens / t)``; padded tokens get zeros).  Backward: dy
    (B, T_loc, D) -> (B, tokens, D).  Bytes each way: ``(t-1) B T_loc D s``, so
    ``g`` + ``g-bar`` send what one all-reduce of (B, t T_loc, D) sends (section 4.2.2).
    """

    def forward(self, x):
        return _sequence_reduce_scatter(self.comm, x, self.local), None

    def backward(self, dy, ctx):
        # forward: y_r = rank r's block of sum_ranks x, so dL/dx = concat_r(dL/dy_r)
        return _sequence_allgather(self.comm, dy, self.tokens)


def sequence_ops(comm, tokens):
    """``(f, g)`` of a column/row-parallel pair: ``(None, None)`` (Megatron's f and g,
    the linears' default) when ``tokens`` is None, else the sequence-parallel ``g`` and
    ``g-bar`` over ``tokens`` positions."""
    if tokens is None:
        return None, None
    return GatherFromSequenceParallel(comm, tokens), ReduceScatterToSequenceParallel(comm, tokens)


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

    def __init__(self, name, in_features, out_features, rows, dtype, seed, comm, f=None):
        rows = np.asarray(rows)
        self.name, self.in_features, self.out_features = name, in_features, len(rows)
        self.weight = _shard_param(seed, f"{name}.weight", (out_features, in_features),
                                   "trunc_normal", dtype, True, rows, True)
        self.bias = _shard_param(seed, f"{name}.bias", (out_features,), "zeros", dtype, False,
                                 rows, True)
        # f: Megatron's f, or with sequence parallelism its all-gather ``g``
        self.f = CopyToTensorParallel(comm) if f is None else f

    def forward(self, x):
        return Linear.forward(self, self.f.forward(x)[0])

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

    def __init__(self, name, in_features, out_features, cols, dtype, seed, comm, g=None):
        cols = np.asarray(cols)
        self.name, self.in_features, self.out_features = name, len(cols), out_features
        self.weight = _shard_param(seed, f"{name}.weight", (out_features, in_features),
                                   "trunc_normal", dtype, True, (slice(None), cols), True)
        self.bias = _shard_param(seed, f"{name}.bias", (out_features,), "zeros", dtype, False,
                                 slice(None), False)
        # g: Megatron's g, or with sequence parallelism its reduce-scatter ``g-bar``
        self.g = ReduceFromTensorParallel(comm) if g is None else g

    def forward(self, x):
        x2d = x.reshape(-1, self.in_features)
        partial = (x2d @ self.weight.data.T).reshape(*x.shape[:-1], self.out_features)
        y, gctx = self.g.forward(partial)
        y += self.bias.data
        return y, (x2d, gctx)

    # backward: Linear.backward, the composition of backward_input and backward_weight

    def backward_input(self, dy, ctx):
        # forward: y = g(x_r @ W_r.T) + b: dy passes g's backward (identity under TP, an
        # all-gather under SP), so the bias gradient below sums every token's dy once
        x2d, gctx = ctx
        return Linear.backward_input(self, self.g.backward(dy, gctx), x2d)


class TensorParallelAttention(MultiHeadAttention):
    """Multi-head attention with heads split over tp; (B, T, D) -> (B, T, D).

    qkv is column-parallel over the rows of this rank's heads in each of q, k
    and v (timm's (3, heads, head_dim) output order); proj is row-parallel over
    the same head columns.  Raises ValueError unless heads divides by tp.
    tokens : None (Megatron TP: ``f``/``g``), or the sequence length T for
    sequence parallelism: x (B, T_loc, D) -> (B, T_loc, D) through ``g``/``g-bar``
    (all-gather / reduce-scatter along T, ``sequence_ops``).
    selective : the core keeps the row log-sum-exp of this rank's heads, not P.
    """

    def __init__(self, name, dim, heads, dtype, seed, comm, tokens=None, selective=False):
        tp, r = comm.size, comm.rank
        check_divisible("heads", heads, tp)
        self.name, self.dim = name, dim
        self.heads, self.head_dim = heads // tp, dim // heads
        self.scale = self.head_dim ** -0.5
        self.selective = selective
        width = self.heads * self.head_dim
        cols = np.arange(r * width, (r + 1) * width)
        rows = np.concatenate([s * dim + cols for s in range(3)])
        f, g = sequence_ops(comm, tokens)
        self.qkv = ColumnParallelLinear(f"{name}.qkv", dim, 3 * dim, rows, dtype, seed, comm, f)
        self.proj = RowParallelLinear(f"{name}.proj", dim, dim, cols, dtype, seed, comm, g)


class TensorParallelMLP(Sequential):
    """fc1 column-parallel -> GELU -> fc2 row-parallel; (..., D) -> (..., D).

    Raises ValueError unless the MLP width divides by tp.  tokens : as
    :class:`TensorParallelAttention` (sequence parallelism when given).
    """

    def __init__(self, name, dim, hidden, dtype, seed, comm, tokens=None):
        tp, r = comm.size, comm.rank
        check_divisible("mlp_dim", hidden, tp)
        part = np.arange(r * hidden // tp, (r + 1) * hidden // tp)
        f, g = sequence_ops(comm, tokens)
        self.fc1 = ColumnParallelLinear(f"{name}.fc1", dim, hidden, part, dtype, seed, comm, f)
        self.act = GELU()
        self.fc2 = RowParallelLinear(f"{name}.fc2", hidden, dim, part, dtype, seed, comm, g)
        super().__init__([self.fc1, self.act, self.fc2])


class TensorParallelBlock(Sequential):
    """The pre-LN ViT block (``minivit.model.Block``) with TP attention and MLP.

    Same parameter names as the serial block; (B, T, D) -> (B, T, D).
    selective : as ``minivit.model.Block``.
    """

    def __init__(self, name, config, seed, comm, selective=False):
        c, dt = config, config.dtype
        self.name = name
        self.norm1 = LayerNorm(f"{name}.norm1", c.dim, dt, seed, c.ln_eps)
        self.attn = TensorParallelAttention(f"{name}.attn", c.dim, c.heads, dt, seed, comm,
                                            selective=selective)
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

