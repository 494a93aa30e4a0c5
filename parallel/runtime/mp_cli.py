"""Command-line glue of tensor/pipeline parallelism, recompute and offload for
``run/pretrain.py`` (the script only calls these; the logic lives here).

Flags: ``--tp``, ``--pp``, ``--schedule {gpipe,1f1b}``, ``--recompute``,
``--offload-dir DIR``, ``--timeline PNG``.
"""
from pathlib import Path

from minivit.model import ViT

from .. import cost
from .checkpoint import DataParallelState
from .checkpoint_mp import ModelParallelState
from ..model_parallel import ModelShard
from ..offload import Offload, rss_bytes
from ..pipeline import SCHEDULES, PipelineForward, check_schedule
from ..tools.timeline import gather_timeline, measured_bubble, plot_timeline, theoretical_bubble


def add_model_parallel_flags(parser):
    """Add the flags above (``--tp``/``--pp`` must not exist yet)."""
    parser.add_argument("--tp", type=int, default=1,
                        help="tensor-parallel size (Megatron: heads and MLP width split)")
    parser.add_argument("--pp", type=int, default=1,
                        help="pipeline-parallel size (stages balanced by parameter count; "
                             "micro-batches = accumulation steps)")
    parser.add_argument("--schedule", default="1f1b", choices=SCHEDULES,
                        help="pipeline schedule (with --pp > 1)")
    parser.add_argument("--recompute", action="store_true",
                        help="activation recompute per block: keep the block input, "
                             "rebuild the rest in backward")
    parser.add_argument("--offload-dir", default=None,
                        help="keep the AdamW state (and the ZeRO-3 master shard) in "
                             "numpy.memmap files in this local folder")
    parser.add_argument("--timeline", default=None,
                        help="PNG: Gantt chart of the last step's pipeline schedule "
                             "(with --pp > 1), with the measured bubble")


def check_model_parallel_flags(args, parser, config_heads_mlp_depth=None):
    """Reject bad combinations before any work (same verdict on every rank).

    config_heads_mlp_depth : ``(heads, mlp_dim, depth)`` of the model, checked
    for divisibility by tp and depth >= pp.  Needs ``args.accum``.
    """
    if args.pp > 1:
        try:
            check_schedule(args.schedule, args.accum, args.pp)
        except ValueError as exc:
            parser.error(f"--schedule {args.schedule} --pp {args.pp}: {exc}")
    elif args.timeline:
        parser.error(f"--timeline {args.timeline}: expected --pp > 1 (no pipeline to draw)")
    if args.offload_dir and Path(args.offload_dir).exists() and \
            not Path(args.offload_dir).is_dir():
        parser.error(f"--offload-dir {args.offload_dir}: exists and is not a directory; "
                     "expected a folder on local disk")
    if config_heads_mlp_depth is not None:
        heads, mlp, depth = config_heads_mlp_depth
        for what, value in (("heads", heads), ("mlp_dim", mlp)):
            if value % args.tp:
                parser.error(f"--tp {args.tp}: the model's {what}={value} is not divisible by "
                             f"tp={args.tp}; expected a divisor of {value}")
        if args.pp > depth:
            parser.error(f"--pp {args.pp}: the model has depth={depth} blocks; expected "
                         "pp <= depth (each stage holds at least one block)")


def build_model(args, config, grid):
    """The serial ViT for tp = pp = 1 without recompute, else this rank's ModelShard."""
    if grid.tp == 1 and grid.pp == 1 and not args.recompute:
        return ViT(config, seed=args.seed)
    return ModelShard(config, args.seed, grid, recompute=args.recompute)


def param_count_text(model):
    """``"N parameters"``, plus this rank's share when the model is split over tp/pp."""
    total = sum(cost.vit_unit_sizes(model.config))
    if model.num_params == total:
        return f"{total:,} parameters"
    return f"{total:,} parameters ({model.num_params:,} on this rank)"


def state_adapter(trainer):
    """Checkpoint adapter for the trainer's layout."""
    if not isinstance(trainer.model, ModelShard):
        return DataParallelState(trainer)
    return ModelParallelState(trainer)


def eval_model(trainer):
    """The object the Evaluator calls ``forward`` on (pipelined forward when pp > 1)."""
    if trainer.grid.pp > 1:
        return PipelineForward(trainer.model, trainer.grid)
    return trainer.model


def attach_offload(args, trainer, grid):
    """Offload the optimizer state if ``--offload-dir``; returns the Offload or None."""
    if not args.offload_dir:
        return None
    return Offload(trainer, Path(args.offload_dir), grid.rank)


def audit_lines(trainer, micro_batch, recompute, offload=None):
    """``[audit]`` lines for tp/pp: predicted bytes per group (cost.py), pipeline
    peak contexts and activation bytes, offloaded bytes and RSS."""
    grid, model, cfg = trainer.grid, trainer.model, trainer.model.config
    item = trainer.itemsize
    lines = []
    if isinstance(model, ModelShard):
        lo, hi = model.stage_blocks
        tp = cost.tp_step_bytes(micro_batch, cfg.seq_len, cfg.dim, hi - lo, trainer.accum,
                                grid.tp, item, recompute)
        pp = cost.pp_step_bytes(micro_batch, cfg.seq_len, cfg.dim, trainer.accum, item,
                                not grid.is_first_stage, not grid.is_last_stage)
        lines.append(f"[audit] stage {grid.pp_rank} (blocks {lo}..{hi - 1}), tp {grid.tp}: "
                     f"predicted tp activation all-reduce {tp:,} B "
                     f"({6 if recompute else 4} x blocks x micro-batches x b*s*h), "
                     f"pp send {pp:,} B (b*s*h per boundary per micro-batch)")
    if trainer.pipeline is not None:
        p = trainer.pipeline
        lines.append(f"[audit] pipeline {trainer.schedule}: peak {p.peak_contexts} micro-batch "
                     f"contexts alive on stage {grid.pp_rank} (pp={grid.pp}, m={trainer.accum}),"
                     f" {p.peak_activation_bytes:,} activation bytes")
    if offload is not None:
        rss = rss_bytes()
        lines.append(f"[audit] offload: {offload.nbytes:,} B of optimizer state in "
                     f"{offload.directory}; RSS {rss.get('rss', 0):,} B "
                     f"(anonymous {rss.get('anon', 0):,} B)")
    return lines


def predicted_group_bytes(trainer, micro_batch, recompute):
    """``{(op, group): bytes}`` this rank sends per step on the tp and pp groups
    (cost.py): the activation all-reduces / sends plus the float64 scalars (the
    gradient norm's sum of squares over tp and pp, the logged loss and top-1
    count over pp).  Empty for the serial model."""
    grid, model = trainer.grid, trainer.model
    if not isinstance(model, ModelShard):
        return {}
    cfg, item, out = model.config, trainer.itemsize, {}
    lo, hi = model.stage_blocks
    if grid.tp > 1:
        out[("allreduce", "tp")] = (cost.tp_step_bytes(micro_batch, cfg.seq_len, cfg.dim,
                                                       hi - lo, trainer.accum, grid.tp, item,
                                                       recompute)
                                    + cost.allreduce_bytes(1, grid.tp, 8))
    if grid.pp > 1:
        out[("send", "pp")] = cost.pp_step_bytes(micro_batch, cfg.seq_len, cfg.dim,
                                                 trainer.accum, item, not grid.is_first_stage,
                                                 not grid.is_last_stage)
        out[("allreduce", "pp")] = (cost.allreduce_bytes(2, grid.pp, 8)
                                    + cost.allreduce_bytes(1, grid.pp, 8))
    return out


def write_timeline(args, trainer, root):
    """Gather the last step's pipeline events, print the bubble, draw ``--timeline``."""
    grid = trainer.grid
    if trainer.pipeline is None or not args.timeline:
        return None
    timeline = gather_timeline(grid, trainer.pipeline.events)
    measured = measured_bubble(timeline)
    theory = theoretical_bubble(grid.pp, trainer.accum)
    if root:
        plot_timeline(timeline, args.timeline,
                      f"{args.schedule}: pp={grid.pp}, m={trainer.accum} micro-batches; "
                      f"bubble measured {measured:.1%}, (p-1)/(m+p-1) = {theory:.1%}")
        print(f"timeline ({args.schedule}, pp={grid.pp}, m={trainer.accum}): bubble measured "
              f"{measured:.1%} vs (p-1)/(m+p-1) = {theory:.1%}; wrote {args.timeline}",
              flush=True)
    return measured, theory

