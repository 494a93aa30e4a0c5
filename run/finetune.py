"""Fine-tune a pre-trained ViT on a labelled dataset and report held-out top-1.

    python run/finetune.py --checkpoint runs/pre/ckpt/step_0000750.h5 --data digits --epochs 10
    python run/finetune.py --checkpoint runs/pre --data digits --epochs 10 --from-scratch
    python run/finetune.py --model vit-micro --data digits --epochs 10 --from-scratch
    mpirun -n 2 python run/finetune.py --checkpoint CKPT --data shards/train \\
        --eval-data shards/test --epochs 5

The checkpoint's classifier head is replaced by a new ``K``-way head (K from
the data) and every parameter is trained (Dosovitskiy et al. 2021, sec. 3.2).
``--from-scratch`` trains the same architecture from its random
initialisation with the same data, steps, schedule and seed: the baseline.
``--data digits`` is scikit-learn's bundled handwritten digits, upsampled to
the model's image size, split stratified 80/20 with ``--split-seed``; shard
folders come from ``run/pack.py`` (digits, CIFAR binary batches, ImageFolder).

Outputs in --out (world rank 0): metrics.jsonl (header, per-step train
records, an eval record after every epoch), result.json (final held-out
top-1 and the settings) and config.toml (resolved flags).
"""
import argparse
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path


from minivit.threads import limit_threads
from minivit.checkpoint import CheckpointError
from minivit.parallel.runtime.cliconfig import parse_with_config, write_toml
from minivit.config import PRESETS, get_config
from minivit.data import accumulation_steps
from minivit.flops import train_flops
from minivit.io import Loader
from minivit.io.sources import LoaderSteps, check_source, open_data
from minivit.model import ViT
from minivit.optim import WarmupCosine
from minivit.parallel.runtime.evaluate import Evaluator
from minivit.parallel.grid import ProcessGrid
from minivit.parallel.runtime.guard import install_guard, usage_from_rank0
from minivit.parallel.runtime.runlog import RunLog, blas_peak
from minivit.parallel.runtime.step import ParallelTrainer, train_loop
from minivit.transfer import load_backbone, open_pretrained, pretrained_config


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None,
                   help="TOML file of flags (keys = flag names); command-line flags override it")
    p.add_argument("--checkpoint", required=False, default=None,
                   help="pre-trained checkpoint: a step_XXXXXXX.h5 file, a ckpt/ folder or a "
                        "run folder (newest valid checkpoint); with --from-scratch only its "
                        "architecture is used")
    p.add_argument("--model", default=None, choices=sorted(PRESETS),
                   help="with --from-scratch and no --checkpoint: the preset to train")
    p.add_argument("--from-scratch", action="store_true",
                   help="baseline: same architecture, budget and seed, random initialisation")
    p.add_argument("--data", default="digits",
                   help="'digits' (built in) or a folder of tar shards (run/pack.py)")
    p.add_argument("--eval-data", default=None,
                   help="held-out shards; default: a stratified --holdout split of --data")
    p.add_argument("--holdout", type=float, default=0.2, help="held-out fraction per class")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the digits split")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training split")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many optimizer steps (smoke tests); the schedule "
                        "still spans them")
    p.add_argument("--micro-batch", type=int, default=32, help="images per forward per rank")
    p.add_argument("--global-batch", type=int, default=None,
                   help="images per optimizer step (micro x accumulation x dp); "
                        "default micro x dp")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=1e-6, help="final cosine learning rate")
    p.add_argument("--warmup", type=int, default=20, help="linear warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW decoupled decay")
    p.add_argument("--clip", type=float, default=1.0, help="max global grad norm; 0 disables")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="0 <= s < 1")
    p.add_argument("--augment", action="store_true",
                   help="random-resized-crop + flip on training images")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the new head (and the whole model with --from-scratch) "
                        "and of the data order")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--out", default=None, help="output folder; default runs/finetune-<UTC time>")
    p.add_argument("--threads", type=int, default=None, help="BLAS and Numba threads per rank; default: cores / ranks")
    p.add_argument("--loader-threads", type=int, default=1, help="decoding threads per rank")
    p.add_argument("--eval-batch", type=int, default=64, help="images per eval forward per rank")
    p.add_argument("--log-every", type=int, default=10, help="print every N steps")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def check_args(args, parser, world_size):
    """Flag checks every rank can do alone, before any collective (exit 2 on error)."""
    if args.checkpoint is None and not (args.from_scratch and args.model):
        parser.error("--checkpoint is required (or --from-scratch --model PRESET for a "
                     "baseline without one)")
    if args.checkpoint is not None and args.model is not None:
        parser.error(f"--model {args.model} with --checkpoint: the checkpoint fixes the "
                     "architecture; expected only one of them")
    if args.checkpoint is not None and not os.path.exists(args.checkpoint):
        parser.error(f"--checkpoint {args.checkpoint!r}: no such file or directory")
    try:
        check_source(args.data)
        if args.eval_data is not None:
            check_source(args.eval_data)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max-steps {args.max_steps}: expected >= 1")
    for flag in ("epochs", "micro_batch", "loader_threads", "eval_batch", "log_every"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads {args.threads}: expected >= 1 (omit it for cores / ranks)")
    if not 0.0 < args.holdout < 1.0:
        parser.error(f"--holdout {args.holdout}: expected 0 < fraction < 1")
    if args.global_batch is None:
        args.global_batch = args.micro_batch * world_size
    try:
        args.accum = accumulation_steps(args.global_batch, args.micro_batch, world_size)
    except ValueError as exc:
        parser.error(f"--global-batch/--micro-batch: {exc}")
    if not 0.0 <= args.label_smoothing < 1.0:
        parser.error(f"--label-smoothing {args.label_smoothing}: expected 0 <= s < 1")


def build_model(args, reader, num_classes):
    """The ViT with a ``num_classes`` head: backbone from ``reader`` unless --from-scratch
    (``reader`` None: the --model preset)."""
    scratch = f"from scratch (random init, seed {args.seed})"
    if reader is None:
        config = get_config(args.model, num_classes=num_classes, dtype=args.dtype)
        return config, ViT(config, seed=args.seed), scratch
    config = pretrained_config(reader, num_classes, args.dtype)
    model = ViT(config, seed=args.seed)
    if args.from_scratch:
        return config, model, scratch
    loaded, kept = load_backbone(model, reader)
    return config, model, (f"{len(loaded)} tensors from {reader.path} (step {reader.step}), "
                           f"new head {', '.join(kept)}")


def finetune(args, world_comm, guard, parser):
    grid = ProcessGrid(world_comm, dp=world_comm.Get_size())
    guard.label = grid.coords
    root = grid.rank == 0
    with (open_pretrained(args.checkpoint) if args.checkpoint else nullcontext()) as reader:
        if reader is None:
            preset, image_size = args.model, get_config(args.model).image_size
        else:
            preset = reader.meta.get("preset")
            image_size = int(reader.meta["model_config"]["image_size"])
        splits = open_data(args.data, image_size=image_size, holdout=args.holdout,
                           eval_spec=args.eval_data, split_seed=args.split_seed)
        config, model, origin = build_model(args, reader, splits.num_classes)
    loader = Loader(splits.train, args.micro_batch, rank=grid.dp_rank, world_size=grid.dp,
                    seed=args.seed, augment=args.augment or None, image_size=image_size,
                    num_threads=args.loader_threads)
    steps_per_epoch = len(loader) // args.accum
    if steps_per_epoch < 1:
        raise ValueError(f"{len(splits.train)} training images give no full global batch of "
                         f"{args.global_batch}: lower --global-batch")
    steps = args.epochs * steps_per_epoch
    if args.max_steps is not None:
        steps = min(steps, args.max_steps)
    evaluator = Evaluator(splits.eval, grid.dp_group, args.eval_batch, image_size, args.dtype,
                          num_threads=args.loader_threads)
    trainer = ParallelTrainer(model, grid, accum=args.accum, weight_decay=args.weight_decay,
                              max_grad_norm=args.clip if args.clip > 0 else None,
                              smoothing=args.label_smoothing)
    schedule = WarmupCosine(args.lr, args.warmup, steps, args.min_lr)
    mode = "scratch" if args.from_scratch else "pretrained"
    out = Path(args.out or Path("runs") / time.strftime(f"finetune-{mode}-%Y%m%d-%H%M%S",
                                                        time.gmtime()))
    if root:
        out.mkdir(parents=True, exist_ok=True)
        flags = {a.dest: getattr(args, a.dest) for a in parser._actions
                 if a.dest not in ("help", "config")}
        write_toml(out / "config.toml", flags,
                   header="resolved flags of run/finetune.py; rerun with --config this-file")
    peak = blas_peak(grid.world, args.dtype)
    grid.ledger.clear()
    runlog = RunLog(root, out / "metrics.jsonl", steps, peak, args.log_every,
                    progress=not args.no_progress)
    runlog.header(script="finetune", mode=mode, checkpoint=args.checkpoint and str(args.checkpoint),
                  origin=origin,
                  preset=preset, num_params=model.num_params, dtype=args.dtype,
                  world_size=grid.world_size, global_batch=args.global_batch, steps=steps,
                  epochs=args.epochs, data=args.data, data_description=splits.description,
                  train_flops_per_step=train_flops(config, args.global_batch))
    runlog.say(f"fine-tune {mode}: {origin}\n{splits.description}; {args.epochs} epochs x "
               f"{steps_per_epoch} steps of {args.global_batch} images")

    def evaluate(step, epoch):
        t0 = time.perf_counter()
        return runlog.eval(step, epoch, evaluator.evaluate(trainer.model),
                           time.perf_counter() - t0)

    def log(record):
        runlog.train(record)
        step = record["step"]
        if step % steps_per_epoch == 0 or step == steps:   # collective: every rank evaluates
            evaluate(step, round(step / steps_per_epoch, 3))   # epochs completed

    try:
        first = evaluate(0, 0)
        records = train_loop(trainer, schedule, LoaderSteps(loader, args.accum, args.dtype),
                             steps, global_batch=args.global_batch, log=log)
    finally:
        runlog.close()
        evaluator.close()
        loader.close()
    final = runlog.evals[-1] if root else None
    if root:
        result = {"mode": mode, "top1": final["accuracy"], "heldout_loss": final["loss"],
                  "heldout_samples": final["samples"], "top1_before": first["accuracy"],
                  "train_loss_last": records[-1]["loss"], "epochs": args.epochs, "steps": steps,
                  "global_batch": args.global_batch, "lr": args.lr, "seed": args.seed,
                  "checkpoint": args.checkpoint and str(args.checkpoint), "origin": origin,
                  "data": args.data,
                  "data_description": splits.description, "split_seed": args.split_seed}
        (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"{mode}: held-out top-1 {final['accuracy']:.2%} ({final['samples']} images, "
              f"loss {final['loss']:.4f}) after {steps} steps "
              f"({steps / steps_per_epoch:g} epochs)\n"
              f"wrote {out / 'result.json'} and {out / 'metrics.jsonl'}", flush=True)
    grid.free()


def main(argv=None):
    from mpi4py import MPI
    world_comm = MPI.COMM_WORLD
    guard = install_guard(world_comm)   # an exception on one rank ends every rank
    # every rank reaches the same parser.error; one copy of the message is enough
    parser = usage_from_rank0(build_parser(), world_comm)
    args = parse_with_config(parser, argv)
    check_args(args, parser, world_comm.Get_size())
    threads = args.threads or max(1, (os.cpu_count() or 1) // world_comm.Get_size())
    try:
        with limit_threads(threads):
            finetune(args, world_comm, guard, parser)
    except CheckpointError as exc:
        # every rank reads the same file and fails the same way: a clean exit, no abort
        print(f"finetune.py: error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
