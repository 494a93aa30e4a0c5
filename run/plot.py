"""Plot loss and accuracy from metrics.jsonl files to a PNG.

    python run/plot.py runs/pre/metrics.jsonl                    # -> runs/pre/metrics.png
    python run/plot.py A/metrics.jsonl B/metrics.jsonl --label pretrained --label scratch \\
        --out docs/finetune.png --title "digits fine-tune"

The logic lives in ``minivit.tools.plotting``.
"""
import argparse
import sys
from pathlib import Path

from minivit.tools.plotting import plot_runs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("metrics", nargs="+", help="metrics.jsonl files (run/pretrain.py, finetune.py)")
    p.add_argument("--label", action="append", default=None,
                   help="legend label per file, in order (default: the run folder name)")
    p.add_argument("--out", default=None,
                   help="PNG path; default: metrics.png next to the first file")
    p.add_argument("--title", default=None, help="figure title")
    p.add_argument("--smooth", type=int, default=None, help="moving-average window in steps")
    args = p.parse_args(argv)
    paths = [Path(m) for m in args.metrics]
    missing = [str(m) for m in paths if not m.is_file()]
    if missing:
        p.error(f"metrics file(s) not found: {', '.join(missing)}")
    labels = args.label or [m.parent.name if len(paths) > 1 else "" for m in paths]
    if len(labels) != len(paths):
        p.error(f"{len(labels)} --label for {len(paths)} files: expected one per file")
    if args.smooth is not None and args.smooth < 1:
        p.error(f"--smooth {args.smooth}: expected >= 1")
    out = Path(args.out) if args.out else paths[0].with_suffix(".png")
    try:
        plot_runs(list(zip(labels, paths)), out, title=args.title, smooth=args.smooth)
    except ValueError as e:
        p.error(str(e))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
