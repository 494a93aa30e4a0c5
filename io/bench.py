"""``python run/bench.py io [--json]``: tar-shard loader vs webdataset vs loose files.

One run generates ``--n`` PNG images of ``--size`` pixels, stores them twice
-- as shards of ``--per-shard`` samples plus ``index.json``, and as an
ImageFolder tree with one file per image -- and reads every image once per
pass with each reader, all doing the same work (decode to RGB, stack into a
batch, normalise to float32 ``(B, 3, H, W)``) on ``--threads`` decoding
threads:

* ``minivit``: ``Loader(ShardDataset)``, shuffled (random ``pread`` access);
* ``webdataset``: ``WebDataset(...).decode("rgb8").to_tuple().batched()``,
  sequential streaming (it runs in the calling thread: one thread);
* ``loose files``: the same ``Loader`` over one file per image (open/read).

Files are read from the page cache after a warm-up round; readers take
turns within each round and the best of ``--repeat`` rounds is reported, so the figures compare CPU cost per image,
not disk speed.  File counts compare inode pressure on a parallel file system.
"""
import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np
from PIL import Image

from .dataset import ShardDataset
from .decode import decode_image
from .loader import Loader
from .pack_sources import encode_png
from .writer import ShardWriter

NUM_CLASSES = 10
MEAN = np.full(3, 0.5, np.float32)
STD = np.full(3, 0.5, np.float32)


def make_images(n, size, seed=0):
    """``n`` PNG byte strings of smooth random colour fields plus mild noise
    (compress like small natural images, unlike pure noise or flat colour)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((size, size), Image.BILINEAR), dtype=np.int16)
        noisy = smooth + rng.integers(-6, 7, smooth.shape, dtype=np.int16)
        out.append(encode_png(np.clip(noisy, 0, 255).astype(np.uint8)))
    return out


class LooseFiles:
    """One PNG per image in ``root/CLASS/NNNNNN.png`` (the dataset interface)."""

    def __init__(self, root):
        self.items = [(os.path.join(root, c, f), int(c)) for c in sorted(os.listdir(root))
                      for f in sorted(os.listdir(os.path.join(root, c)))]
        self.on_error = "raise"

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        with open(path, "rb") as f:
            return decode_image(f.read()), label


def count_files(root):
    return sum(len(files) for _, _, files in os.walk(root))


def write_layouts(pngs, root, per_shard):
    shard_dir, loose_dir = os.path.join(root, "shards"), os.path.join(root, "loose")
    with ShardWriter(os.path.join(shard_dir, "bench-%06d.tar"), max_count=per_shard,
                     sidecars=False) as w:
        for i, data in enumerate(pngs):
            w.write({"__key__": f"{i:06d}", "png": data, "cls": i % NUM_CLASSES})
    for c in range(NUM_CLASSES):
        os.makedirs(os.path.join(loose_dir, str(c)))
    for i, data in enumerate(pngs):
        with open(os.path.join(loose_dir, str(i % NUM_CLASSES), f"{i:06d}.png"), "wb") as f:
            f.write(data)
    return shard_dir, loose_dir, w.shards


def run_loader(make_dataset, batch, threads):
    """Images/s of one shuffled epoch (``drop_last=False``: every image read)."""
    start = time.perf_counter()
    ds = make_dataset()
    with Loader(ds, batch, seed=0, drop_last=False, num_threads=threads, prefetch=2) as ld:
        n = sum(len(labels) for _, labels in ld.epoch_iter())
    return n / (time.perf_counter() - start)


def run_webdataset(shards, batch):
    import webdataset as wds  # bench/test extra, not a runtime dependency

    def normalise(images):
        out = np.empty((len(images), 3) + images.shape[1:3], np.float32)
        np.copyto(out, images.transpose(0, 3, 1, 2), casting="unsafe")
        out -= (MEAN * 255)[:, None, None]
        out *= (1 / (STD * 255))[:, None, None]
        return out

    start = time.perf_counter()
    pipe = (wds.WebDataset(shards, shardshuffle=False).decode("rgb8")
            .to_tuple("png", "cls").batched(batch).map_tuple(normalise, np.asarray))
    n = sum(len(labels) for _, labels in pipe)
    return n / (time.perf_counter() - start)


def best_interleaved(repeat, readers):
    """Best images/s per reader over ``repeat`` rounds after one warm-up round.

    Readers alternate within each round, in a rotating order, so a load
    change on a shared machine hits all of them alike rather than one.
    """
    best = {name: 0.0 for name in readers}
    names = list(readers)
    for round_no in range(repeat + 1):
        shift = round_no % len(names)   # rotate who goes first: no position bias
        for name in names[shift:] + names[:shift]:
            rate = readers[name]()
            if round_no:   # round 0 warms the page cache, imports and threads
                best[name] = max(best[name], rate)
    return best


def build_parser():
    p = argparse.ArgumentParser(prog="run/bench.py io", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="images (default 10000)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--per-shard", type=int, default=1000, help="samples per shard")
    p.add_argument("--batch", type=int, default=64, help="batch size")
    p.add_argument("--threads", type=int, default=1, help="decoding threads of our loader")
    p.add_argument("--repeat", type=int, default=2, help="timed passes per reader (best kept)")
    p.add_argument("--dir", default=None, help="keep the data here (default: temporary)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    for name in ("n", "size", "per_shard", "batch", "threads", "repeat"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.n < args.batch:
        raise SystemExit(f"--n {args.n} must be >= --batch {args.batch}")
    root = args.dir or tempfile.mkdtemp(prefix="minivit-bench-io-")
    try:
        pngs = make_images(args.n, args.size)
        shard_dir, loose_dir, shards = write_layouts(pngs, root, args.per_shard)
        b, t = args.batch, args.threads
        rates = best_interleaved(args.repeat, {
            "minivit_images_per_s": lambda: run_loader(lambda: ShardDataset(shard_dir), b, t),
            "webdataset_images_per_s": lambda: run_webdataset(shards, b),
            "loose_files_images_per_s": lambda: run_loader(lambda: LooseFiles(loose_dir), b, t),
        })
        res = {"n": args.n, "size": args.size, "threads": t, "batch": b,
               "per_shard": args.per_shard,
               "mean_png_bytes": round(sum(map(len, pngs)) / len(pngs), 1), **rates,
               "shard_files": count_files(shard_dir), "loose_files": count_files(loose_dir)}
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    res["speedup_vs_webdataset"] = res["minivit_images_per_s"] / res["webdataset_images_per_s"]
    res["file_count_ratio"] = res["loose_files"] / res["shard_files"]
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"{args.n} PNG images of {args.size} px (mean {res['mean_png_bytes']:.0f} bytes), "
          f"batch {args.batch}, {args.threads} decoding thread(s), best of {args.repeat}")
    for label, key in (("minivit Loader(ShardDataset)", "minivit_images_per_s"),
                       ("webdataset", "webdataset_images_per_s"),
                       ("Loader over loose files", "loose_files_images_per_s")):
        print(f"  {label:30s} {res[key]:10.0f} images/s")
    print(f"  speed-up vs webdataset         {res['speedup_vs_webdataset']:10.2f}x")
    print(f"  files: shards + index.json {res['shard_files']}, loose {res['loose_files']} "
          f"-> {res['file_count_ratio']:.0f}x fewer")
    return 0
