"""The part of a ViT one rank holds under tensor and pipeline parallelism.

Pipeline stages follow GPipe (Huang et al. 2019, section 2.2) and Megatron-LM
(Narayanan et al. 2021, section 2.2): the units ``[embed, blocks..., head]``
are cut into ``pp`` contiguous stages, balanced by parameter count (each stage
gets at least one block; embedding on the first stage, head on the last).
Within a stage, blocks are tensor-parallel over ``tp`` (Shoeybi et al. 2019,
section 3; ``tensor_parallel.py``).

``ModelShard`` is a ``minivit.model.ViT`` holding only this rank's units (it
inherits ``parameters``, ``unit_ranges``, ``zero_grad`` and ``backward``), so
data parallelism, ZeRO and ``StepEngine`` work on it unchanged.
"""
from functools import partial

import numpy as np

from minivit.model import Block, Embed, Head, ViT
from minivit.params import FlatParams

from .cost import vit_param_specs, vit_unit_sizes
from .recompute import Recompute
from .tensor_parallel import TensorParallelBlock, check_divisible, shard_index, tp_local_shape
from .zero_init import build_sharded


def balance_stages(unit_sizes, pp):
    """Cut units ``[embed, block_0..block_{L-1}, head]`` into ``pp`` contiguous stages.

    unit_sizes : parameter count of each unit (``cost.vit_unit_sizes``).
    Returns ``[(lo, hi)]`` block index ranges, one per stage, minimising the
    largest stage parameter count (embed counted on stage 0, head on the last);
    ties go to the earlier cut.  Exact dynamic programme, O(pp L^2).
    Raises ValueError when there are fewer blocks than stages.
    """
    embed, blocks, head = unit_sizes[0], list(unit_sizes[1:-1]), unit_sizes[-1]
    depth = len(blocks)
    if pp < 1 or depth < pp:
        raise ValueError(f"pp={pp} pipeline stages but depth={depth} blocks: expected "
                         "1 <= pp <= depth (each stage holds at least one block)")
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


class ModelShard(ViT):
    """This rank's stage of the ViT, tensor-parallel over ``grid.tp_group``.

    config, seed : as ``minivit.model.ViT`` (the init is the serial one, sliced).
    grid : ProcessGrid; recompute : wrap each block in ``recompute.Recompute``.
    sharded : ZeRO-3 construction (``zero_init.build_sharded``): units are built
        one at a time and only this rank's dp shards are kept, in
        ``zero_shards`` (for ``zero.ZeroOptimizer``, stage 3); ``flat`` then
        has offsets but no buffers, and the parameters no arrays.

    forward(x): stage 0 takes images (B, C, H, W); later stages the (B, T, D)
    activation; the last stage returns logits (B, K), others (B, T, D).
    backward(dy, ctx) -> dx of the stage input (the images' gradient on stage 0).
    Attributes: ``units``, ``unit_names``, ``flat``, ``stage_blocks`` (lo, hi),
    ``num_params`` (this rank's), ``norm_weight`` (flat-length 0/1 array counting each
    parameter once in the global gradient norm, its dp shard when ``sharded``, or None
    when tp == 1), ``norm_groups`` (communicators
    over which the squared norm is summed: tp and pp when > 1).
    Raises ValueError on heads / MLP width not divisible by tp, or depth < pp.
    """

    def __init__(self, config, seed, grid, recompute=False, sharded=False):
        tp = grid.tp
        if tp > 1:
            check_divisible("heads", config.heads, tp)
            check_divisible("mlp_dim", config.mlp_dim, tp)
        self.config, self.seed, self.grid, self.recompute = config, seed, grid, recompute
        self.stages = balance_stages(vit_unit_sizes(config), grid.pp)
        lo, hi = self.stages[grid.pp_rank]
        self.stage_blocks = (lo, hi)
        first, last = grid.is_first_stage, grid.is_last_stage
        self.unit_names = ((["embed"] if first else []) + [f"blocks.{i}" for i in range(lo, hi)]
                           + (["head"] if last else []))
        self.norm_groups = [c for c in (grid.tp_group, grid.pp_group) if c.size > 1]
        self.zero_shards = None
        if sharded:     # ZeRO-3: unit by unit, only this rank's dp shards kept
            self.units, self.flat, self.zero_shards = build_sharded(
                [partial(self._build_unit, n) for n in self.unit_names], self._local_specs(),
                config.dtype, grid.dp, grid.dp_rank,
                norm_counted=self._norm_counted if tp > 1 else None)
            self.norm_weight = self.zero_shards.norm_weight
            return
        self.units = [self._build_unit(n) for n in self.unit_names]
        self.flat = FlatParams(self.parameters(), config.dtype)
        self.norm_weight = None
        if tp > 1:
            self.norm_weight = np.zeros(self.flat.numel, config.dtype)
            for prm in self.parameters():
                start, stop, _ = self.flat.offsets[prm.name]
                if self._norm_counted(prm):
                    self.norm_weight[start:stop] = 1.0

    def _build_unit(self, name):
        config, seed, grid = self.config, self.seed, self.grid
        if name == "embed":
            return Embed(config, seed)
        if name == "head":
            return Head(config, seed)
        block = (TensorParallelBlock(name, config, seed, grid.tp_group) if grid.tp > 1
                 else Block(name, config, seed))
        return Recompute(block) if self.recompute else block

    def _norm_counted(self, prm):
        # replicated tensors are counted on tp rank 0 only
        return getattr(prm, "tp_sharded", False) or self.grid.tp_rank == 0

    def _local_specs(self):
        """``[[(name, shape on this tp rank)] per unit of this stage]``, without building."""
        lo, hi = self.stage_blocks
        specs = vit_param_specs(self.config)
        first = 0 if self.grid.is_first_stage else 1 + lo
        mine = specs[first:1 + hi + (1 if self.grid.is_last_stage else 0)]
        tp, rank = self.grid.tp, self.grid.tp_rank
        return [[(n, tp_local_shape(s, shard_index(n, self.config, tp, rank))) for n, s in unit]
                for unit in mine]

    def forward(self, x):
        if self.grid.is_first_stage:
            self.check_input(x)          # later stages receive (B, T, D) activations
        ctxs = []
        for unit in self.units:
            x, ctx = unit.forward(x)
            ctxs.append(ctx)
        return x, ctxs


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


def build_model(config, seed, grid, recompute=False, zero=0):
    """The model one rank trains: for ZeRO-3 a ``ModelShard`` built shard by shard
    (``zero_init``: no rank ever holds the full model); otherwise the serial ViT
    for tp = pp = 1 without recompute, else this rank's ``ModelShard``."""
    if zero == 3:
        return ModelShard(config, seed, grid, recompute=recompute, sharded=True)
    if grid.tp == 1 and grid.pp == 1 and not recompute:
        return ViT(config, seed=seed)
    return ModelShard(config, seed, grid, recompute=recompute)
