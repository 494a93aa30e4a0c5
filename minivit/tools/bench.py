"""``run/bench.py train``: time full training steps (forward, loss, backward, AdamW).

    python run/bench.py train [--model vit-tiny] [--image-size 224] [--batch 32]
        [--threads 2] [--dtype float32] [--steps 10] [--warmup 2] [--vs-torch]
        [--json] [--breakdown]
    mpirun -n 2 python run/bench.py train --dp 2      # dp=2 x 1 thread vs 1 x 2 threads

Printed: median and min/max ms/step over ``--steps`` timed steps after
``--warmup`` untimed ones, images/s, model GFLOP/s (``minivit.flops``, 3x the
forward matmul FLOPs) and MFU against the float32 GEMM peak measured in the same
run (best of several square ``matmul`` calls of size ``--peak-n``).

``--breakdown`` times each operator class of the step (``profiler``) and
prints the rate it achieved (GFLOP/s or GB/s, ``minivit.flops.step_work``),
then each Linear GEMM shape in the step against the same GEMMs alone
(``gemm_gap``), all measured in the same run (``breakdown_report``).

``--vs-torch`` builds the same ViT in PyTorch (``minivit/tools/torch_vit.py``,
loaded with minivit's initial weights) and alternates one minivit step with one
torch step, so machine load from other processes hits both alike; the ratio is
minivit median / torch median.  PyTorch is optional: without it the flag
raises a clear error.

BLAS threads are set with threadpoolctl and Numba threads with
``numba.set_num_threads`` (at most ``NUMBA_NUM_THREADS`` of the process).
"""
import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from dataclasses import dataclass

import numpy as np

from ..config import PRESETS, get_config
from ..flops import measure_gemm_peak, train_flops
from ..model import ViT
from ..optim import AdamW
from ..threads import env_applied, limit_threads
from ..train import train_step


@dataclass
class BenchTrainConfig:
    """The validated flags of ``run/bench.py train`` (see :func:`parse_args`).

    batch: images per step (per rank with ``dp``); steps / warmup: timed / untimed
    steps; peak_n: side of the square GEMM timed for the peak (elements);
    threads: BLAS and Numba threads; image_size / num_classes: None for the preset's.
    """
    model: str
    image_size: int
    batch: int
    threads: int
    dtype: str
    steps: int
    warmup: int
    num_classes: int
    peak_n: int
    vs_torch: bool
    json: bool
    breakdown: bool
    dp: int


def parse_args(argv):
    """``BenchTrainConfig`` of ``argv``; a bad value is a usage error (exit 2)."""
    ap = argparse.ArgumentParser(prog="bench.py train", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit-tiny", choices=sorted(PRESETS))
    ap.add_argument("--image-size", type=int, default=None, help="pixels (default: preset's)")
    ap.add_argument("--batch", type=int, default=32, help="images per step (per rank with --dp)")
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS/Numba threads (default: cores, or 1 per rank with --dp)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--num-classes", type=int, default=None)
    ap.add_argument("--peak-n", type=int, default=2048, help="square GEMM size for the peak")
    ap.add_argument("--vs-torch", action="store_true", help="time PyTorch side by side")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--breakdown", action="store_true", help="time per operator class")
    ap.add_argument("--dp", type=int, default=1,
                    help="data-parallel ranks (run under mpirun -n DP); compares with 1 process")
    args = ap.parse_args(argv)
    for name in ("batch", "steps", "peak_n", "dp"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)}: expected >= 1")
    if args.warmup < 0:
        ap.error(f"--warmup {args.warmup}: expected >= 0")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads {args.threads}: expected >= 1")
    if args.dp > 1 and (args.vs_torch or args.breakdown):
        ap.error("--vs-torch and --breakdown time one process: expected them without --dp")
    try:
        model_config(args)
    except ValueError as exc:           # e.g. --image-size not a multiple of the patch size
        ap.error(str(exc))
    if args.threads is None:
        args.threads = 1 if args.dp > 1 else (os.cpu_count() or 1)
    return BenchTrainConfig(**vars(args))


def model_config(args):
    """The ``ViTConfig`` of the parsed flags; raises ValueError for an invalid one."""
    overrides = {"dtype": args.dtype}
    if args.image_size is not None:
        overrides["image_size"] = args.image_size
    if args.num_classes is not None:
        overrides["num_classes"] = args.num_classes
    return get_config(args.model, **overrides)


def gemm_peak(n, dtype="float32"):
    """Best GFLOP/s of square ``(n, n)`` matmuls (``minivit.flops.measure_gemm_peak``)."""
    return measure_gemm_peak(n, dtype) / 1e9


def build(args):
    """``(config, model, optimizer, x, y)`` with seeded random data."""
    cfg = model_config(args)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, cfg.in_chans, cfg.image_size, cfg.image_size))
    x = x.astype(cfg.dtype)
    y = rng.integers(0, cfg.num_classes, args.batch)
    model = ViT(cfg, seed=0)
    return cfg, model, AdamW(model.flat, lr=1e-4, weight_decay=0.05), x, y


def make_step(model, opt, x, y):
    batches = [(x, y)]
    return lambda: train_step(model, opt, batches, 1e-4)


def time_alternating(steps, fns, warmup, settle=1):
    """Run each of ``fns`` ``warmup`` times, then alternate them for ``steps`` rounds.

    In each round every function runs ``settle`` untimed times, then once
    timed.  Why: a call right after the *other* framework's call is not a
    training loop's step.  PyTorch's OpenMP workers (libgomp) spin for a few
    ms after each parallel region, on the cores the next call needs, and the
    caches hold the other framework's arrays.  Measured with ``bench
    attention`` at vit-tiny shapes, 2 threads (AMD EPYC Zen 4): minivit 30.1
    ms and SDPA 34.6 ms when timed straight after each other; 22.7 and 29.9 ms
    with one untimed call first, 22.4 and 30.5 with two.  Sleeping instead
    (0.1 s) made both slower still (44.9 / 40.7 ms): an idle core is not a warm
    one.  Alternating rounds still spreads any drift in machine load over
    both.  Returns one list of seconds per function.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(steps):
        for i, fn in enumerate(fns):
            for _ in range(settle):
                fn()
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return times


def summarise(seconds, cfg, batch, peak):
    s = np.asarray(seconds)
    med = float(np.median(s))
    gflops = train_flops(cfg, batch) / med / 1e9
    return {"ms_per_step": med * 1e3, "ms_min": float(s.min()) * 1e3,
            "ms_max": float(s.max()) * 1e3, "images_per_s": batch / med,
            "gflops_per_s": gflops, "mfu": gflops / peak, "peak_gflops": peak}


def machine_info():
    """``{"cpu", "blas", "openblas_coretype"}``: the CPU model (``/proc/cpuinfo``), each
    BLAS loaded with the kernel set it chose (threadpoolctl: OpenBLAS's
    ``architecture``, e.g. SkylakeX or Zen), named by its owner: NumPy's runs the
    Linear GEMMs, SciPy's the GEMMs inside the Numba kernels (``minivit.blas``);
    and ``OPENBLAS_CORETYPE`` if set.
    The same shapes run at different speeds on AMD and Intel machines, so every
    figure is printed with these."""
    from threadpoolctl import threadpool_info
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    import scipy.linalg.cython_blas  # noqa: F401  (load the kernels' BLAS so it is listed)
    blas = [f"{_blas_owner(i.get('filepath', ''))}{i.get('internal_api')} {i.get('version')} "
            f"({i.get('architecture', '?')})"
            for i in threadpool_info() if i.get("user_api") == "blas"]
    return {"cpu": cpu, "blas": "; ".join(blas) or "unknown",
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE")}


def _blas_owner(path):
    """``"NumPy: "`` or ``"SciPy (kernels): "`` from a BLAS library's path, else ``""``."""
    if "numpy" in path:
        return "NumPy: "
    return "SciPy (kernels): " if "scipy" in path else ""


def _trainer_step(cfg, x, y, state, autocast):
    """In the child: the PyTorch ViT's training step (``TorchTrainer.step``)."""
    from minivit.tools.torch_vit import TorchTrainer
    return TorchTrainer(cfg, x, y, state=state, autocast=autocast).step


def torch_step_fn(cfg, model, x, y, threads, autocast=None):
    """``(step, close)``: one PyTorch training step of the same ViT (same weights and
    batch) in a child process (``torch_child.child_step_fn``), and the call that
    ends that process.  autocast: None or "bfloat16" (``TorchTrainer``)."""
    from .torch_child import child_step_fn
    return child_step_fn(_trainer_step, (cfg, x, y, model.flat.state_dict(), autocast), threads)


def _print_breakdown(args, cfg, machine, bd, alone, peak):
    from .breakdown_report import lines, report
    rep = report(cfg, args.batch, bd, alone, peak)
    if args.json:
        print(json.dumps({"model": args.model, "batch": args.batch, "dtype": args.dtype,
                          "threads": args.threads, **machine, **rep,
                          "load_avg": os.getloadavg()[0]}))
        return 0
    print(f"machine: {machine['cpu']}; BLAS {machine['blas']}; OPENBLAS_CORETYPE "
          f"{machine['openblas_coretype'] or 'not set'}")
    print(f"breakdown {args.model} {cfg.image_size}px batch {args.batch} {args.dtype} "
          f"{args.threads} thread(s), median of {args.steps} steps, total "
          f"{bd.total * 1e3:.1f} ms/step [load {os.getloadavg()[0]:.1f}]")
    print("\n".join(lines(rep)))
    return 0


def main(argv=None):
    """One-process ``train`` benchmark; ``--dp N`` is routed by ``run/bench.py``."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.dp > 1:
        raise SystemExit("--dp > 1: run `mpirun -n DP python run/bench.py train --dp DP`")
    return run(args)


def run(args):
    """Time the training step for ``args`` (a ``BenchTrainConfig``); returns 0."""
    if args.vs_torch and args.breakdown:
        raise SystemExit("--vs-torch and --breakdown: expected one at a time")
    if args.vs_torch and importlib.util.find_spec("torch") is None:
        # before the model is built: the child process would only find out seconds later
        raise SystemExit("--vs-torch needs PyTorch, which is not installed: "
                         "pip install -e \".[torch]\" (torch==2.13.0)")
    if not env_applied():
        print("note: NumPy was imported before minivit, so OpenBLAS keeps its spinning "
              "threads (minivit/threads.py); the figures will be slower", file=sys.stderr)
    with limit_threads(args.threads):
        peak = gemm_peak(args.peak_n)
        cfg, model, opt, x, y = build(args)
        fns = [make_step(model, opt, x, y)]
        if args.breakdown:
            from .gemm_gap import isolated_linear_gemms
            from .profiler import breakdown
            bd = breakdown(model, opt, x, y, args.steps, args.warmup)
            alone = isolated_linear_gemms(cfg, args.batch)
        elif args.vs_torch:
            # PyTorch fp32, and (fp32 runs only) PyTorch's bf16 autocast as a marked
            # reference row: what its mixed precision gives on CPUs with bf16 units
            kinds = [None] + (["bfloat16"] if args.dtype == "float32" else [])
            refs = [torch_step_fn(cfg, model, x, y, args.threads, k) for k in kinds]
            try:
                times = time_alternating(args.steps, fns + [r[0] for r in refs], args.warmup)
            finally:
                for _, close in refs:
                    close()
        else:
            times = time_alternating(args.steps, fns, args.warmup)
        peak = max(peak, gemm_peak(args.peak_n))    # best of before and after
    machine = machine_info()
    if args.breakdown:
        return _print_breakdown(args, cfg, machine, bd, alone, peak)
    out = {"model": args.model, "image_size": cfg.image_size, "batch": args.batch,
           "dtype": args.dtype, "threads": args.threads, "steps": args.steps, **machine,
           **summarise(times[0], cfg, args.batch, peak),
           "load_avg": os.getloadavg()[0]}
    if args.vs_torch:
        t = summarise(times[1], cfg, args.batch, peak)
        out.update(torch_ms_per_step=t["ms_per_step"], torch_ms_min=t["ms_min"],
                   torch_ms_max=t["ms_max"], ratio=out["ms_per_step"] / t["ms_per_step"],
                   paired_ratio=float(np.median(np.asarray(times[0]) / np.asarray(times[1]))))
        if len(times) > 2:
            b = summarise(times[2], cfg, args.batch, peak)
            out.update(torch_bf16_autocast_ms_per_step=b["ms_per_step"],
                       ratio_vs_bf16_autocast=out["ms_per_step"] / b["ms_per_step"])
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"machine: {machine['cpu']}; BLAS {machine['blas']}; OPENBLAS_CORETYPE "
          f"{machine['openblas_coretype'] or 'not set'}")
    line = (f"{args.model} {cfg.image_size}px batch {args.batch} {args.dtype} {args.threads}t: "
            f"{out['ms_per_step']:.1f} ms/step (min {out['ms_min']:.1f}, max "
            f"{out['ms_max']:.1f}), {out['images_per_s']:.1f} img/s, "
            f"{out['gflops_per_s']:.1f} GFLOP/s, MFU {out['mfu']:.0%} of "
            f"{peak:.0f} GFLOP/s peak")
    if args.vs_torch:
        line += (f" | torch {out['torch_ms_per_step']:.1f} ms/step (min "
                 f"{out['torch_ms_min']:.1f}, max {out['torch_ms_max']:.1f}), ratio "
                 f"minivit/torch {out['ratio']:.2f} (paired median {out['paired_ratio']:.2f})")
        if "torch_bf16_autocast_ms_per_step" in out:
            line += (f" | reference, torch bf16 autocast (mixed precision; minivit is "
                     f"{args.dtype}): {out['torch_bf16_autocast_ms_per_step']:.1f} ms/step, "
                     f"ratio {out['ratio_vs_bf16_autocast']:.2f}")
    print(line + f" [load {out['load_avg']:.1f}]")
    return 0
