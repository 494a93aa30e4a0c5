"""Step-time overhead of batch-level mixup/cutmix + soft-target loss, in ONE process.

    python -m minivit.parallel.tools.mixup_overhead --model vit-micro --batch 128 --threads 1 --rounds 20

Alternates, round by round, (a) a plain training step on integer labels and
(b) ``mix_batch`` (mixup or cutmix, whichever the step's draw gives) followed
by the same training step on the soft targets, so both see the same machine
load (a shared machine drifts).  Also times ``mix_batch`` alone, per kind.
Prints one JSON line: medians in ms, the paired median overhead (b / a - 1)
and the CPU model.  Issue 20's target: overhead <= 10% for vit-micro b128.
"""
import argparse
import json
import os
import platform
import sys
import time

import minivit  # noqa: E402,F401  (sets the thread environment before NumPy loads OpenBLAS)
import numpy as np  # noqa: E402


def cpu_name():
    """The CPU model from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit-micro")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--num-classes", type=int, default=None,
                    help="default: the preset's")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args(argv)
    if args.batch < 2 or args.batch % 2:
        ap.error(f"--batch {args.batch}: mixup pairs need an even batch")
    from minivit.config import get_config
    from minivit.io.mixup import Mixup, draw_mix, mix_batch
    from minivit.model import ViT
    from minivit.optim import AdamW
    from minivit.threads import limit_threads
    from minivit.train import train_step

    overrides = {} if args.num_classes is None else {"num_classes": args.num_classes}
    cfg = get_config(args.model, **overrides)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, cfg.in_chans, cfg.image_size, cfg.image_size))
    x = x.astype(np.float32)
    y = rng.integers(0, cfg.num_classes, args.batch)
    positions = np.arange(args.batch)
    mixup = Mixup()
    kinds = {draw_mix(mixup, 0, 0, s, cfg.image_size, cfg.image_size).kind: s
             for s in range(50)}

    def mixed(step):
        return mix_batch(x, y, positions + step * args.batch, mixup=mixup,
                         num_classes=cfg.num_classes, seed=0, epoch=0,
                         global_batch=args.batch)

    with limit_threads(args.threads):
        model = ViT(cfg, seed=0)
        opt = AdamW(model.flat, lr=1e-4, weight_decay=0.05)
        plain = lambda: train_step(model, opt, [(x, y)], 1e-4)    # noqa: E731
        counter = iter(range(10**9))

        def with_mix():
            xm, t = mixed(next(counter))
            return train_step(model, opt, [(xm, t)], 1e-4)

        for _ in range(args.warmup):
            plain()
            with_mix()
        times = {"plain": [], "mix": []}
        for _ in range(args.rounds):
            for name, fn in (("plain", plain), ("mix", with_mix)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        alone = {}
        for kind, step in kinds.items():
            ts = []
            for _ in range(max(args.rounds, 20)):
                t0 = time.perf_counter()
                mixed(step)
                ts.append(time.perf_counter() - t0)
            alone[f"mix_batch_{kind}_ms"] = float(np.median(ts)) * 1e3
    t = {k: np.asarray(v) for k, v in times.items()}
    print(json.dumps({
        "model": args.model, "batch": args.batch, "image_size": cfg.image_size,
        "num_classes": cfg.num_classes, "threads": args.threads, "rounds": args.rounds,
        "plain_step_ms": float(np.median(t["plain"])) * 1e3,
        "mix_step_ms": float(np.median(t["mix"])) * 1e3,
        "overhead": float(np.median(t["mix"] / t["plain"]) - 1.0),
        **alone, "cpu": cpu_name(), "load_avg": os.getloadavg()[0]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
