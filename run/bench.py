"""Benchmarks: speed figures and ratios against references measured in the same run.

    python run/bench.py synth  [--json]     # generator images/s per core
    python run/bench.py fidelity [...]      # generators vs the published renderers
    python run/bench.py io     [--json]     # tar loader vs webdataset vs loose files
    python run/bench.py train  [...]        # training step vs PyTorch
    python run/bench.py attention [...]     # attention core vs PyTorch SDPA
    python run/bench.py selective [...]     # attention core: keep P vs selective recompute
    python run/bench.py scaling [...]       # strong scaling over MPI ranks
    python run/bench.py memory [...]        # recompute activation bytes, offload RSS
    python run/bench.py rankmem [...]       # peak RSS per MPI rank vs plan.py (issue 15)
    mpirun -n 4 python run/bench.py bubble [...]  # pipeline bubble per schedule vs formula

Each subcommand lives in the package that owns the code it measures; this
script only dispatches.  Speed is measured here, never in timed unit tests.
"""
import importlib
import os
import sys

# subcommand -> module exposing ``main(argv) -> int``
SUBCOMMANDS = {
    "synth": "minivit.synth.bench",
    "fidelity": "minivit.synth.fidelity",
    "io": "minivit.io.bench",
    "train": "minivit.tools.bench",
    "attention": "minivit.tools.bench_attention",
    "selective": "minivit.tools.bench_selective",
    "scaling": "minivit.parallel.tools.bench_scaling",
    "memory": "minivit.parallel.tools.bench_memory",
    "rankmem": "minivit.parallel.tools.bench_rankmem",
    "bubble": "minivit.parallel.tools.bench_bubble",
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\nsubcommands: " + ", ".join(SUBCOMMANDS))
        return 0
    if argv[0] not in SUBCOMMANDS:
        if _launcher_rank()[0] == 0:      # under mpirun: one copy of the message
            print(f"bench.py: error: unknown subcommand {argv[0]!r} (expected one of "
                  f"{', '.join(SUBCOMMANDS)}; python run/bench.py --help describes them)",
                  file=sys.stderr, flush=True)
        return 2
    if argv[0] == "train":
        return _train(argv[1:])
    module = importlib.import_module(SUBCOMMANDS[argv[0]])
    return module.main(argv[1:])


def _train(argv):
    """``train --dp N`` compares data parallel with one process; that code lives in
    ``minivit.parallel`` because ``minivit`` itself never imports it (DESIGN.md s.1)."""
    from minivit.tools import bench
    args = bench.parse_args(argv)
    if args.dp > 1:
        return importlib.import_module("minivit.parallel.tools.bench_dp").main(args)
    # under mpirun without --dp every rank would run its own benchmark on shared cores
    rank, size = _launcher_rank()
    if size > 1:
        if rank == 0:
            print(f"bench.py train: error: {size} MPI ranks but --dp 1: expected "
                  f"--dp {size} (or no mpirun)", file=sys.stderr, flush=True)
        return 2
    return bench.run(args)


def _launcher_rank():
    """``(rank, size)`` the MPI launcher gave this process, without importing MPI:
    MPICH's launcher sets PMI_RANK / PMI_SIZE, Open MPI's OMPI_COMM_WORLD_RANK / _SIZE;
    ``(0, 1)`` outside mpirun."""
    env = os.environ
    size = int(env.get("PMI_SIZE") or env.get("OMPI_COMM_WORLD_SIZE") or 1)
    rank = int(env.get("PMI_RANK") or env.get("OMPI_COMM_WORLD_RANK") or 0)
    return rank, size


if __name__ == "__main__":
    sys.exit(main())
