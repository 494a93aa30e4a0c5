"""Strong scaling of the data-parallel training step over MPI ranks.

    python run/bench.py scaling [--ranks 1,2,4] [--model vit-micro] [--global-batch 64]
                                [--zero 0,3] [--overlap] [--steps 5] [--json]

For each (ZeRO stage, rank count) the bench launches ``mpirun -n N`` on this
module's worker, which times ``--steps`` optimizer steps (after one warm-up
step) with a fixed global batch (strong scaling: each rank's share shrinks as N
grows).  Reported per configuration: images/s, seconds per step, the share of
the step spent blocked in communication, MiB sent per rank per step, and the
speed-up and parallel efficiency against the 1-rank run of the same stage,
measured in the same invocation.  Each rank uses ``--threads`` BLAS/Numba
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

    from .grid import ProcessGrid
    from .guard import install_guard
    from .step import ParallelTrainer
    world = MPI.COMM_WORLD
    install_guard(world)
    grid = ProcessGrid(world, dp=world.Get_size())
    cfg = get_config(args.model)
    micro = args.global_batch // grid.dp
    rng = np.random.default_rng(grid.dp_rank)
    x = rng.standard_normal((micro, cfg.in_chans, cfg.image_size, cfg.image_size),
                            dtype=np.float32)
    y = rng.integers(0, cfg.num_classes, micro)
    trainer = ParallelTrainer(ViT(cfg, seed=0), grid, zero=args.zero[0],
                              bucket_bytes=int(args.bucket_mb * 2**20), overlap=args.overlap,
                              max_grad_norm=1.0)
    trainer.train_step([(x, y)], 1e-4)                    # warm-up (Numba cache, allocations)
    world.Barrier()
    t0 = time.perf_counter()
    outs = [trainer.train_step([(x, y)], 1e-4) for _ in range(args.steps)]
    seconds = (time.perf_counter() - t0) / args.steps
    # the slowest rank sets the pace; report its step time
    seconds = world.allreduce(seconds, op=MPI.MAX)
    comm_s = world.allreduce(sum(o["comm_seconds"] for o in outs) / args.steps, op=MPI.MAX)
    if grid.rank == 0:
        print(json.dumps({"ranks": grid.dp, "zero": args.zero[0], "model": args.model,
                          "global_batch": args.global_batch, "step_s": seconds,
                          "images_per_s": args.global_batch / seconds,
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
    cmd = [_mpirun(), "-n", str(n), sys.executable, "-m", "minivit.parallel.bench_scaling",
           "--worker", "--model", args.model, "--global-batch", str(args.global_batch),
           "--zero", str(zero), "--bucket-mb", str(args.bucket_mb), "--steps", str(args.steps)]
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
        print(f"{'zero':>4} {'ranks':>5} {'img/s':>9} {'s/step':>8} {'comm %':>7} "
              f"{'MiB/step':>9} {'speed-up':>9} {'efficiency':>10}")
    for zero in args.zero:
        base = None
        for n in args.ranks:
            row = _launch(args, n, zero)
            base = base or (row if n == 1 else None)
            row["speedup"] = base["step_s"] / row["step_s"] if base else None
            row["efficiency"] = row["speedup"] / n if base else None
            if args.json:
                print(json.dumps(row), flush=True)
                continue
            ratio = (f"{row['speedup']:9.2f} {row['efficiency']:10.0%}" if base
                     else f"{'-':>9} {'-':>10}")
            print(f"{zero:>4} {n:>5} {row['images_per_s']:9.1f} {row['step_s']:8.3f} "
                  f"{row['comm_s'] / row['step_s']:7.0%} {row['comm_mib']:9.2f} {ratio}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
