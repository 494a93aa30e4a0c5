"""``run/bench.py rankmem``: measured peak resident memory per MPI rank against the planner.

    python run/bench.py rankmem [--model vit-base] [--micro-batch 1] [--ranks 1,2,4,8]
                                [--layouts all] [--json out.json] [--plot out.png]

For each layout (one process; ZeRO-3 over each rank count; TP 2 and 4; PP 2
and 4; recompute and offload on one rank and on ZeRO-3 at the largest count)
it launches ``mpirun -n N`` workers that build the model with the training
runtime's own pieces (``build_model``, ``StepEngine``, ``Offload``), run
``--steps`` real AdamW steps on random images, and read each rank's peak
resident set, ``VmHWM`` (Linux ``/proc/self/status``).  The high-water mark is
reset (``/proc/self/clear_refs`` = 5, Linux >= 4.0) after the model and the
optimizer are built and the freed heap is returned (``malloc_trim``), so the
figure is the *training* peak, the one ``plan_model.plan_step`` predicts; the
construction peak is reported apart (ZeRO-3 builds the model shard by shard,
``shard.build_sharded``, so its construction peak is one unit plus the shards; the other
layouts build their whole model or stage).  Each rank also reports its idle
resident bytes after imports after one vit-nano step has loaded the kernels (the planner's
``process_baseline_bytes``) and the ledger's model-state bytes
(``StepEngine.memory()``).

Output: a table (measured max over ranks vs predicted, error), a JSON file and a
plot of per-rank peak against rank count for ZeRO-3 with the ideal 1/N line
through the one-rank model state.  Machine: ``run/machines/this-machine.toml``.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak():
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _warm_kernels():
    """Load every Numba kernel (and BLAS) with one vit-nano step, so the idle figure is a
    rank's true baseline: Python, NumPy, Numba's compiled kernels, MPI."""
    import numpy as np

    from minivit.config import get_config
    from minivit.loss import cross_entropy_backward, cross_entropy_forward
    from minivit.model import ViT
    for dtype in ("float32",):
        model = ViT(get_config("vit-nano", dtype=dtype))
        x = np.zeros((2, 3, 16, 16), dtype)
        logits, ctx = model.forward(x)
        _, lctx = cross_entropy_forward(logits, np.zeros(2, np.int64))
        model.backward(cross_entropy_backward(lctx), ctx)


def worker(lay):
    """Run one layout on this rank; rank 0 prints one JSON line with every rank's figures."""
    import numpy as np
    from mpi4py import MPI

    from minivit.allocator import release_freed_memory
    from minivit.config import get_config

    from ..grid import ProcessGrid
    from ..model_parallel import build_model
    from ..offload import Offload
    from ..runtime.step import StepEngine

    world = MPI.COMM_WORLD
    _warm_kernels()
    release_freed_memory()
    baseline = _status("VmRSS")
    cfg = get_config(lay["model"], dtype="float32")
    grid = ProcessGrid(world, dp=lay["dp"], tp=lay["tp"], pp=lay["pp"])
    model = build_model(cfg, 0, grid, recompute=lay["recompute"], zero=lay["zero"])
    accum = lay["accum"]
    # as the Trainer does: the offload files first, so ZeRO creates its shards in them
    off = (Offload(None, tempfile.mkdtemp(prefix="rankmem"), grid.rank) if lay["offload"]
           else None)
    engine = StepEngine(model, grid, zero=lay["zero"], accum=accum, schedule="1f1b",
                        max_grad_norm=1.0, allocate=off.allocate if off else None)
    if off is not None:
        off.attach(engine)
    release_freed_memory()
    construct = _status("VmHWM")
    reset = _reset_peak()
    rng = np.random.default_rng(grid.dp_rank)
    b = lay["micro_batch"]
    batch = [(rng.standard_normal((b, cfg.in_chans, cfg.image_size, cfg.image_size))
              .astype(cfg.dtype), rng.integers(0, cfg.num_classes, b)) for _ in range(accum)]
    times, losses = [], []
    for _ in range(lay["steps"]):
        t0 = time.perf_counter()
        out = engine.train_step(batch, 1e-4)
        times.append(time.perf_counter() - t0)
        losses.append(out["loss"])
    row = {"rank": grid.rank, "hwm": _status("VmHWM"), "rss": _status("VmRSS"),
           "construct_hwm": construct, "baseline_rss": baseline, "peak_reset": reset,
           "model_state": int(engine.memory()["total"]), "step_seconds": times,
           "loss": losses, "offloaded": off.nbytes if off else 0}
    rows = world.gather(row, root=0)
    if off is not None:
        off.close()
    grid.free()
    if world.Get_rank() == 0:
        print("RANKMEM " + json.dumps(rows), flush=True)


LAYOUTS = {   # name -> (ranks, dp, tp, pp, zero, recompute, offload); ranks None: --ranks
    "single": (1, 1, 1, 1, 0, False, False),
    "single-recompute": (1, 1, 1, 1, 0, True, False),
    "single-offload": (1, 1, 1, 1, 0, False, True),
    "zero3": (None, None, 1, 1, 3, False, False),
    "zero3-recompute-offload": ("max", "max", 1, 1, 3, True, True),
    "tp2": (2, 1, 2, 1, 0, False, False),
    "tp4": (4, 1, 4, 1, 0, False, False),
    "pp2": (2, 1, 1, 2, 0, False, False),
    "pp4": (4, 1, 1, 4, 0, False, False),
}


def layouts(names, ranks, model, micro_batch, steps):
    """The list of layout dicts to run (one per rank count for ``zero3``)."""
    out = []
    for name in names:
        n, dp, tp, pp, zero, rec, off = LAYOUTS[name]
        counts = [r for r in ranks if r > 1] if n is None else [max(ranks) if n == "max" else n]
        for count in counts:
            d = count if dp in (None, "max") else dp
            out.append({"name": f"{name}-{count}" if n is None else name, "ranks": count,
                        "dp": d, "tp": tp, "pp": pp, "zero": zero, "recompute": rec,
                        "offload": off, "accum": max(pp, 1), "micro_batch": micro_batch,
                        "steps": steps, "model": model})
    return out


def predict(lay, machine):
    from .plan_model import Layout, plan_step
    return plan_step(Layout(model=lay["model"], nodes=1, dp=lay["dp"], tp=lay["tp"],
                            pp=lay["pp"], zero=lay["zero"], micro_batch=lay["micro_batch"],
                            accum=lay["accum"], recompute=lay["recompute"],
                            offload=lay["offload"], ranks_per_node=lay["ranks"]), machine)


def run_layout(lay, timeout):
    mpirun = (shutil.which("mpirun") or shutil.which("mpiexec")
              or str(Path(sys.executable).with_name("mpirun")))
    cmd = [mpirun, "-n", str(lay["ranks"]), sys.executable, "-m",
           "minivit.parallel.tools.bench_rankmem", "--worker", json.dumps(lay)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               NUMBA_NUM_THREADS="1") if lay["ranks"] > 1 else dict(os.environ)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RANKMEM ")]
    if proc.returncode or not line:
        raise RuntimeError(f"{lay['name']}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return json.loads(line[0][len("RANKMEM "):])


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    z = sorted([r for r in results if r["layout"]["name"] in ("single",)
                or r["layout"]["name"].startswith("zero3-") and r["layout"]["name"][6:].isdigit()],
               key=lambda r: r["layout"]["ranks"])
    if not z:
        return
    n = [r["layout"]["ranks"] for r in z]
    gib = 2.0 ** 30
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.plot(n, [r["measured_peak"] / gib for r in z], "o-", label="measured peak RSS (VmHWM)")
    ax.plot(n, [r["predicted_peak"] / gib for r in z], "s--", label="plan.py predicted peak")
    ax.plot(n, [r["model_state_max"] / gib for r in z], "^-", label="model state (ledger)")
    ax.plot(n, [z[0]["model_state_max"] / k / gib for k in n], "k:", label="ideal 1/N model state")
    ax.set(xscale="log", yscale="log", xlabel="ranks (ZeRO-3; 1 = plain AdamW)",
           ylabel="GiB per rank", title=f"{z[0]['layout']['model']}, micro-batch "
                                        f"{z[0]['layout']['micro_batch']}: per-rank memory")
    ax.set_xticks(n, [str(k) for k in n])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(prog="run/bench.py rankmem", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit-base")
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--ranks", default="1,2,4,8", help="rank counts for the ZeRO-3 sweep")
    p.add_argument("--layouts", default="all", help=f"comma list of {sorted(LAYOUTS)} or 'all'")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--machine", default="this-machine")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--plot", default=None, help="write the ZeRO-3 per-rank plot here")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per layout")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    from .plan_model import load_machine
    machine = load_machine(args.machine)
    names = list(LAYOUTS) if args.layouts == "all" else args.layouts.split(",")
    bad = [n for n in names if n not in LAYOUTS]
    if bad:
        p.error(f"--layouts {bad[0]!r}: expected one of {sorted(LAYOUTS)}")
    ranks = [int(r) for r in args.ranks.split(",")]
    results = []
    mib = 2.0 ** 20
    print(f"{'layout':<26}{'ranks':>6}{'measured MiB':>14}{'predicted':>11}{'error':>8}"
          f"{'state MiB':>11}{'build MiB':>11}{'idle MiB':>10}{'s/step':>8}")
    for lay in layouts(names, ranks, args.model, args.micro_batch, args.steps):
        rows = run_layout(lay, args.timeout)
        pred = predict(lay, machine)
        peak = max(r["hwm"] for r in rows)
        res = {"layout": lay, "ranks": rows, "measured_peak": peak,
               "predicted_peak": pred["peak_resident_bytes_per_rank"],
               "error": peak / pred["peak_resident_bytes_per_rank"] - 1,
               "model_state_max": max(r["model_state"] for r in rows),
               "predicted_model_state": pred["model_state_bytes_per_rank"],
               "predicted": {k: pred[k] for k in ("memory", "activation_bytes_per_rank")},
               "step_seconds": max(r["step_seconds"][-1] for r in rows)}
        results.append(res)
        print(f"{lay['name']:<26}{lay['ranks']:>6}{peak / mib:>14.1f}"
              f"{pred['peak_resident_bytes_per_rank'] / mib:>11.1f}{res['error']:>+8.1%}"
              f"{res['model_state_max'] / mib:>11.1f}"
              f"{max(r['construct_hwm'] for r in rows) / mib:>11.1f}"
              f"{max(r['baseline_rss'] for r in rows) / mib:>10.1f}"
              f"{res['step_seconds']:>8.2f}", flush=True)
    one = [r for r in results if r["layout"]["name"] == "single"]
    z = [r for r in results if r["layout"]["name"] == f"zero3-{max(ranks)}"]
    summary = {}
    if one and z:
        summary["zero3_model_state_ratio"] = z[0]["model_state_max"] / one[0]["model_state_max"]
        print(f"ZeRO-3 model state at {max(ranks)} ranks / 1 rank: "
              f"{summary['zero3_model_state_ratio']:.4f} (ideal {1 / max(ranks):.4f})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"model": args.model, "machine": machine.name, "summary": summary,
                       "results": results}, fh, indent=1)
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
