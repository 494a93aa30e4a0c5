"""Selective recompute of the attention core, timed: the P-keeping core
(``kernels_attention``) against the log-sum-exp one (``kernels_attention_lse``),
forward and backward per layer, alternated round by round on the same inputs.

    python -m minivit.tools.bench_selective [--shape vit-tiny:32] [--threads 1,2]
        [--rounds 9]

Prints the CPU, the load average, the medians in ms and the bytes each path
keeps for the backward (P: s B H T^2; L: 8 B H T).  float32, as training runs.
"""
import argparse
import os
import platform
import time

import numpy as np

from ..config import get_config
from ..kernels_attention import attention_backward, attention_forward
from ..kernels_attention_lse import attention_backward_lse, attention_forward_lse
from ..threads import limit_threads


def _cpu():
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def _time(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def measure(preset, batch, threads, rounds):
    """``{path: (forward ms, backward ms, kept bytes)}`` medians for one thread count."""
    c = get_config(preset)
    hd = c.dim // c.heads
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((batch, c.seq_len, 3, c.heads, hd)).astype(np.float32)
    do = rng.standard_normal((batch, c.seq_len, c.heads, hd)).astype(np.float32)
    paths = {"keep P": (attention_forward, attention_backward),
             "selective": (attention_forward_lse, attention_backward_lse)}
    times = {k: ([], []) for k in paths}
    kept = {}
    with limit_threads(threads):
        for r in range(rounds + 1):                  # round 0 warms up (compiles, pages)
            for name, (fwd, bwd) in paths.items():
                tf, (o, ctx) = _time(fwd, qkv, hd ** -0.5)
                tb, _ = _time(bwd, do, qkv, ctx, hd ** -0.5)
                kept[name] = ctx.nbytes
                if r:
                    times[name][0].append(tf)
                    times[name][1].append(tb)
    return {k: (1e3 * np.median(f), 1e3 * np.median(b), kept[k]) for k, (f, b) in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="vit-tiny:32")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args(argv)
    preset, _, batch = args.shape.partition(":")
    print(f"CPU: {_cpu()}; load average {os.getloadavg()[0]:.2f}; {preset} batch {batch}, "
          f"float32, one layer's attention core, median of {args.rounds}")
    for n in (int(x) for x in args.threads.split(",")):
        res = measure(preset, int(batch), n, args.rounds)
        base = res["keep P"]
        for name, (f, b, kept) in res.items():
            print(f"  threads {n}  {name:<10} forward {f:7.2f} ms  backward {b:7.2f} ms  "
                  f"fwd+bwd {f + b:7.2f} ms ({(f + b) / (base[0] + base[1]):.2f}x)  "
                  f"kept {kept / 2**20:7.2f} MiB")


if __name__ == "__main__":
    main()
