"""Sequence parallelism inside a tensor-parallel group.

Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
Models" (arXiv 2205.05198), section 4.2.2 and Figure 6.  Megatron TP
(``tensor_parallel.py``) leaves the LayerNorms and the residual adds replicated:
every tp rank holds the whole (B, T, D) there.  Sequence parallelism cuts those
regions along the sequence, so each rank holds (B, T_loc, D), ``T_loc =
ceil(T / t)``.  Entering attention or the MLP, ``g`` all-gathers along T (it
replaces Megatron's ``f``); leaving, ``g-bar`` reduce-scatters along T (it
replaces the all-reduce ``g``).  The two ops live beside ``f`` and ``g`` in
``tensor_parallel.py``; this file holds the block, the region's boundaries and the
LayerNorm whose gradient must be reduced.

Where the region sits in the ViT (one pipeline stage or the whole model)::

    images -> Embed (replicated: every rank computes the whole (B, T, D))
           -> EnterSequenceParallel: pad T to t T_loc, keep this rank's T_loc tokens
           -> blocks: LN and residual on (B, T_loc, D); attention and MLP on (B, T, D)
           -> LeaveSequenceParallel: all-gather, drop the padding -> (B, T, D)
           -> Head (replicated: it reads only the class token, position 0)

Between pipeline stages the (B, T_loc, D) activation is sent, t times fewer bytes
than the (B, T, D) one (Megatron does the same).

Padding: ViT-B/16 has T = 197 (196 patches + the class token), not a multiple of
t = 2, so T is padded with ``t T_loc - T`` zero tokens at the end, all on the last
ranks.  They never reach the loss: ``g`` hands attention and the MLP only the
first T gathered tokens (so no query, key or value is a padding token; no mask is
needed), ``g-bar`` gives the padding positions zeros, the head takes the class
token from position 0 after ``LeaveSequenceParallel`` dropped the padding, and so
the gradient reaching a padding token is exactly zero and adds nothing to any
parameter gradient.  A layout where some rank would hold only padding
(``(t - 1) T_loc >= T``) is refused.

The LayerNorm trap (Megatron-LM issue #1446): a LayerNorm in the sharded region
sees only this rank's tokens, so its weight and bias gradients are partial sums.
``SequenceParallelLayerNorm`` all-reduces them over tp in its backward, or the tp
replicas of the LN parameters drift apart.
"""
import numpy as np

from minivit import kernels
from minivit.layers import LayerNorm, Module, Residual, Sequential

from .tensor_parallel import (TensorParallelAttention, TensorParallelMLP, _sequence_allgather,
                              check_divisible)


def tokens_per_rank(tokens, tp):
    """``T_loc = ceil(T / t)``: the sequence positions one tp rank holds (the last
    ranks' share ends in padding when t does not divide T).

    Raises ValueError when tp < 2 (sequence parallelism lives inside a tensor-parallel
    group), or when some rank would hold only padding, ``(t - 1) T_loc >= T``.
    """
    if tp < 2:
        raise ValueError(f"sequence parallelism with tp={tp}: expected tp >= 2 (it shards "
                         "the LayerNorm regions of a tensor-parallel group along the "
                         "sequence)")
    local = -(-tokens // tp)
    if (tp - 1) * local >= tokens:
        raise ValueError(f"sequence parallelism: T={tokens} tokens over tp={tp} ranks gives "
                         f"T_loc={local}, and rank {tp - 1} would hold only padding; expected "
                         f"(tp - 1) x T_loc < T (every rank holds a real token)")
    return local


def _own_tokens(x, rank, local):
    # (B, T, D) -> zero-padded to (B, t T_loc, D) -> this rank's (B, T_loc, D)
    b, tokens, d = x.shape
    out = np.zeros((b, local, d), x.dtype)
    lo = rank * local
    part = x[:, lo:min(lo + local, tokens)]
    out[:, :part.shape[1]] = part
    return out


class _RegionEnd(Module):
    # both ends hold the tp group, T and T_loc (ValueError from tokens_per_rank)
    def __init__(self, comm, tokens):
        self.comm, self.tokens = comm, tokens
        self.local = tokens_per_rank(tokens, comm.size)


class EnterSequenceParallel(_RegionEnd):
    """Into the sharded region: forward keeps this rank's tokens, backward all-gathers.

    x: (B, T, D), equal on every tp rank (the embedding's output) -> (B, T_loc, D),
    tokens ``[r T_loc, (r+1) T_loc)`` of the sequence zero-padded to ``t T_loc``.
    Backward: dy (B, T_loc, D) -> (B, T, D), every rank's piece (Megatron's
    ``scatter_to_sequence_parallel_region``).  Bytes: one all-gather in backward.
    """

    def forward(self, x):
        return _own_tokens(x, self.comm.rank, self.local), None

    def backward(self, dy, ctx):
        # forward: y_r = x[r-th block]; the loss sees every block, so dL/dx = concat_r dL/dy_r
        return _sequence_allgather(self.comm, dy, self.tokens)


class LeaveSequenceParallel(_RegionEnd):
    """Out of the sharded region: forward all-gathers, backward keeps this rank's tokens.

    x: (B, T_loc, D) -> (B, T, D), the padding dropped, equal on every tp rank (the
    head's input).  Backward: dy (B, T, D), equal on every rank (the head is
    replicated) -> this rank's (B, T_loc, D) block of it; no communication
    (Megatron's ``gather_from_sequence_parallel_region`` with a replicated consumer).
    """

    def forward(self, x):
        return _sequence_allgather(self.comm, x, self.tokens), None

    def backward(self, dy, ctx):
        # forward: y = concat_r(x_r)[:T], replicated downstream: dL/dx_r = dL/dy[r-th block]
        return _own_tokens(dy, self.comm.rank, self.local)


class SequenceParallelLayerNorm(LayerNorm):
    """A LayerNorm on (B, T_loc, D) tokens whose weight and bias gradients are summed
    over tp in the backward (the Megatron-LM #1446 trap; Korthikanti et al. 2022,
    section 4.2.2: the parameters are replicated, the tokens are not).

    Per micro-batch one all-reduce of ``2 D`` elements of the model dtype.
    ``reduce_grads = False`` is the deliberately wrong variant the tests use to show
    the replicas drift without it.
    """

    def __init__(self, name, dim, dtype, seed, eps, comm):
        super().__init__(name, dim, dtype, seed, eps)
        self.comm, self.reduce_grads = comm, True

    def backward(self, dy, ctx):
        # forward: y = (x - mean) * rstd * w + b on this rank's tokens; dw, db summed over
        # the tokens of every rank
        x2d, mean, rstd = ctx
        part = np.zeros((2, self.dim), self.weight.grad.dtype)
        dx = kernels.layernorm_backward(dy.reshape(-1, self.dim), x2d, mean, rstd,
                                        self.weight.data, part[0], part[1])
        if self.reduce_grads:
            self.comm.allreduce(part)
        self.weight.grad += part[0]
        self.bias.grad += part[1]
        return dx.reshape(dy.shape)


class SequenceParallelBlock(Sequential):
    """The pre-LN ViT block with TP attention and MLP and sequence-parallel LN regions.

    x: (B, T_loc, D) -> (B, T_loc, D), T_loc = ceil(T / t) (``tokens_per_rank``).
    Same parameter names and shards as ``TensorParallelBlock``; attention and the MLP
    run on the T real tokens only (``g`` drops the padding).  selective : as
    ``minivit.model.Block``.
    """

    def __init__(self, name, config, seed, comm, selective=False):
        c, dt = config, config.dtype
        check_divisible("heads", c.heads, comm.size)
        tokens = c.seq_len
        tokens_per_rank(tokens, comm.size)
        self.name = name
        self.norm1 = SequenceParallelLayerNorm(f"{name}.norm1", c.dim, dt, seed, c.ln_eps, comm)
        self.attn = TensorParallelAttention(f"{name}.attn", c.dim, c.heads, dt, seed, comm,
                                            tokens=tokens, selective=selective)
        self.norm2 = SequenceParallelLayerNorm(f"{name}.norm2", c.dim, dt, seed, c.ln_eps, comm)
        self.mlp = TensorParallelMLP(f"{name}.mlp", c.dim, c.mlp_dim, dt, seed, comm,
                                     tokens=tokens)
        super().__init__([Residual(Sequential([self.norm1, self.attn])),
                          Residual(Sequential([self.norm2, self.mlp]))])


class Boundary(Sequential):
    """A unit (embed or head) joined to the region boundary beside it, so the pipeline,
    ZeRO and checkpoints still see ``[embed, blocks..., head]`` with the same parameters.

    ``Boundary(embed, EnterSequenceParallel(...))``; ``Boundary(LeaveSequenceParallel(...), head)``.
    """

    def __init__(self, *modules):
        super().__init__(modules)
        self.name = next(getattr(m, "name") for m in modules if hasattr(m, "name"))
