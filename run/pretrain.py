"""Pre-train a ViT, in one process or data parallel under MPI (with ZeRO 0-3).

    python run/pretrain.py --model vit-nano --steps 50 --data random
    mpirun -n 4 python run/pretrain.py                       # data parallel, dp=4
    mpirun -n 4 python run/pretrain.py --zero 3 --global-batch 64 --audit

Global batch = micro-batch x accumulation x dp.  Outputs in --out (default
runs/<UTC timestamp>), written by world rank 0: metrics.jsonl (one JSON object
per optimizer step, ``comm_bytes`` = bytes rank 0 sent in the step) and
config.json (the flags and model config).
"""
import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from threadpoolctl import threadpool_limits

from minivit.config import PRESETS, get_config
from minivit.data import RandomImages, StepBatches, accumulation_steps
from minivit.model import ViT
from minivit.optim import WarmupCosine
from minivit.parallel import audit as audit_tables
from minivit.parallel.grid import ProcessGrid, validate_layout
from minivit.parallel.guard import install_guard
from minivit.parallel.step import ParallelTrainer, train_loop
from minivit.train import MetricsWriter

DATA_SOURCES = ("random",)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="vit-nano", choices=sorted(PRESETS),
                   help="model preset (DESIGN.md section 2)")
    p.add_argument("--classes", type=int, default=None,
                   help="number of classes; default: the preset's (10 nano/micro, 1000 others)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps to run")
    p.add_argument("--data", default="random",
                   help="data source: 'random' = deterministic random images with fixed "
                        "labels (per-class prototype + noise, so the loss can fall)")
    p.add_argument("--random-samples", type=int, default=1024,
                   help="size of one epoch of --data random, in images")
    p.add_argument("--out", default=None,
                   help="output directory; default runs/<UTC timestamp>")
    p.add_argument("--seed", type=int, default=0, help="seed of the init and the data order")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="parameter and activation dtype")
    p.add_argument("--micro-batch", type=int, default=32,
                   help="images per forward/backward pass (per rank)")
    p.add_argument("--global-batch", type=int, default=None,
                   help="images per optimizer step over all ranks; a multiple of "
                        "--micro-batch x dp (accumulation = global / (micro x dp)); "
                        "default: --micro-batch x dp")
    p.add_argument("--dp", type=int, default=None,
                   help="data-parallel size; default: world size / (tp x pp)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (only 1 so far)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (only 1 so far)")
    p.add_argument("--zero", type=int, default=0, choices=[0, 1, 2, 3],
                   help="ZeRO stage over the dp group: 0 plain DP, 1 optimizer state, "
                        "2 + gradients, 3 + parameters sharded")
    p.add_argument("--bucket-mb", type=float, default=25.0,
                   help="gradient all-reduce bucket size in MiB (ZeRO 0-1)")
    p.add_argument("--overlap", action="store_true",
                   help="overlap bucket all-reduces with the last backward (ZeRO 0-1)")
    p.add_argument("--audit", action="store_true",
                   help="print per step the collectives (count, bytes) next to "
                        "parallel/cost.py's prediction, and the memory ledger")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"], help="optimizer")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=0.0, help="final learning rate of the cosine")
    p.add_argument("--warmup", type=int, default=10, help="linear warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.05,
                   help="decoupled weight decay (AdamW) or L2 (SGD); never on biases, "
                        "LayerNorm, position embedding, class token")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--clip", type=float, default=1.0,
                   help="max global gradient norm; 0 disables clipping")
    p.add_argument("--label-smoothing", type=float, default=0.0,
                   help="label smoothing of the cross-entropy (0 <= s < 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS threads per process; default: cores / ranks")
    p.add_argument("--log-every", type=int, default=10,
                   help="print a progress line every N steps (metrics.jsonl has every step)")
    return p


def check_args(args, parser, world_size=1):
    """Reject bad flag values before building anything (parser.error exits with code 2).

    Pure arithmetic on the flags and the world size, so under MPI every rank
    reaches the same verdict with the same message, before any collective.
    """
    if args.data not in DATA_SOURCES:
        parser.error(f"--data {args.data!r}: expected one of {DATA_SOURCES} "
                     "(synthetic:KIND and shard directories come with the data issues)")
    for flag in ("steps", "micro_batch", "random_samples", "log_every"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected >= 1")
    if args.tp != 1 or args.pp != 1:
        parser.error(f"--tp {args.tp} --pp {args.pp}: tensor and pipeline parallelism are not "
                     "yet supported (Parallelism II); expected --tp 1 --pp 1")
    if args.dp is None:
        args.dp = world_size // (args.tp * args.pp)
    try:
        validate_layout(world_size, args.dp, args.tp, args.pp)
    except ValueError as exc:
        parser.error(f"--dp/--tp/--pp: {exc}")
    if args.global_batch is None:
        args.global_batch = args.micro_batch * args.dp
    if args.micro_batch >= 1 and args.global_batch % (args.micro_batch * args.dp):
        parser.error(f"--global-batch {args.global_batch} is not divisible by --micro-batch "
                     f"{args.micro_batch} x dp {args.dp} = {args.micro_batch * args.dp}: "
                     "expected a multiple of it (global = micro x accumulation x dp)")
    args.accum = accumulation_steps(args.global_batch, args.micro_batch, args.dp)
    if args.optimizer == "sgd" and args.zero:
        parser.error(f"--optimizer sgd --zero {args.zero}: ZeRO here shards AdamW state; "
                     "expected --optimizer adamw or --zero 0")
    if args.overlap and args.zero >= 2:
        parser.error(f"--overlap --zero {args.zero}: overlap applies to ZeRO 0-1 (stages 2-3 "
                     "reduce-scatter each unit inside its backward already)")
    if not args.bucket_mb > 0:
        parser.error(f"--bucket-mb {args.bucket_mb}: expected a positive size")
    if args.warmup < 0:
        parser.error(f"--warmup {args.warmup}: expected >= 0")
    if not 0.0 <= args.label_smoothing < 1.0:
        parser.error(f"--label-smoothing {args.label_smoothing}: expected 0 <= s < 1")


def train(args, world_comm, guard):
    grid = ProcessGrid(world_comm, dp=args.dp, tp=args.tp, pp=args.pp)
    guard.label = grid.coords
    root = grid.rank == 0          # world rank 0 alone prints and writes files
    overrides = {"dtype": args.dtype}
    if args.classes is not None:
        overrides["num_classes"] = args.classes
    config = get_config(args.model, **overrides)
    out = Path(args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
    if root:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(
            {"args": vars(args), "model": asdict(config)}, indent=2) + "\n")

    model = ViT(config, seed=args.seed)
    trainer = ParallelTrainer(
        model, grid, zero=args.zero, accum=args.accum,
        bucket_bytes=int(args.bucket_mb * 2**20), overlap=args.overlap,
        optimizer=args.optimizer, momentum=args.momentum, weight_decay=args.weight_decay,
        max_grad_norm=args.clip if args.clip > 0 else None, smoothing=args.label_smoothing)
    schedule = WarmupCosine(args.lr, args.warmup, args.steps, args.min_lr)
    dataset = RandomImages(args.random_samples, config.image_size, config.in_chans,
                           config.num_classes, seed=args.seed, dtype=args.dtype)
    batches = StepBatches(dataset, args.global_batch, args.micro_batch,
                          rank=grid.dp_rank, world_size=grid.dp).iterate()
    if root:
        print(f"{args.model}: {model.num_params:,} parameters, {args.dtype}; world "
              f"{grid.world_size} = dp {grid.dp} x tp {grid.tp} x pp {grid.pp}, ZeRO-{args.zero}; "
              f"global batch {args.global_batch} = micro-batch {args.micro_batch} x accumulation "
              f"{args.accum} x dp {grid.dp}; {args.steps} steps on --data {args.data}", flush=True)

    writer = MetricsWriter(out / "metrics.jsonl") if root else None

    def log(record):
        if not root:
            return
        writer.write(record)
        if record["step"] % args.log_every == 0 or record["step"] in (1, args.steps):
            print(f"step {record['step']:>5}/{args.steps} epoch {record['epoch']} "
                  f"loss {record['loss']:.4f} lr {record['lr']:.2e} "
                  f"{record['images_per_s']:.1f} img/s {record['gflops_per_s']:.2f} GFLOP/s "
                  f"comm {record['comm_bytes'] / 2**20:.2f} MiB", flush=True)

    def audit(step, mark):
        if not root:
            return
        lines = audit_tables.comm_table(
            step, grid.ledger.summary(since=mark), trainer.predicted_step_bytes(),
            psi=model.num_params, p=grid.dp, stage=args.zero, itemsize=trainer.itemsize,
            accum=args.accum)
        if step == 1:
            exact, closed = trainer.predicted_memory()
            lines += audit_tables.memory_table(trainer.memory(), exact, closed,
                                               p=grid.dp, stage=args.zero)
        print("\n".join(lines), flush=True)

    try:
        records = train_loop(trainer, schedule, batches, args.steps,
                             global_batch=args.global_batch, log=log,
                             audit=audit if args.audit else None)
    finally:
        if writer is not None:
            writer.close()
    if root:
        print(f"loss {records[0]['loss']:.4f} -> {records[-1]['loss']:.4f}; "
              f"wrote {out / 'metrics.jsonl'} and {out / 'config.json'}")
    grid.free()


def main(argv=None):
    from mpi4py import MPI
    world_comm = MPI.COMM_WORLD
    # first: an exception on one rank must end every rank, never hang the job
    guard = install_guard(world_comm)
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(args, parser, world_comm.Get_size())
    threads = args.threads or max(1, (os.cpu_count() or 1) // world_comm.Get_size())
    with threadpool_limits(limits=threads, user_api="blas"):
        train(args, world_comm, guard)
    return 0


if __name__ == "__main__":
    sys.exit(main())
