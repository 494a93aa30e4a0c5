"""``run/bench.py attention``: the attention core, forward + backward, against
PyTorch's ``scaled_dot_product_attention`` on the same shapes, side by side.

    python run/bench.py attention [--shapes vit-tiny:32,vit-micro:128] [--threads 2]
        [--rounds 7] [--warmup 1] [--json]

For each ``PRESET:BATCH`` the shapes are the preset's (B, T, H, head_dim), float32.
minivit: ``attention_forward`` + ``attention_backward`` of
``minivit.kernels_attention`` on qkv (B, T, 3, H, hd), the qkv Linear's output.
PyTorch (a child process, ``torch_child``): timm's path from the same qkv,
(B, T, 3 D) -> reshape/permute -> SDPA -> transpose/reshape, and its backward
to qkv, so both sides start from and end at the same layouts.  One call of each
per round, alternated; printed: medians, the ratio of the medians, the median
of the per-round ratios, and GFLOP/s of the core's GEMMs
(``minivit.flops.step_work``: 12 B T^2 D per layer, forward + backward).
"""
import argparse
import json
import os
import sys

import numpy as np

from ..config import PRESETS, get_config
from ..kernels_attention import attention_backward, attention_forward
from ..threads import limit_threads


def _shape(spec):
    """``"PRESET:BATCH"`` -> ``(preset, B, T, H, head_dim)``; ArgumentTypeError naming
    the part that is wrong (the form, the preset or the batch)."""
    preset, colon, batch = spec.partition(":")
    if not colon:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected PRESET:BATCH, e.g. vit-tiny:32")
    if preset not in PRESETS:
        raise argparse.ArgumentTypeError(
            f"{spec!r}: unknown preset {preset!r}, expected one of {sorted(PRESETS)}")
    if not batch.isdigit() or int(batch) < 1:
        raise argparse.ArgumentTypeError(
            f"{spec!r}: batch {batch!r}: expected a positive integer (images per call)")
    c = get_config(preset)
    return preset, int(batch), c.seq_len, c.heads, c.dim // c.heads


def _count(minimum):
    """argparse type: an integer >= ``minimum`` (the message names the value)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: expected an integer >= {minimum}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def parse_args(argv):
    """Namespace with shapes [(preset, B, T, H, hd)], threads, rounds, warmup, json."""
    ap = argparse.ArgumentParser(
        prog="bench.py attention",
        description="The attention core of minivit (forward + backward) against PyTorch's "
                    "scaled_dot_product_attention on the same shapes, alternated round by "
                    "round; prints the medians, their ratio and GFLOP/s.")
    ap.add_argument("--shapes", default="vit-tiny:32,vit-micro:128", metavar="PRESET:BATCH,...",
                    type=lambda s: [_shape(x) for x in s.split(",")],
                    help="comma-separated PRESET:BATCH pairs: a model preset (its tokens, "
                         f"heads and head size; one of {', '.join(sorted(PRESETS))}) and the "
                         "batch B per call (default: %(default)s)")
    ap.add_argument("--threads", type=_count(1), default=os.cpu_count() or 1,
                    help="BLAS and Numba threads, for both sides (default: the cores, "
                         "%(default)s)")
    ap.add_argument("--rounds", type=_count(1), default=7,
                    help="timed rounds, one call of each side per round (default: %(default)s)")
    ap.add_argument("--warmup", type=_count(0), default=1,
                    help="untimed rounds before them (default: %(default)s)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return ap.parse_args(argv)


def _torch_sdpa_step(b, t, h, hd, seed):
    """In the child: timm's attention core from qkv (B, T, 3 D), forward + backward."""
    import torch
    import torch.nn.functional as F
    rng = np.random.default_rng(seed)
    qkv = torch.from_numpy(rng.standard_normal((b, t, 3 * h * hd)).astype(np.float32))
    qkv.requires_grad_(True)
    do = torch.from_numpy(rng.standard_normal((b, t, h * hd)).astype(np.float32))

    def step():
        qkv.grad = None
        q, k, v = qkv.reshape(b, t, 3, h, hd).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)
        o.transpose(1, 2).reshape(b, t, h * hd).backward(do)
        return None
    return step


def _minivit_step(b, t, h, hd, seed):
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((b, t, 3, h, hd)).astype(np.float32)
    do = rng.standard_normal((b, t, h, hd)).astype(np.float32)
    scale = hd ** -0.5

    def step():
        o, p = attention_forward(qkv, scale)
        return attention_backward(do, qkv, p, scale)
    return step


def measure(shape, threads, rounds, warmup):
    """One row: medians (ms), ratios and GFLOP/s of minivit and PyTorch on ``shape``."""
    from .bench import time_alternating
    from .torch_child import child_step_fn
    preset, b, t, h, hd = shape
    torch_step, close = child_step_fn(_torch_sdpa_step, (b, t, h, hd, 0), threads)
    try:
        with limit_threads(threads):
            mine, ref = map(np.asarray, time_alternating(
                rounds, [_minivit_step(b, t, h, hd, 0), torch_step], warmup))
    finally:
        close()
    flops = 12 * b * t * t * h * hd
    return {"shape": f"{preset}:{b}", "B": b, "T": t, "H": h, "head_dim": hd,
            "minivit_ms": float(np.median(mine)) * 1e3, "torch_ms": float(np.median(ref)) * 1e3,
            "ratio": float(np.median(mine) / np.median(ref)),
            "paired_ratio": float(np.median(mine / ref)),
            "minivit_gflops": flops / float(np.median(mine)) / 1e9,
            "torch_gflops": flops / float(np.median(ref)) / 1e9}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    rows = [measure(s, args.threads, args.rounds, args.warmup) for s in args.shapes]
    load = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"threads": args.threads, "rounds": args.rounds, "rows": rows,
                          "load_avg": load}))
        return 0
    print(f"attention core fwd+bwd, float32, {args.threads} thread(s), median of "
          f"{args.rounds} alternated rounds [load {load:.1f}]")
    for r in rows:
        print(f"  {r['shape']:<14} B={r['B']} T={r['T']} H={r['H']} hd={r['head_dim']}: "
              f"minivit {r['minivit_ms']:.1f} ms ({r['minivit_gflops']:.1f} GFLOP/s) | "
              f"torch SDPA {r['torch_ms']:.1f} ms ({r['torch_gflops']:.1f} GFLOP/s) | "
              f"ratio {r['ratio']:.2f} (paired {r['paired_ratio']:.2f})")
    return 0
