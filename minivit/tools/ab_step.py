"""Before/after/PyTorch training-step times, alternated in ONE process.

    git archive <base-commit> minivit | tar -x -C /tmp/base_tree
    python -m minivit.tools.ab_step --base /tmp/base_tree --model vit-tiny --batch 32 \
        --threads 2 --rounds 3 [--no-torch]

On a shared machine absolute times drift with other people's load; running
the old minivit (``BASE/minivit`` imported as package ``minivit_base``), the
current one and PyTorch one step each per round, in the same process and
thread settings, exposes all three to the same load.  Prints one JSON line:
medians in ms and the paired (per-round) median ratios.
"""
import argparse
import importlib.util
import json
import os
import sys
import time

import minivit  # noqa: E402,F401  (sets the thread environment before NumPy loads OpenBLAS)
import numpy as np  # noqa: E402


def load_base(base):
    """Import ``base/minivit`` under the name ``minivit_base`` (relative imports work)."""
    init = os.path.join(base, "minivit", "__init__.py")
    if not os.path.exists(init):
        raise SystemExit(f"--base {base}: expected a directory holding minivit/__init__.py")
    spec = importlib.util.spec_from_file_location(
        "minivit_base", init, submodule_search_locations=[os.path.dirname(init)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["minivit_base"] = mod
    spec.loader.exec_module(mod)
    return mod


def step_fn(pkg, args, x, y):
    """A closure running one AdamW training step of package ``pkg`` (name string)."""
    config = importlib.import_module(f"{pkg}.config")
    model_mod = importlib.import_module(f"{pkg}.model")
    optim = importlib.import_module(f"{pkg}.optim")
    train = importlib.import_module(f"{pkg}.train")
    cfg = config.get_config(args.model, dtype=args.dtype)
    model = model_mod.ViT(cfg, seed=0)
    opt = optim.AdamW(model.flat, lr=1e-4, weight_decay=0.05)
    return cfg, model, (lambda: train.train_step(model, opt, [(x, y)], 1e-4))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--model", default="vit-tiny")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)
    from minivit.threads import limit_threads
    from minivit.config import get_config
    load_base(args.base)
    cfg = get_config(args.model, dtype=args.dtype)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, cfg.in_chans, cfg.image_size, cfg.image_size))
    x = x.astype(args.dtype)
    y = rng.integers(0, cfg.num_classes, args.batch)
    with limit_threads(args.threads):
        fns = {"base": step_fn("minivit_base", args, x, y)[2]}
        cfg, model, fns["now"] = step_fn("minivit", args, x, y)
        if not args.no_torch:
            import torch
            from minivit.tools.torch_vit import TorchTrainer
            torch.set_num_threads(args.threads)
            fns["torch"] = TorchTrainer(cfg, x, y, state=model.flat.state_dict()).step
        for fn in fns.values():
            for _ in range(args.warmup):
                fn()
        times = {k: [] for k in fns}
        for _ in range(args.rounds):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    t = {k: np.asarray(v) for k, v in times.items()}
    out = {"model": args.model, "batch": args.batch, "threads": args.threads,
           "rounds": args.rounds, **{f"{k}_ms": float(np.median(v)) * 1e3 for k, v in t.items()},
           "now_over_base": float(np.median(t["now"] / t["base"])),
           "load_avg": os.getloadavg()[0]}
    if "torch" in t:
        out["base_over_torch"] = float(np.median(t["base"] / t["torch"]))
        out["now_over_torch"] = float(np.median(t["now"] / t["torch"]))
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
