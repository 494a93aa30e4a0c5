"""The part of a ViT one rank holds under tensor and pipeline parallelism.

Pipeline stages follow GPipe (Huang et al. 2019, section 2.2) and Megatron-LM
(Narayanan et al. 2021, section 2.2): the units ``[embed, blocks..., head]``
are cut into ``pp`` contiguous stages, balanced by parameter count (each stage
gets at least one block; embedding on the first stage, head on the last).
Within a stage, blocks are tensor-parallel over ``tp`` (Shoeybi et al. 2019,
section 3; ``tensor_parallel.py``).

Interleaved 1F1B (Narayanan et al. 2021, section 2.2.2): the units are cut into
``pp x v`` contiguous *virtual* stages instead, and rank ``s`` holds the ``v``
non-adjacent chunks ``c = 0..v-1``, chunk ``c`` being virtual stage ``c pp + s``.
The rank's unit list is the concatenation of its chunks, so its flat buffer,
gradients, optimizer, ZeRO shards and checkpoints work on it unchanged.

``ModelShard`` is a ``minivit.model.ViT`` holding only this rank's units (it
inherits ``parameters``, ``unit_ranges`` and ``zero_grad``), so
data parallelism, ZeRO and ``StepEngine`` work on it unchanged.
"""
from functools import partial

import numpy as np

from minivit.layers import chain_backward_input, chain_backward_weight
from minivit.model import Block, Embed, Head, ViT
from minivit.params import FlatParams

from .cost import recompute_mode, vit_param_specs, vit_unit_sizes
from .recompute import Recompute
from .sequence_parallel import (Boundary, EnterSequenceParallel, LeaveSequenceParallel,
                                SequenceParallelBlock, tokens_per_rank)
from .tensor_parallel import TensorParallelBlock, check_divisible, shard_index, tp_local_shape
from .shard import build_sharded


def balance_stages(unit_sizes, pp, virtual_stages=1):
    """Cut units ``[embed, block_0..block_{L-1}, head]`` into ``pp x virtual_stages``
    contiguous (virtual) stages.

    unit_sizes : parameter count of each unit (``cost.vit_unit_sizes``).
    Returns ``[(lo, hi)]`` block index ranges, one per (virtual) stage in model
    order, minimising the largest stage parameter count (embed counted on the
    first, head on the last); ties go to the earlier cut.  Exact dynamic
    programme, O(n L^2) for n stages.  Virtual stage ``c pp + s`` is chunk ``c``
    of rank ``s`` (interleaved 1F1B).
    Raises ValueError when there are fewer blocks than (virtual) stages.
    """
    embed, blocks, head = unit_sizes[0], list(unit_sizes[1:-1]), unit_sizes[-1]
    depth = len(blocks)
    if virtual_stages > 1 and depth < pp * virtual_stages:
        raise ValueError(f"pp={pp} x virtual_stages={virtual_stages} = "
                         f"{pp * virtual_stages} virtual stages but depth={depth} blocks: "
                         "expected pp x virtual stages <= depth (each virtual stage holds "
                         "at least one block)")
    if pp < 1 or depth < pp:
        raise ValueError(f"pp={pp} pipeline stages but depth={depth} blocks: expected "
                         "1 <= pp <= depth (each stage holds at least one block)")
    pp = pp * virtual_stages
    prefix = np.concatenate([[0], np.cumsum(blocks)]).astype(np.int64)

    def cost(s, lo, hi):
        return (prefix[hi] - prefix[lo] + (embed if s == 0 else 0)
                + (head if s == pp - 1 else 0))

    inf = float("inf")
    best = [[inf] * (depth + 1) for _ in range(pp + 1)]   # best[s][i]: stages < s cover blocks < i
    cut = [[0] * (depth + 1) for _ in range(pp + 1)]
    best[0][0] = 0
    for s in range(pp):
        for hi in range(s + 1, depth + 1):
            for lo in range(s, hi):
                value = max(best[s][lo], cost(s, lo, hi))
                if value < best[s + 1][hi]:
                    best[s + 1][hi], cut[s + 1][hi] = value, lo
    ranges, hi = [], depth
    for s in range(pp, 0, -1):
        lo = cut[s][hi]
        ranges.append((lo, hi))
        hi = lo
    return ranges[::-1]


def virtual_stage_units(stages):
    """Global unit indices (0 embed, ``1 + i`` block i, ``depth + 1`` head) of each
    (virtual) stage of :func:`balance_stages`' ``stages``, in model order."""
    depth, last = stages[-1][1], len(stages) - 1
    return [([0] if k == 0 else []) + [1 + i for i in range(lo, hi)]
            + ([depth + 1] if k == last else []) for k, (lo, hi) in enumerate(stages)]


class ModelShard(ViT):
    """This rank's stage of the ViT, tensor-parallel over ``grid.tp_group``.

    config, seed : as ``minivit.model.ViT`` (the init is the serial one, sliced).
    grid : ProcessGrid; recompute : True or ``"full"`` wraps each block in
        ``recompute.Recompute``; ``"selective"`` builds blocks whose attention core
        keeps the row log-sum-exp instead of P (``cost.recompute_mode``).
    sequence_parallel : shard the LayerNorm/residual regions along the sequence inside
        the tp group (``sequence_parallel.py``): blocks take and give (B, T_loc, D), the
        embedding is followed by ``EnterSequenceParallel`` and the head preceded by
        ``LeaveSequenceParallel`` (each joined to its unit by a ``Boundary``).
    virtual_stages : ``v`` model chunks per rank (interleaved 1F1B); chunk ``c``
        is virtual stage ``c pp + s`` of ``pp v`` (module docstring).
    sharded : ZeRO-3 construction (``shard.build_sharded``): units are built
        one at a time and only this rank's dp shards are kept, in
        ``zero_shards`` (for ``zero.ZeroOptimizer``, stage 3); ``flat`` then
        has offsets but no buffers, and the parameters no arrays.

    forward(x, chunk=0): virtual stage 0 takes images (B, C, H, W); later ones the
    activation ``activation_shape(B)``; the last virtual stage returns logits (B, K),
    others that activation.  backward(dy, ctx, chunk=0) -> dx of the chunk input (the
    images' gradient on virtual stage 0); ``backward_input`` / ``backward_weight``
    alike.  With v = 1 chunk 0 is the whole stage.
    Attributes: ``units``, ``unit_names``, ``flat``, ``stages`` (block ranges of
    every virtual stage), ``chunk_blocks`` (this rank's, per chunk),
    ``chunk_units`` ((start, stop) into ``units`` per chunk), ``global_units``
    (serial unit index of each of ``units``), ``num_blocks``, ``stage_blocks``
    ((lo, hi), v = 1 only), ``num_params`` (this rank's), ``norm_weight``
    (flat-length 0/1 array counting each parameter once in the global gradient
    norm, its dp shard when ``sharded``, or None when tp == 1), ``norm_groups`` (communicators over which the
    squared norm is summed: tp and pp when > 1).
    Raises ValueError on heads / MLP width not divisible by tp, depth < pp v, or
    sequence parallelism with tp = 1 or a rank holding only padding.
    """

    def __init__(self, config, seed, grid, recompute=False, sequence_parallel=False,
                 virtual_stages=1, sharded=False):
        tp = grid.tp
        if tp > 1:
            check_divisible("heads", config.heads, tp)
            check_divisible("mlp_dim", config.mlp_dim, tp)
        self.sequence_parallel = sequence_parallel
        self.tokens_local = (tokens_per_rank(config.seq_len, tp) if sequence_parallel
                             else config.seq_len)
        self.config, self.seed, self.grid, self.recompute = config, seed, grid, recompute
        self.recompute_mode = recompute_mode(recompute)
        self.virtual_stages = virtual_stages
        self.stages = balance_stages(vit_unit_sizes(config), grid.pp, virtual_stages)
        mine = [c * grid.pp + grid.pp_rank for c in range(virtual_stages)]
        self.chunk_blocks = [self.stages[k] for k in mine]
        self.num_blocks = sum(hi - lo for lo, hi in self.chunk_blocks)
        if virtual_stages == 1:
            self.stage_blocks = self.chunk_blocks[0]
        every = virtual_stage_units(self.stages)
        self.global_units, self.chunk_units = [], []
        for k in mine:
            start = len(self.global_units)
            self.global_units.extend(every[k])
            self.chunk_units.append((start, len(self.global_units)))
        self.unit_names = [self._unit_name(u) for u in self.global_units]
        self.norm_groups = [c for c in (grid.tp_group, grid.pp_group) if c.size > 1]
        self.zero_shards = None
        if sharded:     # ZeRO-3: unit by unit, only this rank's dp shards kept
            self.units, self.flat, self.zero_shards = build_sharded(
                [partial(self._make_unit, u) for u in self.global_units], self._local_specs(),
                config.dtype, grid.dp, grid.dp_rank,
                norm_counted=self._norm_counted if tp > 1 else None)
            self.norm_weight = self.zero_shards.norm_weight
            return
        self.units = [self._make_unit(u) for u in self.global_units]
        self.flat = FlatParams(self.parameters(), config.dtype)
        self.norm_weight = None
        if tp > 1:
            self.norm_weight = np.zeros(self.flat.numel, config.dtype)
            for prm in self.parameters():
                start, stop, _ = self.flat.offsets[prm.name]
                if self._norm_counted(prm):
                    self.norm_weight[start:stop] = 1.0

    def _norm_counted(self, prm):
        # replicated tensors are counted on tp rank 0 only
        return getattr(prm, "tp_sharded", False) or self.grid.tp_rank == 0

    def _local_specs(self):
        """``[[(name, shape on this tp rank)] per unit of this rank]``, without building."""
        specs = vit_param_specs(self.config)
        tp, rank = self.grid.tp, self.grid.tp_rank
        return [[(n, tp_local_shape(s, shard_index(n, self.config, tp, rank)))
                 for n, s in specs[u]] for u in self.global_units]

    def _unit_name(self, u):
        """Name of serial unit ``u`` (0 embed, 1 + i block i, depth + 1 head)."""
        if u == 0:
            return "embed"
        return "head" if u == self.config.depth + 1 else f"blocks.{u - 1}"

    def _make_unit(self, u):
        """Serial unit ``u`` as this rank holds it (tp shard, sequence-parallel ends,
        recompute wrapper)."""
        config, seed = self.config, self.seed
        if u == 0:
            return self._boundary(Embed(config, seed))
        if u == config.depth + 1:
            return self._boundary(Head(config, seed))
        block = self._block(self._unit_name(u))
        return Recompute(block) if self.recompute_mode == "full" else block

    def _block(self, name):
        comm, cfg, seed = self.grid.tp_group, self.config, self.seed
        selective = self.recompute_mode == "selective"
        if self.sequence_parallel:
            return SequenceParallelBlock(name, cfg, seed, comm, selective)
        if self.grid.tp > 1:
            return TensorParallelBlock(name, cfg, seed, comm, selective)
        return Block(name, cfg, seed, selective)

    def _boundary(self, unit):
        # the embedding feeds the sequence-sharded region, the head reads its gathered end
        if not self.sequence_parallel:
            return unit
        comm, tokens = self.grid.tp_group, self.config.seq_len
        if isinstance(unit, Embed):
            return Boundary(unit, EnterSequenceParallel(comm, tokens))
        return Boundary(LeaveSequenceParallel(comm, tokens), unit)

    def activation_shape(self, b):
        """Shape of the activation between (virtual) stages for ``b`` images: (b, T, D),
        or (b, T_loc, D) under sequence parallelism (t times fewer p2p bytes)."""
        return (b, self.tokens_local, self.config.dim)

    def _chunk(self, chunk):
        lo, hi = self.chunk_units[chunk]
        return self.units[lo:hi]

    def forward(self, x, chunk=0):
        if chunk == 0 and self.grid.is_first_stage:
            self.check_input(x)          # later stages receive (B, T, D) activations
        ctxs = []
        for unit in self._chunk(chunk):
            x, ctx = unit.forward(x)
            ctxs.append(ctx)
        return x, ctxs

    def backward(self, dy, ctx, chunk=0):
        # forward: y = units[-1](... units[0](x)) over this chunk's units
        for unit, c in zip(reversed(self._chunk(chunk)), reversed(ctx)):
            dy = unit.backward(dy, c)
        return dy

    def backward_input(self, dy, ctx, chunk=0):
        # forward: y = units[-1](... units[0](x)) over this chunk's units
        return chain_backward_input(self._chunk(chunk), dy, ctx)

    def backward_weight(self, wctx, chunk=0):
        chain_backward_weight(self._chunk(chunk), wctx)


_SUMSQ_CHUNK = 1 << 18      # elements per float64 chunk: 2 MiB of temporaries at most


def weighted_sumsq(grad, weight):
    """Sum of ``weight * grad**2`` in float64 (``weight`` None: plain sum of squares).

    grad, weight : 1-D arrays of equal length (any float dtype).  Works in
    chunks of ``_SUMSQ_CHUNK`` elements, so the float64 temporaries stay at
    a few MiB instead of three float64 copies of the rank's whole gradient
    (3 x 8 Psi / tp bytes: 990 MiB per rank for vit-base at tp 2, measured by
    ``run/bench.py rankmem``, issue 15).
    """
    g = np.ascontiguousarray(grad).ravel()
    w = None if weight is None else np.ascontiguousarray(weight).ravel()
    total = 0.0
    for lo in range(0, g.size, _SUMSQ_CHUNK):
        gc = g[lo:lo + _SUMSQ_CHUNK].astype(np.float64)
        if w is None:
            total += float(np.dot(gc, gc))
        else:
            total += float(np.dot(gc * w[lo:lo + _SUMSQ_CHUNK], gc))
    return total


def build_model(config, seed, grid, recompute=False, sequence_parallel=False,
                virtual_stages=1, zero=0):
    """The model one rank trains: for ZeRO-3 a ``ModelShard`` built shard by shard
    (``shard.build_sharded``: no rank ever holds the full model); otherwise the serial ViT for
    tp = pp = 1 without full recompute or sequence parallelism (``recompute="selective"``:
    ``ViT(selective=True)``), else this rank's ``ModelShard`` (``virtual_stages`` chunks
    per rank: interleaved 1F1B).  recompute : a ``cost.recompute_mode`` value."""
    layout = {"recompute": recompute, "sequence_parallel": sequence_parallel,
              "virtual_stages": virtual_stages}
    if zero == 3:
        return ModelShard(config, seed, grid, sharded=True, **layout)
    mode = recompute_mode(recompute)
    if grid.tp == 1 and grid.pp == 1 and mode != "full" and not sequence_parallel:
        return ViT(config, seed=seed, selective=mode == "selective")
    return ModelShard(config, seed, grid, **layout)
