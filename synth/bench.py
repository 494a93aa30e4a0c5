"""Generator speed: images/s per core, PNG encoding included.

    NUMBA_NUM_THREADS=1 python run/bench.py synth [--json] [--images N] [--kinds K ...]
        [--train-size 32]

Two figures per generator:
- at the published render size (FractalDB 362 px, 200k points, patch_gray;
  VisualAtom 512 px; Newton 256 px, our choice): draw + PNG encode of the
  full image, as a stored dataset at that size;
- end to end at the training size (default 32 px): draw at the published
  size, box-downsample, PNG encode the small image, as ``make_dataset.py
  --size 32`` does (on-the-fly training skips only the tiny encode).

N images cycle over 20 classes and varying instances, after a warm-up that
compiles the kernels and finds the categories (category search is a one-off
cost per class, not per image).  "Per core" divides by the process CPU time
(``time.process_time``), so other jobs on a shared machine do not deflate the
figure; wall-clock figures are printed too.  The same run times Pillow's PNG
encoder (compress_level=1) on the same images as the reference for our encoder.
"""
import argparse
import io
import json
import time

from PIL import Image

from . import make_generator
from .png import encode_png

# kind -> (size, generator parameters): the settings of the targets
SETTINGS = {
    "fractaldb": (362, dict(num_points=200_000, mode="patch_gray")),
    "visualatom": (512, {}),
    "newton": (256, {}),
}
TARGETS = {"fractaldb": 120.0, "visualatom": 100.0, "newton": 100.0}
# images/s per core of the published generators on this machine (issue 3)
PUBLISHED = {"fractaldb": 1.2, "visualatom": 5.0}


def _pillow_png(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def measure(kind, images, classes=20, seed=0, size=None):
    """Dict of timings for ``images`` render+encode calls of ``kind`` over
    ``classes`` classes, at output ``size`` (default: the published render
    size) drawn at the published render size."""
    published, params = SETTINGS[kind]
    size = size or published
    gen = make_generator(kind, classes, size, seed, render_size=published, **params)
    for c in range(classes):          # compile kernels, find categories
        gen.render(c, 0)
    ids = [(k % classes, 1 + k // classes) for k in range(images)]
    render_cpu = encode_cpu = 0.0
    nbytes = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for c, i in ids:
        t0 = time.process_time()
        img = gen.render_native(c, i)   # what render_png encodes
        t1 = time.process_time()
        nbytes += len(encode_png(img))
        encode_cpu += time.process_time() - t1
        render_cpu += t1 - t0
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    # reference encoder on a sample of the same images
    sample = [gen.render(c, i) for c, i in ids[:20]]
    t0 = time.process_time()
    pil_bytes = sum(len(_pillow_png(im)) for im in sample)
    pil_cpu = (time.process_time() - t0) / len(sample)
    t0 = time.process_time()
    own_bytes = sum(len(encode_png(im)) for im in sample)
    own_cpu = (time.process_time() - t0) / len(sample)
    return {"kind": kind, "size": size, "render_size": published, "images": images,
            "img_per_s_per_core": images / cpu, "img_per_s_wall": images / wall,
            "render_ms": 1e3 * render_cpu / images, "encode_ms": 1e3 * encode_cpu / images,
            "png_kb": nbytes / images / 1e3, "pillow_encode_ms": 1e3 * pil_cpu,
            "own_encode_ms": 1e3 * own_cpu, "pillow_kb": pil_bytes / len(sample) / 1e3,
            "own_kb": own_bytes / len(sample) / 1e3}


def main(argv=None):
    p = argparse.ArgumentParser(prog="bench.py synth", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help='print {"fractaldb": img/s/core, ...}')
    p.add_argument("--images", type=int, default=200, help="images per generator")
    p.add_argument("--classes", type=int, default=20, help="classes cycled over")
    p.add_argument("--kinds", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    p.add_argument("--train-size", type=int, default=32,
                   help="training size of the end-to-end figure (drawn at the published size)")
    args = p.parse_args(argv)
    if args.images < 1 or args.classes < 1 or args.train_size < 8:
        p.error(f"--images and --classes must be >= 1 and --train-size >= 8, got "
                f"{args.images}, {args.classes}, {args.train_size}")
    results = [measure(kind, args.images, args.classes) for kind in args.kinds]
    if args.json:
        print(json.dumps({r["kind"]: round(r["img_per_s_per_core"], 2) for r in results}))
        return 0
    small = [measure(kind, args.images, args.classes, size=min(args.train_size, SETTINGS[kind][0]))
             for kind in args.kinds]
    print(f"{'generator':<11}{'size':>5}{'img/s/core':>11}{'target':>7}{'wall img/s':>11}"
          f"{'render ms':>10}{'png ms':>7}{'png kB':>7}{'Pillow ms':>10}{'Pillow kB':>10}"
          f"{'vs published':>13}")
    for r in results:
        pub = PUBLISHED.get(r["kind"])
        ratio = f"{r['img_per_s_per_core'] / pub:.0f}x" if pub else "n/a"
        print(f"{r['kind']:<11}{r['size']:>5}{r['img_per_s_per_core']:>11.1f}"
              f"{TARGETS[r['kind']]:>7.0f}{r['img_per_s_wall']:>11.1f}{r['render_ms']:>10.2f}"
              f"{r['encode_ms']:>7.2f}{r['png_kb']:>7.1f}{r['pillow_encode_ms']:>10.2f}"
              f"{r['pillow_kb']:>10.1f}{ratio:>13}")
    print("img/s/core = images / process CPU seconds (render + our PNG encoder); "
          "Pillow columns: compress_level=1 on 20 of the same images; "
          "published = issue 3's figures for the public generators.")
    print(f"\nend to end at {args.train_size} px: drawn at the published size, box-downsampled, "
          f"PNG-encoded")
    print(f"{'generator':<11}{'drawn at':>9}{'size':>5}{'img/s/core':>11}{'wall img/s':>11}"
          f"{'ms/img':>8}")
    for r in small:
        print(f"{r['kind']:<11}{r['render_size']:>9}{r['size']:>5}{r['img_per_s_per_core']:>11.1f}"
              f"{r['img_per_s_wall']:>11.1f}{1e3 / r['img_per_s_per_core']:>8.2f}")
    return 0
