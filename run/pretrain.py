"""Pre-train a ViT, in one process or data parallel under MPI (with ZeRO 0-3).

    mpirun -n 4 python run/pretrain.py        # vit-micro, on-the-fly Newton fractals, 10 classes
    python run/pretrain.py --data DIR --model vit-micro --steps 1000   # tar shards
    mpirun -n 2 python run/pretrain.py --data synthetic:visualatom --classes 20
    python run/pretrain.py --model vit-nano --steps 50 --data random
    mpirun -n 4 python run/pretrain.py --zero 3 --global-batch 64 --audit
    python run/pretrain.py --config run.toml --lr 3e-4    # the command line wins
    python run/pretrain.py --resume runs/a                # continue runs/a with its flags

Global batch = micro-batch x accumulation x dp.  Outputs in --out (default
runs/<UTC timestamp>), written by world rank 0: metrics.jsonl (a "header"
record with the measured BLAS peak, then one "train" record per optimizer
step and an "eval" record every --eval-every steps), config.toml (the
resolved flags, reusable with --config) and config.json (flags and model).

The flags are the fields of ``minivit.parallel.runtime.config.PretrainConfig``;
the loop is ``minivit.parallel.runtime.trainer.Trainer.fit``.
"""
import argparse
import sys
import time
from pathlib import Path

from minivit.checkpoint import CheckpointError
from minivit.parallel.grid import ProcessGrid
from minivit.parallel.model_parallel import build_model
from minivit.parallel.runtime.cliconfig import toml_defaults, typed_dests
from minivit.parallel.runtime.config import PretrainConfig, add_flags
from minivit.parallel.runtime.data import pretrain_data
from minivit.parallel.runtime.guard import install_guard, usage_from_rank0
from minivit.parallel.runtime.launch import announce, default_threads, open_world
from minivit.parallel.runtime.preempt import INTERACTIVE_SIGNALS, Preemption
from minivit.parallel.runtime.resume import explain_resumed_values, layout_change, resume_point
from minivit.parallel.runtime.trainer import Trainer
from minivit.threads import limit_threads

# keys of OUT/config.toml that --resume OUT does not take over: where to resume from and
# where to write are this command's own, and the process layout is the launch's (a
# checkpoint resumes in any layout): dp is derived from the world size, tp/pp (with the
# pipeline-only --schedule, --virtual-stages and --timeline) default to 1 unless typed again
RESUME_IGNORED = ("resume", "out", "dp", "tp", "pp", "schedule", "virtual_stages", "timeline")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None,
                   help="TOML file of flags (keys = flag names); command-line flags override it")
    return add_flags(p, PretrainConfig)


def parse_args(parser, argv=None):
    """Flags in layers, lowest first: the parser's defaults, ``RESUME/config.toml`` (the
    resolved flags of the run being resumed, without RESUME_IGNORED; skipped when the
    file is missing), ``--config FILE``, the command line.

    With a resume, ``out`` is the resumed folder unless ``--out`` is typed on the command
    line (an ``out`` key in ``--config FILE`` does not redirect a resume).
    ``args.resumed``: ``{dest: value}`` of the flags taken from ``RESUME/config.toml``.
    """
    typed, _ = parser.parse_known_args(argv)     # no set_defaults yet: only typed values
    layer = toml_defaults(parser, typed.config) if typed.config else {}
    resume = typed.resume if typed.resume is not None else layer.get("resume")
    base = {}
    if resume is not None and (Path(resume) / "config.toml").is_file():
        base = toml_defaults(parser, str(Path(resume) / "config.toml"),
                             flag=f"--resume {resume}:")
        for key in RESUME_IGNORED:
            base.pop(key, None)
    typed_now = typed_dests(parser, argv)      # before set_defaults: argparse keeps those
    parser.set_defaults(**{**base, **layer})
    args = parser.parse_args(argv)
    args.resumed = {k: v for k, v in base.items() if k not in layer and k not in typed_now}
    if not args.recompute and "recompute_granularity" in args.resumed:
        # the saved granularity qualified the saved --recompute: --no-recompute drops both
        del args.resumed["recompute_granularity"]
        args.recompute_granularity = None
    if args.resume is not None:
        args.out = typed.out if typed.out is not None else args.resume
    return args


def parse_config(parser, argv, world_size):
    """The validated ``PretrainConfig`` of ``argv``; a bad value is a usage error (exit 2)."""
    args = parse_args(parser, argv)
    cfg = PretrainConfig.from_namespace(args)
    try:
        return cfg.validate(world_size)
    except ValueError as exc:     # values the user did not type: say where they came from
        parser.error(explain_resumed_values(str(exc), args.resume, args.resumed, cfg,
                                            world_size) if args.resumed else str(exc))


def pretrain(cfg, world_comm, guard):
    """Build the grid, data and model of ``cfg`` (a validated PretrainConfig) and fit."""
    grid = ProcessGrid(world_comm, dp=cfg.dp, tp=cfg.tp, pp=cfg.pp)
    guard.label = grid.coords
    # SIGTERM/SIGUSR1/SIGINT from here on set a flag; the ranks agree after each step and
    # checkpoint into OUT (a second Ctrl-C ends the process at once)
    preempt = Preemption(grid.world, INTERACTIVE_SIGNALS).install()
    resume = resume_point(cfg.resume, grid.world) if cfg.resume else None
    data = pretrain_data(cfg, grid, resume)
    model = build_model(data.config, cfg.seed, grid, recompute=cfg.recompute_kind(),
                        sequence_parallel=cfg.sequence_parallel,
                        virtual_stages=cfg.virtual_stages, zero=cfg.zero)
    out = cfg.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    trainer = Trainer(cfg, grid, model, data, out=out, script="pretrain", resume=resume,
                      preempt=preempt, header={"model": cfg.model, "data": cfg.data})
    trainer.fit()
    grid.free()


def main(argv=None):
    # exit 2 on every process, before writing, when N launched tasks each see a world of 1
    world_comm = open_world("pretrain.py")
    # then: an exception on one rank must end every rank, never hang the job
    guard = install_guard(world_comm)
    # every rank reaches the same parser.error; one copy of the message is enough
    parser = usage_from_rank0(build_parser(), world_comm)
    cfg = parse_config(parser, argv, world_comm.Get_size())
    announce(world_comm)      # the first line: which MPI ran, and the world size
    # --resume leaves the saved process layout behind (RESUME_IGNORED): say so, once
    change = layout_change(cfg.resume, cfg) if cfg.resume and world_comm.Get_rank() == 0 \
        else None
    if change:
        print(change, flush=True)
    threads = cfg.threads or default_threads(world_comm)   # cores / ranks on the node
    with limit_threads(threads):
        try:
            pretrain(cfg, world_comm, guard)
        except (CheckpointError, FloatingPointError) as exc:
            # raised on every rank alike, with the same message (agreed by a collective):
            # every rank exits, no abort needed, and one copy of the message is enough
            if world_comm.Get_rank() == 0:
                print(f"[minivit rank 0] error: {exc}", file=sys.stderr, flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
