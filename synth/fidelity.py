"""Fidelity benchmark: minivit's generators against the published renderers.

    python run/bench.py fidelity [--categories 20] [--kinds fractaldb visualatom]
        [--fractaldb-source URL_OR_CLONE] [--visualatom-source URL_OR_CLONE] [--json FILE]
        [--mode patch_gray|gray_levels]

FractalDB: the first ``--categories`` published categories
(``data/csv_rate0.2_category1000``), weight rows ``0.6,1,1,1,1,1`` and
``1,1,1,1,1,1``, patch_gray, 362 px, 200,000 points, flip 0, count 0; minivit
renders the same CSVs (``categories=``) as instances 2 and 0 (weight a x 0.6,
unchanged) in ``--mode`` (default patch_gray, the published drawing;
gray_levels gives the figures of minivit's earlier drawing).  VisualAtom: the published script with ``make_VisualAtom.sh``'s
settings at 512 px; minivit draws the categories and centres it logged
(synth/fidelity_ref.py) with its own noise and greys.  Both sides are compared
at the published size:

- lit fraction: pixels > 0 / all pixels;
- grey histogram of lit pixels (8 bins of 32 levels) and its mean;
- coarse mask IoU: a cell of a 4x-coarser grid is set if any of its 4x4
  pixels is lit; |A and B| / |A or B|;
- perceptual distance: mean absolute grey difference after box-downsampling
  both to the 32 px training size (grey levels, 0..255), next to the same
  distance between the published images of two *different* categories (an
  unrelated pair, for scale).

The published code runs from a temporary folder and is never imported here.
"""
import argparse
import json
import tempfile

import numpy as np

from .resample import downsample

WEIGHT_ROWS = {2: (0.6, 1, 1, 1, 1, 1), 0: (1, 1, 1, 1, 1, 1)}   # minivit weight -> row


def lit_fraction(img):
    """Fraction of pixels > 0 of a uint8 (H, W) image (float)."""
    return float(np.count_nonzero(img)) / img.size


def grey_histogram(img, bins=8):
    """float64 (bins,) histogram of the lit pixels' grey levels over 1..255, summing
    to 1 (all zeros if nothing is lit)."""
    lit = img[img > 0]
    hist = np.histogram(lit, bins=bins, range=(0, 256))[0].astype(np.float64)
    return hist / lit.size if lit.size else hist


def mean_lit_grey(img):
    """Mean grey of the lit pixels (float; nan if nothing is lit)."""
    lit = img[img > 0]
    return float(lit.mean()) if lit.size else float("nan")


def coarse_mask(img, factor=4):
    """bool (H // factor, W // factor): cells with any lit pixel (edges cropped)."""
    h, w = (img.shape[0] // factor) * factor, (img.shape[1] // factor) * factor
    return (img[:h, :w] > 0).reshape(h // factor, factor, w // factor, factor).any(axis=(1, 3))


def coarse_iou(a, b, factor=4):
    """IoU of the coarse masks of two same-shape images (1.0 when both are empty).
    Raises ValueError for different shapes."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    ma, mb = coarse_mask(a, factor), coarse_mask(b, factor)
    union = np.count_nonzero(ma | mb)
    return float(np.count_nonzero(ma & mb)) / union if union else 1.0


def train_size_distance(a, b, size=32):
    """Mean absolute grey difference of ``a`` and ``b`` box-downsampled to ``size``."""
    da = downsample(np.ascontiguousarray(a), size).astype(np.float64)
    db = downsample(np.ascontiguousarray(b), size).astype(np.float64)
    return float(np.abs(da - db).mean())


def compare(ours, published, unrelated):
    """Metrics of one pair (uint8 (S, S) each); ``unrelated``: a published image
    of another category, for the distance baseline."""
    return {"lit_ours": lit_fraction(ours), "lit_published": lit_fraction(published),
            "grey_ours": mean_lit_grey(ours), "grey_published": mean_lit_grey(published),
            "hist_ours": grey_histogram(ours).tolist(),
            "hist_published": grey_histogram(published).tolist(),
            "hist_tv": 0.5 * float(np.abs(grey_histogram(ours) - grey_histogram(published)).sum()),
            "iou": coarse_iou(ours, published),
            "dist": train_size_distance(ours, published),
            "dist_unrelated": train_size_distance(unrelated, published)}


def summarise(rows):
    """Means over the pairs, with the lit ratio as ratio of means and its per-pair range."""
    mean = lambda k: float(np.nanmean([r[k] for r in rows]))
    ratios = [r["lit_ours"] / r["lit_published"] for r in rows if r["lit_published"] > 0]
    return {"pairs": len(rows), "lit_ours": mean("lit_ours"),
            "lit_published": mean("lit_published"),
            "lit_ratio": mean("lit_ours") / mean("lit_published"),
            "lit_ratio_min": min(ratios), "lit_ratio_max": max(ratios),
            "grey_ours": mean("grey_ours"), "grey_published": mean("grey_published"),
            "hist_ours": np.mean([r["hist_ours"] for r in rows], axis=0).round(3).tolist(),
            "hist_published": np.mean([r["hist_published"] for r in rows], axis=0)
            .round(3).tolist(),
            "hist_tv": mean("hist_tv"), "iou": mean("iou"),
            "iou_min": min(r["iou"] for r in rows), "dist": mean("dist"),
            "dist_unrelated": mean("dist_unrelated")}


def fractaldb_pairs(source, categories, workdir, mode="patch_gray"):
    """Rows of ``compare`` for FractalDB, and the published renderer's images/s
    (wall clock, flips included)."""
    from .fractaldb import FractalDBGenerator
    from .fractaldb_csv import read_category
    from .fidelity_ref import CSV_DIR, fetch, fractaldb_categories, render_fractaldb
    fetch(source, workdir, ["fractal_renderer", CSV_DIR])
    paths = fractaldb_categories(workdir, categories)
    weights = list(WEIGHT_ROWS)
    ref, seconds = render_fractaldb(workdir, paths, [WEIGHT_ROWS[w] for w in weights])
    gen = FractalDBGenerator(len(paths), 362, categories=[read_category(p) for p in paths],
                             render_size=362, mode=mode)
    rows = []
    for c, p in enumerate(paths):
        for r, w in enumerate(weights):
            other = paths[(c + 1) % len(paths)].stem
            row = compare(gen.draw(c, w), ref[(p.stem, r)], ref[(other, r)])
            rows.append({"category": p.stem, "weight": w, **row})
    # the renderer writes the four flips of every orbit it draws
    return rows, 4 * len(ref) / seconds


def visualatom_pairs(source, categories, instances, workdir):
    """Rows of ``compare`` for VisualAtom."""
    from .fidelity_ref import fetch, render_visualatom
    from .visualatom import VisualAtomGenerator
    fetch(source, workdir, ["visual_atomic_renderer"])
    ref, params = render_visualatom(workdir, categories, instances)
    gen = VisualAtomGenerator(categories, 512, render_size=512)
    rows = []
    for (c, k), published in sorted(ref.items()):
        category, centres = params[c]
        ours = gen.draw_custom(category, centres[k], c, k)
        row = compare(ours, published, ref[((c + 1) % categories, k)])
        rows.append({"category": c, "instance": k, **row})
    return rows


def _print(kind, rows, summary):
    print(f"\n{kind}: {summary['pairs']} pairs at the published size")
    print(f"{'pair':<14}{'lit ours':>9}{'lit pub':>9}{'ratio':>7}{'grey ours':>10}"
          f"{'grey pub':>9}{'hist TV':>8}{'IoU 4x':>7}{'dist32':>7}{'unrel.':>7}")
    for r in rows:
        name = f"{r['category']}/{r.get('weight', r.get('instance'))}"
        ratio = r["lit_ours"] / r["lit_published"] if r["lit_published"] else float("nan")
        print(f"{name:<14}{r['lit_ours']:>9.3f}{r['lit_published']:>9.3f}{ratio:>7.2f}"
              f"{r['grey_ours']:>10.1f}{r['grey_published']:>9.1f}{r['hist_tv']:>8.2f}"
              f"{r['iou']:>7.2f}{r['dist']:>7.1f}{r['dist_unrelated']:>7.1f}")
    s = summary
    print(f"mean: lit {s['lit_ours']:.3f} vs {s['lit_published']:.3f} (ratio {s['lit_ratio']:.3f}, "
          f"per pair {s['lit_ratio_min']:.2f}-{s['lit_ratio_max']:.2f}); grey of lit "
          f"{s['grey_ours']:.1f} vs {s['grey_published']:.1f}; histogram TV {s['hist_tv']:.3f}; "
          f"IoU {s['iou']:.3f} (min {s['iou_min']:.2f}); 32-px distance {s['dist']:.1f} "
          f"(unrelated pair {s['dist_unrelated']:.1f})")
    print(f"grey histograms (8 bins of 32 levels): ours {s['hist_ours']}, "
          f"published {s['hist_published']}")


def main(argv=None):
    from .fidelity_ref import FRACTALDB_REPO, VISUALATOM_REPO
    p = argparse.ArgumentParser(prog="bench.py fidelity", description=__doc__.split("\n\n")[0])
    p.add_argument("--categories", type=int, default=20, help="categories compared (>= 2)")
    p.add_argument("--instances", type=int, default=2, help="VisualAtom instances per category")
    p.add_argument("--kinds", nargs="+", choices=["fractaldb", "visualatom"],
                   default=["fractaldb", "visualatom"])
    p.add_argument("--fractaldb-source", default=FRACTALDB_REPO,
                   help="URL or local clone of the published FractalDB repository")
    p.add_argument("--visualatom-source", default=VISUALATOM_REPO,
                   help="URL or local clone of the published VisualAtom repository")
    p.add_argument("--json", help="also write the rows and summaries to this file")
    p.add_argument("--mode", choices=["patch_gray", "gray_levels"], default="patch_gray",
                   help="minivit's FractalDB drawing (the published renderer is always "
                        "patch_gray)")
    args = p.parse_args(argv)
    if args.categories < 2 or args.instances < 1:
        p.error(f"need --categories >= 2 and --instances >= 1, got {args.categories}, "
                f"{args.instances}")
    report = {}
    with tempfile.TemporaryDirectory(prefix="minivit-fidelity-") as tmp:
        if "fractaldb" in args.kinds:
            rows, ref_speed = fractaldb_pairs(args.fractaldb_source, args.categories,
                                              f"{tmp}/fractaldb", args.mode)
            report["fractaldb"] = {"rows": rows, "summary": summarise(rows),
                                   "published_img_per_s": ref_speed}
            _print(f"FractalDB (minivit {args.mode}, published patch_gray)", rows,
                   report["fractaldb"]["summary"])
            print(f"published renderer: {ref_speed:.2f} img/s (wall, one process)")
        if "visualatom" in args.kinds:
            rows = visualatom_pairs(args.visualatom_source, args.categories, args.instances,
                                    f"{tmp}/visualatom")
            report["visualatom"] = {"rows": rows, "summary": summarise(rows)}
            _print("VisualAtom", rows, report["visualatom"]["summary"])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    return 0
