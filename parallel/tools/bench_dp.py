"""``mpirun -n DP python run/bench.py train --dp DP``: data parallel on one node
against one process with the same cores (the issue's "scaling on this machine").

Each of the DP ranks runs ``--threads`` BLAS threads (default 1) on its
``--batch`` images and all-reduces gradients (``StepEngine``, ZeRO stage 0,
Goyal et al. 2017 section 2: the global batch is ``DP * batch``).  The
comparison is one process with ``DP * threads`` BLAS threads training on the
same global batch in one micro-batch.  Rounds alternate: every rank runs one
data-parallel step, then rank 0 alone runs one single-process step while the
other ranks wait in a sleeping poll (not a spinning barrier), so both settings
see the same machine load.  Printed: images/s of each, and the ratio
dp images/s / single-process images/s (target >= 0.9).
"""
import json
import os
import sys
import time

import numpy as np


def _wait_for_rank0(comm):
    """Block until rank 0 reaches the matching Ibarrier, sleeping instead of spinning."""
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(0.002)


def main(args):
    """``args``: a ``minivit.tools.bench.BenchTrainConfig`` (``run/bench.py train`` flags)."""
    from mpi4py import MPI

    from minivit.tools.bench import build, make_step, summarise
    from minivit.threads import limit_threads
    from minivit.model import ViT
    from minivit.optim import AdamW

    from ..grid import ProcessGrid
    from ..runtime.guard import install_guard
    from ..runtime.step import StepEngine

    world = MPI.COMM_WORLD
    if world.Get_size() != args.dp:
        # every rank sees the same size: each exits 2, rank 0 alone says why
        if world.Get_rank() == 0:
            print(f"bench.py train: error: --dp {args.dp} with {world.Get_size()} MPI rank(s): "
                  f"expected mpirun -n {args.dp} python run/bench.py train --dp {args.dp}",
                  file=sys.stderr, flush=True)
        return 2
    guard = install_guard(world)
    grid = ProcessGrid(world, dp=args.dp)
    guard.label = grid.coords
    rank = grid.dp_rank
    global_batch = args.dp * args.batch
    per_rank, args.batch = args.batch, global_batch
    cfg, _, _, x_all, y_all = build(args)        # same global batch on every rank
    args.batch = per_rank
    lo = rank * per_rank
    x, y = x_all[lo:lo + per_rank], y_all[lo:lo + per_rank]
    trainer = StepEngine(ViT(cfg, seed=0), grid, zero=0)
    dp_step = (lambda: trainer.train_step([(x, y)], 1e-4))
    single = None
    if rank == 0:
        model = ViT(cfg, seed=0)
        single = make_step(model, AdamW(model.flat, lr=1e-4, weight_decay=0.05), x_all, y_all)
    dp_times, single_times = [], []
    for i in range(args.warmup + args.steps):
        with limit_threads(args.threads):
            world.Barrier()
            t0 = time.perf_counter()
            dp_step()
            seconds = world.allreduce(time.perf_counter() - t0, op=MPI.MAX)
        if rank == 0:
            with limit_threads(args.threads * args.dp):
                t0 = time.perf_counter()
                single()
                single_s = time.perf_counter() - t0
            world.Ibarrier().Wait()
        else:
            _wait_for_rank0(world)
        if i >= args.warmup:
            dp_times.append(seconds)
            if rank == 0:
                single_times.append(single_s)
    if rank == 0:
        peak = 1.0       # MFU is not the point here; the ratio is
        d = summarise(dp_times, cfg, global_batch, peak)
        s = summarise(single_times, cfg, global_batch, peak)
        out = {"model": args.model, "dp": args.dp, "threads_per_rank": args.threads,
               "global_batch": global_batch, "dp_ms_per_step": d["ms_per_step"],
               "dp_images_per_s": d["images_per_s"], "single_ms_per_step": s["ms_per_step"],
               "single_threads": args.threads * args.dp,
               "single_images_per_s": s["images_per_s"],
               "ratio": d["images_per_s"] / s["images_per_s"],
               "paired_ratio": float(np.median(np.asarray(single_times) / np.asarray(dp_times))),
               "load_avg": os.getloadavg()[0]}
        if args.json:
            print(json.dumps(out), flush=True)
        else:
            print(f"{args.model} global batch {global_batch}: dp={args.dp} x {args.threads} "
                  f"thread(s) {out['dp_images_per_s']:.1f} img/s ({out['dp_ms_per_step']:.0f} "
                  f"ms/step) | 1 process x {out['single_threads']} threads "
                  f"{out['single_images_per_s']:.1f} img/s ({out['single_ms_per_step']:.0f} "
                  f"ms/step) | ratio dp/single {out['ratio']:.2f} (paired median "
                  f"{out['paired_ratio']:.2f}) [load {out['load_avg']:.1f}]", flush=True)
    grid.free()
    return 0
