"""``run/bench.py bubble``: the measured pipeline bubble of each schedule against its formula.

    mpirun -n 4 python run/bench.py bubble --model vit-micro --depth 8 --micro-batch 8 \
        --micro-batches 8 --steps 3 [--png-dir DIR] [--json]

One launch runs every schedule of ``--schedules`` (GPipe, 1F1B, interleaved 1F1B with
``--virtual-stages`` chunks, ZB-H1) on ``pp = world size`` stages (tp = dp = 1) with
``--micro-batches`` micro-batches per step, each for ``--steps`` AdamW steps of random
images, through the runtime's own ``ModelShard``, ``StepEngine`` and ``--timeline``
code (``tools.timeline.write_timeline``).  The last step's timeline gives the
measured bubble (``1 - mean busy / span``) beside the schedule's formula
(``pipeline.bubble_fraction``: Narayanan et al. 2021, eq. 1 and section 2.2.2; Qi
et al. 2024, section 3.1).  ``--depth`` overrides the preset's depth, so that
``pp x v`` chunks of whole blocks exist (vit-micro has 6 blocks; pp 4 x v 2
needs 8).  Rank 0 prints one line (or JSON object) per schedule.
"""
import argparse
import json
from pathlib import Path

import numpy as np
from mpi4py import MPI

from minivit.config import PRESETS, get_config

from ..grid import ProcessGrid
from ..model_parallel import ModelShard
from ..pipeline import SCHEDULES
from ..runtime.guard import install_guard
from ..runtime.step import StepEngine
from .timeline import FORMULAS, write_timeline


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="bench.py bubble", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit-micro", choices=sorted(PRESETS))
    ap.add_argument("--depth", type=int, default=8, help="blocks (overrides the preset's)")
    ap.add_argument("--micro-batch", type=int, default=8, help="images per micro-batch")
    ap.add_argument("--micro-batches", type=int, default=8, help="m per step")
    ap.add_argument("--virtual-stages", type=int, default=2, help="v of the interleaved run")
    ap.add_argument("--schedules", default="gpipe,1f1b,interleaved,zb-h1")
    ap.add_argument("--steps", type=int, default=3, help="steps per schedule (last one drawn)")
    ap.add_argument("--png-dir", default=None, help="write pipeline_<schedule>.png here")
    ap.add_argument("--json", action="store_true", help="one JSON object per schedule")
    args = ap.parse_args(argv)
    unknown = [s for s in args.schedules.split(",") if s not in SCHEDULES]
    if unknown:
        ap.error(f"--schedules: unknown {unknown}; expected some of {list(SCHEDULES)}")
    return args


def random_micro_batches(cfg, b, m, step):
    """``m`` micro-batches of ``b`` random images and labels, the same on every rank."""
    rng = np.random.default_rng(step)
    shape = (b, cfg.in_chans, cfg.image_size, cfg.image_size)
    return [(rng.standard_normal(shape).astype(cfg.dtype),
             rng.integers(0, cfg.num_classes, b)) for _ in range(m)]


def run_schedule(args, schedule, comm):
    """Train ``args.steps`` steps under ``schedule``; returns ``(measured, formula)``."""
    cfg = get_config(args.model, depth=args.depth)
    grid = ProcessGrid(comm, dp=1, tp=1, pp=comm.Get_size())
    v = args.virtual_stages if schedule == "interleaved" else 1
    model = ModelShard(cfg, 0, grid, virtual_stages=v)
    engine = StepEngine(model, grid, accum=args.micro_batches, schedule=schedule,
                        max_grad_norm=1.0)
    for step in range(args.steps):
        engine.train_step(random_micro_batches(cfg, args.micro_batch, args.micro_batches,
                                               step), 1e-3)
    png = Path(args.png_dir or ".") / f"pipeline_{schedule.replace('-', '')}.png"
    measured, formula = write_timeline(engine, str(png), schedule,
                                       grid.rank == 0 and args.png_dir is not None)
    grid.free()
    return measured, formula


def main(argv=None):
    args = parse_args(argv)
    comm = MPI.COMM_WORLD
    install_guard(comm)          # one rank's exception ends every rank, never a hang
    if args.png_dir is not None and comm.Get_rank() == 0:
        Path(args.png_dir).mkdir(parents=True, exist_ok=True)
    for schedule in args.schedules.split(","):
        measured, formula = run_schedule(args, schedule, comm)
        if comm.Get_rank() != 0:
            continue
        row = {"schedule": schedule, "pp": comm.Get_size(), "m": args.micro_batches,
               "v": args.virtual_stages if schedule == "interleaved" else 1,
               "measured_bubble": measured, "formula_bubble": formula,
               "formula": FORMULAS.get(schedule, "(p-1)/(m+p-1)")}
        print(json.dumps(row) if args.json else
              f"bubble {schedule:<12} pp={row['pp']} m={row['m']} v={row['v']}: measured "
              f"{measured:6.1%}  formula {row['formula']} = {formula:6.1%}", flush=True)
    return 0
