"""``python run/pack.py``: turn real labelled images into tar shards.

    python run/pack.py imagefolder ROOT --out DIR [--shuffle-seed S]
    python run/pack.py cifar ROOT --out DIR [--split train|test] [--label fine|coarse]
    python run/pack.py digits --out DIR [--split train|test|all] [--test-fraction 0.2]
    python run/pack.py fashion-mnist [ROOT] --out DIR [--split train|test]

Shards go to ``DIR/PREFIX-000000.tar`` ... with sidecars and ``DIR/index.json``.
"""
import argparse
import os
import sys
import time

from .pack_sources import (cifar_source, digits_source, fashion_mnist_source,
                           image_folder_source)
from .writer import ShardWriter


def pack(samples, out, prefix="data", max_count=1000, max_bytes=3_000_000_000,
         class_names=None, overwrite=False):
    """Write ``samples`` (an iterable of sample dicts) as shards in ``out``.

    Returns a summary dict: ``samples``, ``shards``, ``bytes``, ``seconds``.
    Raises ``FileExistsError`` if ``out/index.json`` exists and not ``overwrite``.
    """
    index = os.path.join(out, "index.json")
    if os.path.exists(index) and not overwrite:
        raise FileExistsError(f"{index} exists; pass --overwrite to replace the dataset")
    start, count = time.perf_counter(), 0
    with ShardWriter(os.path.join(out, f"{prefix}-%06d.tar"), max_count=max_count,
                     max_bytes=max_bytes, class_names=class_names) as w:
        for sample in samples:
            w.write(sample)
            count += 1
    return {"samples": count, "shards": len(w.shards),
            "bytes": sum(os.path.getsize(s) for s in w.shards),
            "seconds": time.perf_counter() - start}


def build_parser():
    p = argparse.ArgumentParser(prog="run/pack.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="source", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="output folder")
    common.add_argument("--prefix", default=None, help="shard name prefix (default: split)")
    common.add_argument("--max-count", type=int, default=1000, help="samples per shard")
    common.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    f = sub.add_parser("imagefolder", parents=[common], help="root/class_name/*.png|jpg")
    f.add_argument("root")
    f.add_argument("--shuffle-seed", type=int, default=None)
    f.add_argument("--no-verify", action="store_true", help="skip opening every image first")
    c = sub.add_parser("cifar", parents=[common], help="CIFAR-10/100 binary batches")
    c.add_argument("root")
    c.add_argument("--split", choices=("train", "test"), default="train")
    c.add_argument("--label", choices=("fine", "coarse"), default="fine", help="CIFAR-100 only")
    d = sub.add_parser("digits", parents=[common], help="scikit-learn load_digits")
    d.add_argument("--split", choices=("train", "test", "all"), default="train")
    d.add_argument("--test-fraction", type=float, default=0.2)
    d.add_argument("--seed", type=int, default=0, help="train/test split seed")
    m = sub.add_parser("fashion-mnist", parents=[common],
                       help="Fashion-MNIST IDX files (apt package dataset-fashion-mnist)")
    m.add_argument("root", nargs="?", default=None,
                   help="folder of the four IDX files; default /usr/share/datasets/fashion-mnist")
    m.add_argument("--split", choices=("train", "test"), default="train",
                   help="the official split: train (60,000) or test (10,000)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.source == "imagefolder":
            names, n, samples = image_folder_source(args.root, args.shuffle_seed,
                                                    verify=not args.no_verify)
            prefix = args.prefix or "data"
        elif args.source == "cifar":
            names, n, samples = cifar_source(args.root, args.split, args.label)
            prefix = args.prefix or args.split
        elif args.source == "fashion-mnist":
            names, n, samples = fashion_mnist_source(args.root, args.split)
            prefix = args.prefix or args.split
        else:
            names, n, samples = digits_source(args.split, args.test_fraction, args.seed)
            prefix = args.prefix or args.split
        summary = pack(samples, args.out, prefix, args.max_count, class_names=names,
                       overwrite=args.overwrite)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"pack.py: error: {e}", file=sys.stderr)
        return 2
    print(f"packed {summary['samples']} samples into {summary['shards']} shard(s), "
          f"{summary['bytes']} bytes, {summary['seconds']:.2f} s -> "
          f"{os.path.join(args.out, 'index.json')}")
    return 0
