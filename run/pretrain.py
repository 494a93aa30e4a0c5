"""Pre-train a ViT, in one process or data parallel under MPI (with ZeRO 0-3).

    mpirun -n 4 python run/pretrain.py        # vit-micro, on-the-fly FractalDB, 10 classes
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
"""
import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path


from minivit.threads import limit_threads
from minivit.parallel.runtime.cliconfig import parse_with_config, toml_defaults, write_text_atomic, write_toml
from minivit.config import PRESETS, get_config
from minivit.data import RandomImages, StepBatches, accumulation_steps
from minivit.flops import train_flops
from minivit.io import Loader
from minivit.io.sources import (SYNTHETIC_KINDS, LoaderSteps, check_source, open_data,
                                spread_subset)
from minivit.optim import WarmupCosine
from minivit.parallel.tools import audit as audit_tables
from minivit.parallel.runtime import mp_cli
from minivit.parallel.runtime.evaluate import Evaluator
from minivit.parallel.runtime.runlog import RunLog, blas_peak
from minivit.parallel.grid import ProcessGrid, validate_layout
from minivit.parallel.runtime.guard import install_guard, usage_from_rank0
from minivit.parallel.runtime.preempt import INTERACTIVE_SIGNALS, Preemption
from minivit.parallel.runtime.watchdog import Watchdog
from minivit.parallel.runtime.step import ParallelTrainer, train_loop
from minivit.checkpoint import CheckpointError
from minivit.parallel.runtime.resume import (CheckpointManager, add_checkpoint_flags,
                                     check_checkpoint_flags, check_global_batch, data_state,
                                     fork_metrics, restore_loader, resume_point,
                                     run_in_chunks, skipped_nonfinite, truncate_metrics)

DEFAULT_DATA = "synthetic:fractaldb"


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None,
                   help="TOML file of flags (keys = flag names); command-line flags override it")
    p.add_argument("--model", default="vit-micro", choices=sorted(PRESETS),
                   help="model preset (DESIGN.md section 2)")
    p.add_argument("--classes", type=int, default=None,
                   help="number of classes; default: the preset's (10 nano/micro, 1000 others)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps to run")
    p.add_argument("--data", default=DEFAULT_DATA,
                   help="DIR (tar shards: a folder, its index.json or one .tar), "
                        f"synthetic:KIND rendered on the fly (KIND in {', '.join(SYNTHETIC_KINDS)}), "
                        "digits, or 'random' (random images with fixed labels: per-class "
                        "prototype + noise)")
    p.add_argument("--eval-data", default=None,
                   help="held-out shards for --data DIR; default: the last --holdout "
                        "fraction of each class of --data")
    p.add_argument("--holdout", type=float, default=0.1,
                   help="held-out fraction: of the instance ids of synthetic:KIND (a disjoint "
                        "top range), or of each class of --data DIR; 0 disables evaluation")
    p.add_argument("--instances", type=int, default=None,
                   help="synthetic:KIND instances per class, train + held-out; default all "
                        "the generator has (1000 for FractalDB)")
    p.add_argument("--data-seed", type=int, default=0,
                   help="dataset seed of synthetic:KIND (the categories and instances)")
    p.add_argument("--augment", action="store_true",
                   help="random-resized-crop + horizontal flip on the training images")
    p.add_argument("--loader-threads", type=int, default=1,
                   help="decoding/rendering threads per rank")
    p.add_argument("--eval-every", type=int, default=15,
                   help="held-out evaluation every N optimizer steps (and after the last); "
                        "0: only after the last step")
    p.add_argument("--eval-batch", type=int, default=64, help="images per eval forward per rank")
    p.add_argument("--eval-samples", type=int, default=200,
                   help="evaluate on at most N held-out images, evenly spread over the "
                        "classes; 0: all of them")
    p.add_argument("--random-samples", type=int, default=1024,
                   help="size of one epoch of --data random, in images")
    p.add_argument("--out", default=None,
                   help="output directory; default runs/<UTC timestamp>")
    p.add_argument("--seed", type=int, default=0, help="seed of the init and the data order")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="parameter and activation dtype")
    p.add_argument("--micro-batch", type=int, default=16,
                   help="images per forward/backward pass (per rank)")
    p.add_argument("--global-batch", type=int, default=None,
                   help="images per optimizer step over all ranks; a multiple of "
                        "--micro-batch x dp (accumulation = global / (micro x dp)); "
                        "default: --micro-batch x dp")
    p.add_argument("--dp", type=int, default=None,
                   help="data-parallel size; default: world size / (tp x pp)")
    mp_cli.add_model_parallel_flags(p)   # --tp --pp --schedule --recompute --offload-dir --timeline
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
    p.add_argument("--warmup", type=int, default=5, help="linear warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.05,
                   help="decoupled weight decay (AdamW) or L2 (SGD); never on biases, "
                        "LayerNorm, position embedding, class token")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--clip", type=float, default=1.0,
                   help="max global gradient norm; 0 disables clipping")
    p.add_argument("--label-smoothing", type=float, default=0.0,
                   help="label smoothing of the cross-entropy (0 <= s < 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="BLAS and Numba threads per rank; default: cores / ranks")
    p.add_argument("--log-every", type=int, default=10,
                   help="print a progress line every N steps (metrics.jsonl has every step)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    add_checkpoint_flags(p)
    p.add_argument("--timeout", type=float, default=0.0,
                   help="watchdog: abort the job (reporting which rank waits in which "
                        "collective) after S seconds without progress; must exceed the "
                        "longest step or checkpoint write; 0 disables")
    p.add_argument("--skip-nonfinite", type=int, default=0,
                   help="skip (no update) up to N steps whose loss or gradient norm is "
                        "NaN/inf, logged in metrics.jsonl; 0 stops at the first, naming it")
    return p


# keys of OUT/config.toml that --resume OUT does not take over: where to resume from and
# where to write are this command's own, and the process layout is the launch's (a
# checkpoint resumes in any layout): dp is derived from the world size, tp/pp (with the
# pipeline-only --schedule and --timeline) default to 1 unless typed again
RESUME_IGNORED = ("resume", "out", "dp", "tp", "pp", "schedule", "timeline")


def parse_args(parser, argv=None):
    """Flags in layers, lowest first: the parser's defaults, ``RESUME/config.toml`` (the
    resolved flags of the run being resumed, without RESUME_IGNORED; skipped when the
    file is missing), ``--config FILE``, the command line.

    With a resume, ``out`` is the resumed folder unless ``--out`` is typed on the command
    line (an ``out`` key in ``--config FILE`` does not redirect a resume).
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
    parser.set_defaults(**{**base, **layer})
    args = parser.parse_args(argv)
    if args.resume is not None:
        args.out = typed.out if typed.out is not None else args.resume
    return args


def check_args(args, parser, world_size=1):
    """Reject bad flag values before building anything (parser.error exits with code 2).

    Pure arithmetic on the flags and the world size, so under MPI every rank
    reaches the same verdict with the same message, before any collective.
    """
    if args.data != "random":
        try:   # existence only: every rank can check it, before any collective
            check_source(args.data)
            if args.eval_data is not None:
                check_source(args.eval_data)
        except (ValueError, FileNotFoundError) as exc:
            parser.error(str(exc))
    for flag in ("steps", "micro_batch", "random_samples", "log_every", "loader_threads",
                 "eval_batch"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: expected >= 1")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads {args.threads}: expected >= 1 (omit it for cores / ranks)")
    if args.eval_samples < 0:
        parser.error(f"--eval-samples {args.eval_samples}: expected >= 0 (0: all)")
    if args.eval_every < 0:
        parser.error(f"--eval-every {args.eval_every}: expected >= 0")
    if not 0.0 <= args.holdout < 1.0:
        parser.error(f"--holdout {args.holdout}: expected 0 <= fraction < 1")
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
    preset = get_config(args.model)
    mp_cli.check_model_parallel_flags(args, parser, (preset.heads, preset.mlp_dim, preset.depth))
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
    check_checkpoint_flags(args, parser)
    for flag in ("lr", "min_lr", "weight_decay", "momentum", "clip"):
        value = getattr(args, flag)    # NaN passes every "<" test, so ask for it by name
        if not (math.isfinite(value) and value >= 0):
            parser.error(f"--{flag.replace('_', '-')} {value}: expected a finite number >= 0")
    if not 0.0 <= args.timeout < float("inf"):
        parser.error(f"--timeout {args.timeout}: expected seconds >= 0 (0 disables)")
    if args.skip_nonfinite < 0:
        parser.error(f"--skip-nonfinite {args.skip_nonfinite}: expected >= 0")
    if not 0.0 <= args.label_smoothing < 1.0:
        parser.error(f"--label-smoothing {args.label_smoothing}: expected 0 <= s < 1")


def make_data(args, grid, resume=None):
    """``(model config, step batches, held-out dataset or None, description)`` on this rank.

    resume : ``(path, metadata)`` of the checkpoint to continue from, or None.
    """
    start = resume[1]["step"] if resume else 0
    overrides = {"dtype": args.dtype}
    if args.data == "random":
        if args.classes is not None:
            overrides["num_classes"] = args.classes
        config = get_config(args.model, **overrides)
        dataset = RandomImages(args.random_samples, config.image_size, config.in_chans,
                               config.num_classes, seed=args.seed, dtype=args.dtype)
        batches = StepBatches(dataset, args.global_batch, args.micro_batch,
                              rank=grid.dp_rank, world_size=grid.dp).iterate(start)
        if resume:
            check_global_batch(resume[1].get("loader", {}), args.global_batch, resume[0])
        return config, batches, None, f"random ({args.random_samples} images)"
    preset = get_config(args.model)
    classes = args.classes
    if classes is None and args.data.startswith("synthetic:"):
        classes = preset.num_classes
    splits = open_data(args.data, classes=classes, image_size=preset.image_size,
                       seed=args.data_seed, instances=args.instances, holdout=args.holdout,
                       eval_spec=args.eval_data)
    config = get_config(args.model, num_classes=splits.num_classes, **overrides)
    loader = Loader(splits.train, args.micro_batch, rank=grid.dp_rank, world_size=grid.dp,
                    seed=args.seed, augment=args.augment or None, image_size=config.image_size,
                    num_threads=args.loader_threads)
    if resume:
        restore_loader(loader, resume[1].get("loader", {}), args.global_batch, resume[0])
    return config, LoaderSteps(loader, args.accum, args.dtype), splits.eval, splits.description


def train(args, world_comm, guard, parser):
    grid = ProcessGrid(world_comm, dp=args.dp, tp=args.tp, pp=args.pp)
    guard.label = grid.coords
    # SIGTERM/SIGUSR1/SIGINT from here on set a flag; the ranks agree after each step and
    # checkpoint into OUT (a second Ctrl-C ends the process at once)
    preempt = Preemption(grid.world, INTERACTIVE_SIGNALS).install()
    root = grid.rank == 0          # world rank 0 alone prints and writes files
    resume = resume_point(args.resume, grid.world) if args.resume else None
    start = resume[1]["step"] if resume else 0
    config, batches, heldout, description = make_data(args, grid, resume)
    if heldout is not None and args.eval_samples:
        heldout = spread_subset(heldout, args.eval_samples)
    evaluator = (Evaluator(heldout, grid.dp_group, args.eval_batch, config.image_size,
                           args.dtype, num_threads=args.loader_threads)
                 if heldout is not None else None)
    out = Path(args.out or args.resume
               or Path("runs") / time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
    flags = {a.dest: getattr(args, a.dest) for a in parser._actions
             if a.dest not in ("help", "config")}

    model = mp_cli.build_model(args, config, grid)   # ViT, or this rank's tp/pp ModelShard
    trainer = ParallelTrainer(
        model, grid, zero=args.zero, accum=args.accum,
        bucket_bytes=int(args.bucket_mb * 2**20), overlap=args.overlap,
        optimizer=args.optimizer, momentum=args.momentum, weight_decay=args.weight_decay,
        max_grad_norm=args.clip if args.clip > 0 else None, smoothing=args.label_smoothing,
        schedule=args.schedule)
    offload = mp_cli.attach_offload(args, trainer, grid)
    schedule = WarmupCosine(args.lr, args.warmup, args.steps, args.min_lr)
    # the --skip-nonfinite budget is per run, not per launch or per chunk: the count
    # goes into every checkpoint and comes back with --resume
    skipped = [skipped_nonfinite(resume[1], resume[0]) if resume else 0]
    ckpt = CheckpointManager(
        out / "ckpt", mp_cli.state_adapter(trainer), grid.world, preset=args.model,
        config=config,
        save_every=args.save_every, keep_last=args.keep_last,
        meta=lambda step: {"scheduler": schedule.state_dict(),
                           "loader": data_state(batches, args.global_batch),
                           "rng": {"seed": args.seed, "data_seed": args.data_seed},
                           "nonfinite": {"skipped": skipped[0]},
                           "run_config": flags})
    if resume:
        ckpt.load(resume[0])
    # only now, with the checkpoint (if any) validated and loaded: a refused --resume
    # leaves OUT untouched; a fork (--resume A --out B) writes B only
    if root:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.json", json.dumps(
            {"args": vars(args), "model": asdict(config)}, indent=2) + "\n")
        write_toml(out / "config.toml", flags,
                   header="resolved flags of run/pretrain.py; rerun with --config this-file")
        if resume and not _same_dir(out, args.resume):
            fork_metrics(Path(args.resume) / "metrics.jsonl", out / "metrics.jsonl", start)
        truncate_metrics(out / "metrics.jsonl", start)   # steps after the checkpoint are redone
        if resume:
            print(f"resumed from {resume[0]} at step {start}"
                  + ("" if _same_dir(out, args.resume) else f", writing to {out}"), flush=True)
    if start >= args.steps:     # every rank knows both numbers: all return here together
        if root:
            print(f"already at step {start} of --steps {args.steps}: nothing to do "
                  "(raise --steps to train further)", flush=True)
        return
    peak = blas_peak(grid.world, args.dtype)
    grid.ledger.clear()   # the peak's all-reduce is not part of step 1
    if root:
        print(f"{args.model}: {mp_cli.param_count_text(model)}, {args.dtype}; world "
              f"{grid.world_size} = dp {grid.dp} x tp {grid.tp} x pp {grid.pp}, ZeRO-{args.zero}; "
              f"global batch {args.global_batch} = micro-batch {args.micro_batch} x accumulation "
              f"{args.accum} x dp {grid.dp}; {args.steps} steps on --data {args.data}: "
              f"{description}; BLAS peak {peak / 1e9:.1f} GFLOP/s (all ranks)", flush=True)

    runlog = RunLog(root, out / "metrics.jsonl", args.steps, peak, args.log_every,
                    progress=not args.no_progress)
    runlog.header(script="pretrain", model=args.model, num_params=model.num_params,
                  dtype=args.dtype, world_size=grid.world_size, dp=grid.dp, tp=grid.tp,
                  pp=grid.pp, zero=args.zero, global_batch=args.global_batch, steps=args.steps,
                  data=args.data, data_description=description,
                  train_flops_per_step=train_flops(config, args.global_batch))
    say = runlog.say

    def evaluate(step, epoch):
        t0 = time.perf_counter()
        result = evaluator.evaluate(mp_cli.eval_model(trainer))
        runlog.eval(step, epoch, result, time.perf_counter() - t0)

    def log(record):
        # every rank: the held-out evaluation is collective
        runlog.train(record)
        if dog is not None:
            dog.beat()
        step = record["step"]
        if record.get("skipped"):
            skipped[0] = record["skipped_total"]
        if record.get("skipped") and record["skipped_total"] <= args.skip_nonfinite:
            say(f"step {step}: loss {record['loss']} grad norm {record['grad_norm']}, update "
                f"skipped ({record['skipped_total']} of --skip-nonfinite "
                f"{args.skip_nonfinite})")
        last_epoch[0] = record["epoch"]
        if not args.audit and eval_due(step):
            evaluate(step, record["epoch"])

    last_epoch = [0]

    def eval_due(step):
        return evaluator is not None and bool(
            step == args.steps or (args.eval_every and step % args.eval_every == 0))

    def audit(step, mark):
        audit_root(step, mark)
        if eval_due(step):   # after the table: it shows the step's own traffic only
            evaluate(step, last_epoch[0])

    def audit_root(step, mark):
        if not root:
            return
        lines = audit_tables.comm_table(
            step, grid.ledger.summary(since=mark), trainer.predicted_step_bytes(),
            psi=model.num_params, p=grid.dp, stage=args.zero, itemsize=trainer.itemsize,
            accum=args.accum,
            other=mp_cli.predicted_group_bytes(trainer, args.micro_batch, args.recompute))
        lines += mp_cli.audit_lines(trainer, args.micro_batch, args.recompute, offload)
        if step == 1:
            exact, closed = trainer.predicted_memory()
            lines += audit_tables.memory_table(trainer.memory(), exact, closed,
                                               p=grid.dp, stage=args.zero)
        say("\n".join(lines))

    dog = (Watchdog(args.timeout, grid.ledger, world_comm, label=grid.coords).start()
           if args.timeout else None)
    try:
        if evaluator is not None and not resume:
            evaluate(0, 0)   # the untrained baseline, so the curve starts at chance
        records = run_in_chunks(
            lambda first, stop: train_loop(trainer, schedule, batches, stop,
                                           global_batch=args.global_batch, start_step=first,
                                           log=log, audit=audit if args.audit else None,
                                           skip_nonfinite=args.skip_nonfinite,
                                           skipped_before=skipped[0], stop=preempt.agree),
            ckpt, start, args.steps, preempted=lambda: preempt.stopped)
    finally:
        if dog is not None:
            dog.stop()
        preempt.uninstall()
        runlog.close()
        if evaluator is not None:
            evaluator.close()
        loader = getattr(batches, "loader", None)
        if loader is not None:
            loader.close()
    mp_cli.write_timeline(args, trainer, root)       # collective over pp; no-op without --pp
    if offload is not None:
        offload.close()
    if root and records:
        evals = runlog.evals
        held = (f"; held-out top-1 {evals[0]['accuracy']:.1%} -> {evals[-1]['accuracy']:.1%}"
                if evals else "")
        print(f"loss {records[0]['loss']:.4f} -> {records[-1]['loss']:.4f}{held}\n"
              f"wrote {out / 'metrics.jsonl'}, {out / 'config.toml'} and {out / 'config.json'}"
              f" (plot: python run/plot.py {out / 'metrics.jsonl'})"
              + (f"; last checkpoint {ckpt.last_path}" if ckpt.last_path else ""), flush=True)
    if root and preempt.stopped:
        print(f"{preempt.describe()}: wrote {ckpt.last_path}; continue with --resume {out}",
              flush=True)
    grid.free()


def _same_dir(a, b):
    return Path(a).resolve() == Path(b).resolve()


def main(argv=None):
    from mpi4py import MPI
    world_comm = MPI.COMM_WORLD
    # first: an exception on one rank must end every rank, never hang the job
    guard = install_guard(world_comm)
    # every rank reaches the same parser.error; one copy of the message is enough
    parser = usage_from_rank0(build_parser(), world_comm)
    args = parse_args(parser, argv)
    check_args(args, parser, world_comm.Get_size())
    threads = args.threads or max(1, (os.cpu_count() or 1) // world_comm.Get_size())
    with limit_threads(threads):
        try:
            train(args, world_comm, guard, parser)
        except (CheckpointError, FloatingPointError) as exc:
            # raised on every rank alike (agreed by a collective): exit, no abort needed
            print(f"[minivit rank {world_comm.Get_rank()}] error: {exc}", file=sys.stderr,
                  flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
