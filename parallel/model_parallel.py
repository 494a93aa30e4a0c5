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
import numpy as np

from minivit.model import Block, Embed, Head, ViT
from minivit.params import FlatParams

from .cost import vit_unit_sizes
from .recompute import Recompute
from .sequence_parallel import (Boundary, EnterSequenceParallel, LeaveSequenceParallel,
                                SequenceParallelBlock, tokens_per_rank)
from .tensor_parallel import TensorParallelBlock, check_divisible


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
    sequence_parallel : shard the LayerNorm/residual regions along the sequence inside
    the tp group (``sequence_parallel.py``): blocks take and give (B, T_loc, D), the
    embedding is followed by ``EnterSequenceParallel`` and the head preceded by
    ``LeaveSequenceParallel`` (each joined to its unit by a ``Boundary``).

    forward(x): stage 0 takes images (B, C, H, W); later stages the activation
    ``activation_shape(B)``; the last stage returns logits (B, K), others that activation.
    backward(dy, ctx) -> dx of the stage input (the images' gradient on stage 0).
    Attributes: ``units``, ``unit_names``, ``flat``, ``stage_blocks`` (lo, hi),
    ``num_params`` (this rank's), ``norm_weight`` (flat-length 0/1 array counting each parameter once in the
    global gradient norm, or None when tp == 1), ``norm_groups`` (communicators
    over which the squared norm is summed: tp and pp when > 1).
    Raises ValueError on heads / MLP width not divisible by tp, depth < pp, or
    sequence parallelism with tp = 1 or a rank holding only padding.
    """

    def __init__(self, config, seed, grid, recompute=False, sequence_parallel=False):
        tp = grid.tp
        if tp > 1:
            check_divisible("heads", config.heads, tp)
            check_divisible("mlp_dim", config.mlp_dim, tp)
        self.sequence_parallel = sequence_parallel
        self.tokens_local = (tokens_per_rank(config.seq_len, tp) if sequence_parallel
                             else config.seq_len)
        self.config, self.seed, self.grid = config, seed, grid
        self.stages = balance_stages(vit_unit_sizes(config), grid.pp)
        lo, hi = self.stages[grid.pp_rank]
        self.stage_blocks = (lo, hi)
        units, names = [], []
        if grid.is_first_stage:
            units.append(self._boundary(Embed(config, seed)))
            names.append("embed")
        for i in range(lo, hi):
            block = self._block(f"blocks.{i}")
            units.append(Recompute(block) if recompute else block)
            names.append(f"blocks.{i}")
        if grid.is_last_stage:
            units.append(self._boundary(Head(config, seed)))
            names.append("head")
        self.units, self.unit_names = units, names
        self.flat = FlatParams(self.parameters(), config.dtype)
        self.norm_weight = None
        if tp > 1:
            self.norm_weight = np.zeros(self.flat.numel, config.dtype)
            for prm in self.parameters():
                start, stop, _ = self.flat.offsets[prm.name]
                # replicated tensors are counted on tp rank 0 only
                if getattr(prm, "tp_sharded", False) or grid.tp_rank == 0:
                    self.norm_weight[start:stop] = 1.0
        self.norm_groups = [c for c in (grid.tp_group, grid.pp_group) if c.size > 1]

    def _block(self, name):
        comm, cfg, seed = self.grid.tp_group, self.config, self.seed
        if self.sequence_parallel:
            return SequenceParallelBlock(name, cfg, seed, comm)
        if self.grid.tp > 1:
            return TensorParallelBlock(name, cfg, seed, comm)
        return Block(name, cfg, seed)

    def _boundary(self, unit):
        # the embedding feeds the sequence-sharded region, the head reads its gathered end
        if not self.sequence_parallel:
            return unit
        comm, tokens = self.grid.tp_group, self.config.seq_len
        if isinstance(unit, Embed):
            return Boundary(unit, EnterSequenceParallel(comm, tokens))
        return Boundary(LeaveSequenceParallel(comm, tokens), unit)

    def activation_shape(self, b):
        """Shape of the activation between stages for ``b`` images: (b, T, D), or
        (b, T_loc, D) under sequence parallelism (t times fewer p2p bytes)."""
        return (b, self.tokens_local, self.config.dim)

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


def build_model(config, seed, grid, recompute=False, sequence_parallel=False):
    """The serial ViT for tp = pp = 1 without recompute, else this rank's ModelShard."""
    if grid.tp == 1 and grid.pp == 1 and not recompute and not sequence_parallel:
        return ViT(config, seed=seed)
    return ModelShard(config, seed, grid, recompute=recompute,
                      sequence_parallel=sequence_parallel)
