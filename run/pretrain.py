"""Pre-train a ViT.  Single process for now: under ``mpirun -n N`` rank 0 trains
and writes, the other ranks wait idle (the data-parallel layout comes later).

    python run/pretrain.py --model vit-nano --steps 50 --data random
    mpirun -n 4 python run/pretrain.py

Outputs in --out (default runs/<UTC timestamp>): metrics.jsonl (one JSON
object per optimizer step) and config.json (the flags and model config).
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
from minivit.data import RandomImages, StepBatches
from minivit.model import ViT
from minivit.optim import SGD, AdamW, WarmupCosine
from minivit.train import MetricsWriter, train_loop

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
                        "--micro-batch (gradient accumulation = global / micro); "
                        "default: --micro-batch")
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


def check_args(args, parser):
    """Reject bad flag values before building anything (parser.error exits with code 2)."""
    if args.data not in DATA_SOURCES:
        parser.error(f"--data {args.data!r}: expected one of {DATA_SOURCES} "
                     "(synthetic:KIND and shard directories come with the data issues)")
    for flag in ("steps", "micro_batch", "random_samples", "log_every"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected >= 1")
    if args.global_batch is None:
        args.global_batch = args.micro_batch
    if args.global_batch % args.micro_batch:
        parser.error(f"--global-batch {args.global_batch} is not divisible by --micro-batch "
                     f"{args.micro_batch}: expected a multiple of it")
    if args.warmup < 0 or args.warmup > args.steps:
        parser.error(f"--warmup {args.warmup}: expected 0 <= warmup <= --steps {args.steps}")
    if not 0.0 <= args.label_smoothing < 1.0:
        parser.error(f"--label-smoothing {args.label_smoothing}: expected 0 <= s < 1")


def world():
    """(rank, size, comm) from MPI if mpi4py is importable, else a single process."""
    try:
        from mpi4py import MPI
    except ImportError:
        return 0, 1, None
    comm = MPI.COMM_WORLD
    return comm.Get_rank(), comm.Get_size(), comm


def wait_idle(comm):
    """Non-zero ranks wait for rank 0 without spinning a core (MPICH polls busily in Barrier)."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(0.2)


def train(args):
    overrides = {"dtype": args.dtype}
    if args.classes is not None:
        overrides["num_classes"] = args.classes
    config = get_config(args.model, **overrides)
    out = Path(args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(
        {"args": vars(args), "model": asdict(config)}, indent=2) + "\n")

    model = ViT(config, seed=args.seed)
    if args.optimizer == "adamw":
        optimizer = AdamW(model.flat, lr=args.lr, weight_decay=args.weight_decay)
    else:
        optimizer = SGD(model.flat, lr=args.lr, momentum=args.momentum,
                        weight_decay=args.weight_decay)
    schedule = WarmupCosine(args.lr, args.warmup, args.steps, args.min_lr)
    dataset = RandomImages(args.random_samples, config.image_size, config.in_chans,
                           config.num_classes, seed=args.seed, dtype=args.dtype)
    batches = StepBatches(dataset, args.global_batch, args.micro_batch).iterate()
    print(f"{args.model}: {model.num_params:,} parameters, {args.dtype}; global batch "
          f"{args.global_batch} = {args.global_batch // args.micro_batch} x micro-batch "
          f"{args.micro_batch}; {args.steps} steps on --data {args.data}", flush=True)

    writer = MetricsWriter(out / "metrics.jsonl")

    def log(record):
        writer.write(record)
        if record["step"] % args.log_every == 0 or record["step"] in (1, args.steps):
            print(f"step {record['step']:>5}/{args.steps} epoch {record['epoch']} "
                  f"loss {record['loss']:.4f} lr {record['lr']:.2e} "
                  f"{record['images_per_s']:.1f} img/s {record['gflops_per_s']:.2f} GFLOP/s",
                  flush=True)

    try:
        records = train_loop(model, optimizer, schedule, batches, args.steps,
                             global_batch=args.global_batch,
                             clip=args.clip if args.clip > 0 else None,
                             label_smoothing=args.label_smoothing, log=log)
    finally:
        writer.close()
    print(f"loss {records[0]['loss']:.4f} -> {records[-1]['loss']:.4f}; "
          f"wrote {out / 'metrics.jsonl'} and {out / 'config.json'}")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(args, parser)
    rank, size, comm = world()
    threads = args.threads or max(1, (os.cpu_count() or 1) // size)
    if rank != 0:
        # No layout flags yet: only rank 0 trains, so ranks never clobber each other's files.
        wait_idle(comm)
        return 0
    if size > 1:
        print(f"{size} ranks started; no parallel layout yet, so rank 0 trains alone", flush=True)
    try:
        with threadpool_limits(limits=threads, user_api="blas"):
            train(args)
    finally:
        if comm is not None and size > 1:
            comm.Ibarrier().Wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
