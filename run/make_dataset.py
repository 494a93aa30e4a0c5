"""Render a formula-driven dataset into WebDataset tar shards, in parallel over MPI ranks.

    mpirun -n N python run/make_dataset.py --kind {fractaldb,visualatom,newton} \\
        --classes C --per-class K --size S --out DIR [--shard-size 1000] [--seed 0] \\
        [--param NAME=VALUE ...] [--categories CSV_DIR] [--render-size R | --direct]
        [--resample box|lanczos]

Writes ``DIR/<kind>-000000.tar, ...`` (``KEY.png``, ``KEY.cls``, ``KEY.json``
with the generation parameters), their ``.tar.idx`` sidecars, ``index.json``,
``synth.json`` (the command's settings), ``preview.png`` (one instance of each
of the first 16 classes) and, for FractalDB, ``categories/NNNNN.csv`` in the
public FractalDB layout.  Shard ``s`` is a function of ``s`` alone and rank
``r`` writes shards ``r, r+N, ...``, so every output byte is the same for any
N.  Runs without mpirun (or without mpi4py) as a single process.

Images are drawn at the published render size (FractalDB 362, VisualAtom 512,
Newton 256) and box-downsampled to --size; --direct draws at --size instead
(faster, for speed studies: small images lose the fractal structure).
"""
import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from minivit.io import ShardWriter, write_dataset_index
from minivit.synth import GENERATORS, CategorySearchError, make_generator
from minivit.synth.fractaldb_csv import export_categories
from minivit.synth.layout import DatasetLayout
from minivit.synth.preview import save_preview

MAX_SHARD_BYTES = 1 << 40  # shards are cut by --shard-size only


def parse_param(text):
    """``NAME=VALUE`` -> (name, value); VALUE is JSON if it parses (lists become tuples)."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return name, tuple(value) if isinstance(value, list) else value


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", required=True, choices=sorted(GENERATORS))
    p.add_argument("--classes", type=int, required=True, help="number of classes C >= 1")
    p.add_argument("--per-class", type=int, required=True, help="instances per class K >= 1")
    p.add_argument("--size", type=int, required=True, help="image side in pixels, >= 8")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--seed", type=int, default=0, help="dataset seed >= 0")
    p.add_argument("--param", type=parse_param, action="append", default=[],
                   help="generator parameter NAME=VALUE (JSON), e.g. num_points=100000")
    p.add_argument("--categories", help="FractalDB: read categories from this folder of CSVs "
                                        "instead of searching")
    draw = p.add_mutually_exclusive_group()
    draw.add_argument("--render-size", type=int, help="draw at this size, then downsample to "
                      "--size (default: the published size, or --size if larger)")
    draw.add_argument("--direct", action="store_true", help="draw straight at --size")
    p.add_argument("--resample", choices=["box", "lanczos"], default="box",
                   help="downsampling filter (default box: area average)")
    return p


def check_args(parser, args):
    """Every check that needs no rendering; parser.error (exit 2) on a bad value."""
    params = dict(args.param)
    if args.categories is not None:
        if args.kind != "fractaldb":
            parser.error(f"--categories is for --kind fractaldb, not {args.kind}")
        params["categories_dir"] = args.categories
    params["render_size"] = args.size if args.direct else args.render_size
    params["resample"] = args.resample
    try:
        layout = DatasetLayout(args.classes, args.per_class, args.shard_size)
        gen = make_generator(args.kind, args.classes, args.size, args.seed, **params)
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
    if gen.instances_per_class is not None and args.per_class > gen.instances_per_class:
        parser.error(f"--per-class {args.per_class} exceeds the {gen.instances_per_class} "
                     f"distinct instances per class of {args.kind}")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # a real write: os.access() says yes to root even on read-only mounts
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        parser.error(f"output folder {str(out)!r} is not writable: {exc.strerror or exc}")
    return layout, gen


def mpi_world():
    """``(comm or None, rank, size)``; one process without mpi4py; exit 2 in the singleton
    trap (N tasks, each a world of 1, would all write the same shards)."""
    try:
        from minivit.parallel.runtime.launch import open_world
        comm = open_world("make_dataset.py")
    except ImportError:
        return None, 0, 1
    return comm, comm.Get_rank(), comm.Get_size()


def share_categories(comm, gen, layout, rank, size):
    """FractalDB: each rank searches its classes, all ranks get all categories.

    Raises CategorySearchError (on every rank) naming how many were found.
    """
    found = gen.search(layout.rank_classes(rank, size))
    everything = {}
    for part in (comm.allgather(found) if comm is not None else [found]):
        everything.update(part)
    if len(everything) < layout.classes:
        missing = min(set(range(layout.classes)) - set(everything))
        raise CategorySearchError(len(everything), layout.classes, gen.params.max_tries,
                                  f" (first missing class: {missing}; lower --param "
                                  f"threshold or raise --param max_tries)")
    for c, system in everything.items():
        gen.set_category(c, system)
    return everything


def write_shard(gen, layout, shard, pattern, bar):
    """Render and write shard ``shard``; returns its path."""
    with ShardWriter(pattern, max_count=layout.shard_size, max_bytes=MAX_SHARD_BYTES,
                     index=False, sidecars=True, start_shard=shard) as writer:
        for g in layout.shard_samples(shard):
            c, i = layout.sample(g)
            writer.write({"__key__": layout.key(c, i), "png": gen.render_png(c, i),
                          "cls": c, "json": gen.metadata(c, i)})
            bar.update(1)
    return writer.shards[0]


def run(args, layout, gen, comm, rank, size):
    out = Path(args.out)
    if gen.kind == "fractaldb":
        categories = share_categories(comm, gen, layout, rank, size)
        if rank == 0:
            export_categories(out / "categories", categories)
    pattern = str(out / f"{gen.kind}-%06d.tar")
    mine = layout.rank_shards(rank, size)
    total, start = sum(len(layout.shard_samples(s)) for s in mine), time.perf_counter()
    # the bar only on a terminal (disable=None); redirected, a line per shard of rank 0
    with tqdm(total=total, disable=None if rank == 0 else True, unit="img",
              desc=f"{gen.kind} rank 0/{size}") as bar:
        for done, shard in enumerate(mine, 1):
            path = write_shard(gen, layout, shard, pattern, bar)
            if rank == 0 and bar.disable:
                print(f"rank 0/{size}: wrote {path} ({done}/{len(mine)} shards of rank 0, "
                      f"{time.perf_counter() - start:.1f} s)", flush=True)
    if comm is not None:
        comm.Barrier()
    if rank == 0:
        shards = [pattern % s for s in range(layout.num_shards)]
        write_dataset_index(str(out / "index.json"), shards)
        settings = {"kind": gen.kind, "classes": layout.classes, "per_class": layout.per_class,
                    "size": gen.size, "render_size": gen.render_size,
                    "resample": gen.resample, "seed": gen.seed, "shard_size": layout.shard_size,
                    "params": {k: v for k, v in args.param}, "categories": args.categories,
                    "num_samples": layout.num_samples, "num_shards": layout.num_shards}
        (out / "synth.json").write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
        save_preview(out / "preview.png", gen, num_classes=16, tile=min(gen.size, 128))
        print(f"wrote {layout.num_samples} images in {layout.num_shards} shards to {out}")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    comm, rank, size = mpi_world()      # first: the singleton trap exits before any write
    layout, gen = check_args(parser, args)
    try:
        run(args, layout, gen, comm, rank, size)
    except CategorySearchError as exc:
        # every rank raises the same error after the allgather: a clean exit
        if rank == 0:
            print(f"make_dataset: error: {exc}", file=sys.stderr)
        return 1
    except BaseException:
        if comm is not None and size > 1:
            import traceback
            traceback.print_exc()
            sys.stderr.flush()
            comm.Abort(1)  # the other ranks would wait forever at the barrier
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
