"""Strong scaling of the data-parallel training step over MPI ranks.

    python run/bench.py scaling [--ranks 1,2,4] [--model vit-micro] [--global-batch 64]
                                [--micro-batch M] [--zero 0,3] [--overlap] [--steps 5]
                                [--json] [--plot scaling.png]

For each (ZeRO stage, rank count) the bench launches ``mpirun -n N`` on this
module's worker, which times ``--steps`` optimizer steps (after one warm-up
step) with a fixed global batch (strong scaling: each rank's share shrinks as N
grows).  The micro-batch is fixed too (``--micro-batch``, default the global
batch over the largest rank count), so fewer ranks run more gradient-accumulation
sub-steps per optimizer step: every configuration does the same per-call work
and the same optimizer steps, as in a real strong-scaling study.  Reported per
configuration: images/s, seconds per step, the share of
the step spent blocked in communication, MiB sent per rank per step, and the
speed-up and parallel efficiency against the 1-rank run of the same stage,
measured in the same invocation, and the total model GFLOP/s over all ranks
(``minivit.flops.train_flops`` of the global batch per second).  Points with
more ranks x threads than cores are oversubscribed and marked (``*`` in the
table, hollow markers in the ``--plot`` PNG): they show time-slicing, not scaling.  Each rank uses ``--threads`` BLAS/Numba
threads (default 1, so N ranks occupy N cores and the 1-rank baseline is one
core; more threads than free cores slow a shared machine down instead).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np


def _parse(argv):
    ap = argparse.ArgumentParser(prog="bench.py scaling", description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="1,2,4", help="comma-separated rank counts")
    ap.add_argument("--model", default="vit-micro")
    ap.add_argument("--global-batch", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=None,
                    help="images per rank per sub-step (default: global batch / max ranks)")
    ap.add_argument("--plot", default=None, help="write a PNG of s/step and GFLOP/s vs ranks")
    ap.add_argument("--zero", default="0", help="comma-separated ZeRO stages")
    ap.add_argument("--overlap", action="store_true", help="overlap bucket all-reduces")
    ap.add_argument("--bucket-mb", type=float, default=25.0)
    ap.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    ap.add_argument("--threads", type=int, default=1, help="BLAS/Numba threads per rank")
    ap.add_argument("--json", action="store_true", help="print one JSON object per line")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.ranks = [int(r) for r in args.ranks.split(",")]
    args.zero = [int(z) for z in args.zero.split(",")]
    for n in args.ranks:
        if n < 1 or args.global_batch % n:
            ap.error(f"--ranks {n}: expected a positive divisor of --global-batch "
                     f"{args.global_batch}")
    if args.micro_batch is None and not args.worker:
        args.micro_batch = args.global_batch // max(args.ranks)
    if args.micro_batch is not None and not args.worker:
        for n in args.ranks:
            if args.micro_batch < 1 or args.global_batch % (n * args.micro_batch):
                ap.error(f"--micro-batch {args.micro_batch} with --ranks {n}: expected "
                         f"global batch {args.global_batch} divisible by ranks x micro-batch")
    if any(z not in (0, 1, 2, 3) for z in args.zero):
        ap.error(f"--zero {args.zero}: expected stages among 0, 1, 2, 3")
    if args.steps < 1 or args.threads < 1:
        ap.error(f"--steps {args.steps}, --threads {args.threads}: expected >= 1")
    return args


def _worker(args):
    """Runs on every rank; world rank 0 prints one JSON line with the timings."""
    from mpi4py import MPI

    from minivit.config import get_config
    from minivit.model import ViT

    from ..grid import ProcessGrid
    from ..runtime.guard import install_guard
    from ..runtime.step import StepEngine
    world = MPI.COMM_WORLD
    install_guard(world)
    grid = ProcessGrid(world, dp=world.Get_size())
    from minivit.flops import train_flops
    cfg = get_config(args.model)
    micro = args.micro_batch or args.global_batch // grid.dp
    accum = args.global_batch // (grid.dp * micro)
    rng = np.random.default_rng(grid.dp_rank)
    batches = []
    for _ in range(accum):
        x = rng.standard_normal((micro, cfg.in_chans, cfg.image_size, cfg.image_size),
                                dtype=np.float32)
        batches.append((x, rng.integers(0, cfg.num_classes, micro)))
    trainer = StepEngine(ViT(cfg, seed=0), grid, zero=args.zero[0], accum=accum,
                              bucket_bytes=int(args.bucket_mb * 2**20), overlap=args.overlap,
                              max_grad_norm=1.0)
    trainer.train_step(batches, 1e-4)                     # warm-up (Numba cache, allocations)
    world.Barrier()
    t0 = time.perf_counter()
    outs = [trainer.train_step(batches, 1e-4) for _ in range(args.steps)]
    seconds = (time.perf_counter() - t0) / args.steps
    # the slowest rank sets the pace; report its step time
    seconds = world.allreduce(seconds, op=MPI.MAX)
    comm_s = world.allreduce(sum(o["comm_seconds"] for o in outs) / args.steps, op=MPI.MAX)
    if grid.rank == 0:
        print(json.dumps({"ranks": grid.dp, "zero": args.zero[0], "model": args.model,
                          "global_batch": args.global_batch, "micro_batch": micro,
                          "accum": accum, "step_s": seconds,
                          "images_per_s": args.global_batch / seconds,
                          "gflops_per_s": train_flops(cfg, args.global_batch) / seconds / 1e9,
                          "comm_s": comm_s, "comm_mib": outs[-1]["comm_bytes"] / 2**20}),
              flush=True)
    grid.free()
    return 0


def _mpirun():
    exe = shutil.which("mpirun") or shutil.which("mpiexec")
    if exe is None and os.path.exists(os.path.join(os.path.dirname(sys.executable), "mpirun")):
        exe = os.path.join(os.path.dirname(sys.executable), "mpirun")
    if exe is None:
        raise RuntimeError("mpirun not found: install the project (the mpich wheel brings it)")
    return exe


def _launch(args, n, zero):
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads, "NUMBA_NUM_THREADS": threads}
    cmd = [_mpirun(), "-n", str(n), sys.executable, "-m", "minivit.parallel.tools.bench_scaling",
           "--worker", "--model", args.model, "--global-batch", str(args.global_batch),
           "--zero", str(zero), "--bucket-mb", str(args.bucket_mb), "--steps", str(args.steps),
           "--micro-batch", str(args.micro_batch)]
    if args.overlap:
        cmd.append("--overlap")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.worker:
        return _worker(args)
    if not args.json:
        print(f"strong scaling, {args.model}, global batch {args.global_batch}, "
              f"{args.steps} timed steps, overlap={args.overlap}, {args.threads} thread(s) "
              f"per rank, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        print(f"{'zero':>4} {'ranks':>6} {'accum':>5} {'img/s':>9} {'s/step':>8} {'GFLOP/s':>8} "
              f"{'comm %':>7} {'MiB/step':>9} {'speed-up':>9} {'efficiency':>10}")
    cores = os.cpu_count() or 1
    rows = []
    for zero in args.zero:
        base = None
        for n in args.ranks:
            row = _launch(args, n, zero)
            base = base or (row if n == 1 else None)
            row["speedup"] = base["step_s"] / row["step_s"] if base else None
            row["efficiency"] = row["speedup"] / n if base else None
            row["oversubscribed"] = n * args.threads > cores
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
                continue
            ratio = (f"{row['speedup']:9.2f} {row['efficiency']:10.0%}" if base
                     else f"{'-':>9} {'-':>10}")
            mark = "*" if row["oversubscribed"] else " "
            print(f"{zero:>4} {n:>5}{mark} {row['accum']:>5} {row['images_per_s']:9.1f} "
                  f"{row['step_s']:8.3f} {row['gflops_per_s']:8.2f} "
                  f"{row['comm_s'] / row['step_s']:7.0%} {row['comm_mib']:9.2f} {ratio}",
                  flush=True)
    if not args.json and any(r["oversubscribed"] for r in rows):
        print(f"* oversubscribed: ranks x threads > {cores} cores (time-sliced, not scaling)")
    if args.plot:
        plot(rows, args, cores, args.plot)
    return 0


def plot(rows, args, cores, path):
    """PNG: seconds per optimizer step and total GFLOP/s against ranks, per ZeRO stage.

    Oversubscribed points (ranks x threads > cores) are drawn hollow.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for zero in args.zero:
        rs = [r for r in rows if r["zero"] == zero]
        for ax, key in zip(axes, ("step_s", "gflops_per_s")):
            line, = ax.plot([r["ranks"] for r in rs], [r[key] for r in rs], "-",
                            label=f"ZeRO {zero}")
            for r in rs:
                ax.plot(r["ranks"], r[key], "o", color=line.get_color(),
                        markerfacecolor="none" if r["oversubscribed"] else line.get_color())
    for ax, label in zip(axes, ("seconds per optimizer step", "total model GFLOP/s")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.ranks, [str(n) for n in args.ranks])
        ax.set_xlabel(f"MPI ranks ({args.threads} thread(s) each; hollow = oversubscribed, "
                      f"> {cores} cores)", fontsize=7)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"strong scaling, {args.model}, global batch {args.global_batch}, "
                 f"micro-batch {args.micro_batch}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
