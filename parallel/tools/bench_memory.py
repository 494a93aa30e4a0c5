"""``run/bench.py memory``: what recompute and offload save, measured in one process.

    python run/bench.py memory [--model vit-tiny] [--micro-batch 8] [--json]

Recompute (Chen et al. 2016; Korthikanti et al. 2022, section 4): the bytes
of the contexts one micro-batch keeps between its forward and its backward
(``recompute.ctx_nbytes``), and the fwd+bwd seconds, with and without
``--recompute``; the gradients are checked bitwise equal.

Offload (ZeRO-Offload analogue, ``parallel/offload.py``): the memory ledger
(``StepEngine.memory()``) and the process's anonymous resident memory
(``RssAnon``) after an AdamW step, before and after the optimizer state moves
to ``numpy.memmap`` files (two fresh processes, one per case).
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time

import numpy as np
from mpi4py import MPI

from minivit.allocator import release_freed_memory
from minivit.config import PRESETS, get_config
from minivit.loss import cross_entropy_backward, cross_entropy_forward

from ..grid import ProcessGrid
from ..model_parallel import ModelShard
from ..offload import Offload, rss_bytes
from ..recompute import ctx_nbytes
from ..runtime.step import StepEngine


def _fwd_bwd(model, x, y):
    t0 = time.perf_counter()
    logits, ctx = model.forward(x)
    _, lctx = cross_entropy_forward(logits, y)
    kept = ctx_nbytes(ctx)
    model.backward(cross_entropy_backward(lctx, 1.0), ctx)
    return kept, time.perf_counter() - t0


def measure_recompute(config, micro_batch, grid, repeats=2):
    """``{"plain_bytes", "recompute_bytes", "ratio", "plain_s", "recompute_s", "bitwise"}``."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((micro_batch, config.in_chans, config.image_size,
                             config.image_size)).astype(config.dtype)
    y = rng.integers(0, config.num_classes, micro_batch)
    out = {}
    grads = []
    for key, recompute in (("plain", False), ("recompute", True)):
        model = ModelShard(config, 0, grid, recompute=recompute)
        runs = []
        for _ in range(repeats):
            model.zero_grad()
            runs.append(_fwd_bwd(model, x, y))
        out[f"{key}_bytes"] = runs[0][0]
        out[f"{key}_s"] = min(s for _, s in runs)
        grads.append(model.flat.grad.copy())
        del model
    out["ratio"] = out["plain_bytes"] / out["recompute_bytes"]
    out["bitwise"] = bool(np.array_equal(grads[0], grads[1]))
    return out


def offload_child(config, micro_batch, offload):
    """One fresh process's memory after 2 AdamW steps, with or without offload.

    A fresh process per case: freed heap memory is not always returned to the
    OS (glibc keeps large freed chunks once its mmap threshold has grown), so
    before/after in one process would under-report the drop.
    """
    grid = ProcessGrid(MPI.COMM_SELF, dp=1)
    model = ModelShard(config, 0, grid)
    trainer = StepEngine(model, grid, accum=1)
    rng = np.random.default_rng(0)
    batch = [(rng.standard_normal((micro_batch, config.in_chans, config.image_size,
                                   config.image_size)).astype(config.dtype),
              rng.integers(0, config.num_classes, micro_batch))]
    with tempfile.TemporaryDirectory(prefix="offload") as tmp:
        off = Offload(trainer, tmp, 0) if offload else None
        for _ in range(2):
            trainer.train_step(batch, 1e-4)
        release_freed_memory()      # minivit keeps freed heap for speed; RSS should be live memory
        rss = rss_bytes()
        out = {"ledger_optim": trainer.memory()["optim"],
               "offloaded": off.nbytes if off else 0, **rss}
        if off:
            off.close()
    grid.free()
    return out


def measure_offload(model_name, micro_batch, dtype):
    """``{"off": child result, "on": child result}`` from two fresh processes."""
    out = {}
    for key in ("off", "on"):
        proc = subprocess.run([sys.executable, "-m", "minivit.parallel.tools.bench_memory",
                               "--model", model_name, "--micro-batch", str(micro_batch),
                               "--dtype", dtype, "--offload-child", key],
                              capture_output=True, text=True, check=True)
        out[key] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="run/bench.py memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit-tiny", choices=sorted(PRESETS))
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--offload-child", choices=["off", "on"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.micro_batch < 1:
        p.error(f"--micro-batch {args.micro_batch}: expected >= 1")
    config = get_config(args.model, dtype=args.dtype)
    if args.offload_child:
        print(json.dumps(offload_child(config, args.micro_batch, args.offload_child == "on")))
        return 0
    grid = ProcessGrid(MPI.COMM_SELF, dp=1)
    rec = measure_recompute(config, args.micro_batch, grid)
    grid.free()
    off = measure_offload(args.model, args.micro_batch, args.dtype)
    if args.json:
        print(json.dumps({"model": args.model, "micro_batch": args.micro_batch,
                          "recompute": rec, "offload": off}))
        return 0
    mib = 2.0 ** 20
    print(f"{args.model}, micro-batch {args.micro_batch}, {args.dtype}")
    print(f"recompute: activation bytes kept per micro-batch {rec['plain_bytes'] / mib:.1f} MiB "
          f"-> {rec['recompute_bytes'] / mib:.1f} MiB ({rec['ratio']:.1f}x less); fwd+bwd "
          f"{rec['plain_s']:.3f} s -> {rec['recompute_s']:.3f} s; gradients bitwise equal: "
          f"{rec['bitwise']}")
    a, b = off["off"], off["on"]
    print(f"offload: ledger optimizer state {a['ledger_optim'] / mib:.1f} MiB, "
          f"{b['offloaded'] / mib:.1f} MiB moved to memmap; after 2 steps RssAnon "
          f"{a.get('anon', 0) / mib:.1f} -> {b.get('anon', 0) / mib:.1f} MiB (drop "
          f"{(a.get('anon', 0) - b.get('anon', 0)) / mib:.1f} MiB), VmRSS "
          f"{a.get('rss', 0) / mib:.1f} -> {b.get('rss', 0) / mib:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
