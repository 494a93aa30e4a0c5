"""Test-only driver: a tiny data-parallel training run with one injected fault.

    MINIVIT_FAULT=PHASE:RANK[:TIMEOUT] mpirun -n 3 python tests/support/fault_driver.py

PHASE is where rank RANK fails:

``forward``   the second unit's forward raises (ZeRO-0)
``backward``  the second unit's backward raises (ZeRO-0)
``gather``    the ZeRO-3 parameter all-gather raises (comm hook on ``allgather``)
``send``      a point-to-point send raises (ring exchange through the audited wrapper)
``pipesend``  a pipeline send raises (pp = 3 stages, 1F1B, ``parallel.pipeline``)
``loader``    the dataset raises inside a ``minivit.io.Loader`` decoding thread
``sleep``     the rank sleeps 60 s after its first step; the others block in
              the next collective; a ``Watchdog`` with TIMEOUT seconds (default
              2), started after step 1, runs on every rank

The fault is injected by wrapping a unit, a dataset or the communicator's
``before_op`` hook here, in the driver: the product code has no fault flag.
Every outcome but "all ranks end within seconds, with the traceback or the
watchdog report" is a bug; ``tests/reliability/test_reliability_faults.py`` checks it.
"""
import itertools
import os
import time

import numpy as np


class Injected(RuntimeError):
    """The injected failure (a distinctive type to find in the traceback)."""


class FaultyUnit:
    """Delegate to ``unit``; raise in ``forward`` or ``backward`` on the first call."""

    def __init__(self, unit, phase, rank):
        self.unit, self.phase, self.rank = unit, phase, rank
        self.name = getattr(unit, "name", "unit")

    def parameters(self):
        return self.unit.parameters()

    def forward(self, x):
        if self.phase == "forward":
            raise Injected(f"injected fault in forward on rank {self.rank}")
        return self.unit.forward(x)

    def backward(self, dy, ctx):
        if self.phase == "backward":
            raise Injected(f"injected fault in backward on rank {self.rank}")
        return self.unit.backward(dy, ctx)


class FaultyImages:
    """Random uint8 images; on the faulty rank the 6th read raises (inside a loader thread)."""

    def __init__(self, n, size, faulty):
        self.n, self.size, self.faulty = n, size, faulty
        self.reads = itertools.count(1)     # next() is atomic under the GIL

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.faulty and next(self.reads) == 6:
            raise Injected(f"injected fault in the loader (sample {i})")
        rng = np.random.default_rng(i)
        return rng.integers(0, 256, (self.size, self.size, 3), dtype=np.uint8), i % 10


def main():
    from mpi4py import MPI

    from minivit.config import get_config
    from minivit.io import Loader
    from minivit.model import ViT
    from minivit.optim import WarmupCosine
    from minivit.parallel.grid import ProcessGrid
    from minivit.parallel.runtime.guard import install_guard
    from minivit.parallel.runtime.step import StepEngine
    from minivit.parallel.runtime.watchdog import Watchdog

    spec = os.environ["MINIVIT_FAULT"].split(":")
    phase, bad = spec[0], int(spec[1])
    world = MPI.COMM_WORLD
    guard = install_guard(world)
    if phase == "pipesend":
        pipeline_run(world, guard, bad)
        return
    grid = ProcessGrid(world, dp=world.Get_size())
    guard.label = grid.coords
    me = grid.rank == bad
    config = get_config("vit-nano", depth=2, dtype="float64")
    model = ViT(config, seed=0)
    trainer = StepEngine(model, grid, zero=3 if phase == "gather" else 0)
    if me and phase in ("forward", "backward"):
        model.units[1] = FaultyUnit(model.units[1], phase, bad)
    if me and phase == "gather":
        def before_op(op):
            if op == "allgather":
                raise Injected(f"injected fault in the ZeRO-3 all-gather on rank {bad}")
        grid.dp_group.before_op = before_op
    if phase == "send":
        # ring exchange: every rank sends to the next and receives from the previous
        if me:
            def before_op(op):
                if op == "send":
                    raise Injected(f"injected fault in a send on rank {bad}")
            grid.world.before_op = before_op
        p, r = grid.world_size, grid.rank
        buf, out = np.full(16, float(r)), np.empty(16)
        for _ in range(3):
            req = grid.world.irecv(out, (r - 1) % p)
            grid.world.send(buf, (r + 1) % p)
            req.wait()
    dogs = []
    loader = Loader(FaultyImages(64, 16, me and phase == "loader"), 4, rank=grid.dp_rank,
                    world_size=grid.dp, image_size=16, num_threads=1, prefetch=1)

    def batches():
        while True:
            for x, y in loader.epoch_iter():
                yield 0, [(x.astype(np.float64), y)]

    schedule, it = WarmupCosine(1e-3, 0, 4), batches()
    for step in range(4):
        trainer.train_step(next(it)[1], schedule(step))
        if phase == "sleep" and step == 0:
            # started after the warm-up step (JIT, loader start), as a user would size it
            dogs.append(Watchdog(float(spec[2]) if len(spec) > 2 else 2.0, grid.ledger, world,
                                 label=grid.coords).start())
            if me:
                time.sleep(60)
    for dog in dogs:
        dog.stop()
    loader.close()
    print(f"rank {grid.rank}: finished without the fault firing", flush=True)


def pipeline_run(world, guard, bad):
    """pp = world size stages, 1F1B over 3 micro-batches; rank ``bad`` fails in a send."""
    from minivit.config import get_config
    from minivit.optim import WarmupCosine
    from minivit.parallel.grid import ProcessGrid
    from minivit.parallel.model_parallel import ModelShard
    from minivit.parallel.runtime.step import StepEngine

    p = world.Get_size()
    grid = ProcessGrid(world, dp=1, pp=p)
    guard.label = grid.coords
    config = get_config("vit-nano", depth=p, dtype="float64")
    trainer = StepEngine(ModelShard(config, 0, grid), grid, accum=3, schedule="1f1b")
    if grid.rank == bad:
        def before_op(op):
            if op == "send":   # forward activations (stage < last) or input grads (stage > 0)
                raise Injected(f"injected fault in a pipeline send on rank {bad}")
        grid.pp_group.before_op = before_op
    rng = np.random.default_rng(0)

    def batches():
        while True:
            yield 0, [(rng.standard_normal((2, 3, 16, 16)), rng.integers(0, 10, 2))
                      for _ in range(3)]

    schedule, it = WarmupCosine(1e-3, 0, 3), batches()
    for step in range(3):
        trainer.train_step(next(it)[1], schedule(step))
    print(f"rank {grid.rank}: finished without the fault firing", flush=True)


if __name__ == "__main__":
    main()
