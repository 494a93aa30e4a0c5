"""Selective recompute of the attention core, timed: the P-keeping core
(``kernels_attention``) against the log-sum-exp one (``kernels_attention_lse``),
forward and backward per layer, alternated round by round on the same inputs.

    python run/bench.py selective [--shape vit-tiny:32] [--threads 1,2] [--rounds 9]

Prints the CPU, the load average, the medians in ms and the bytes each path
keeps for the backward (P: s B H T^2; L: 8 B H T).  float32, as training runs.
"""
import argparse
import os
import time

import numpy as np

from ..config import get_config
from ..kernels_attention import attention_backward, attention_forward
from ..kernels_attention_lse import attention_backward_lse, attention_forward_lse
from ..threads import limit_threads
from .bench import machine_info
from .bench_attention import _count, _shape


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


def _thread_counts(text):
    """argparse type: ``"1,2"`` -> [1, 2]; every count a positive integer."""
    return [_count(1)(part) for part in text.split(",")]


def main(argv=None):
    """Prints one line per path and thread count; returns 0 (argparse exits 2 on bad flags)."""
    ap = argparse.ArgumentParser(
        prog="bench.py selective", description=" ".join(__doc__.split("\n\n")[0].split()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--shape", type=_shape, default="vit-tiny:32",
                    help="PRESET:BATCH, e.g. vit-tiny:32 (the preset's T, heads, head_dim)")
    ap.add_argument("--threads", type=_thread_counts, default="1,2",
                    help="comma-separated thread counts, each timed in turn")
    ap.add_argument("--rounds", type=_count(1), default=9, help="timed rounds (median)")
    args = ap.parse_args(argv)
    preset, batch = args.shape[:2]
    print(f"CPU: {machine_info()['cpu']}; load average {os.getloadavg()[0]:.2f}; {preset} batch "
          f"{batch}, float32, one layer's attention core, median of {args.rounds}")
    for n in args.threads:
        res = measure(preset, batch, n, args.rounds)
        base = res["keep P"]
        for name, (f, b, kept) in res.items():
            print(f"  threads {n}  {name:<10} forward {f:7.2f} ms  backward {b:7.2f} ms  "
                  f"fwd+bwd {f + b:7.2f} ms ({(f + b) / (base[0] + base[1]):.2f}x)  "
                  f"kept {kept / 2**20:7.2f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
