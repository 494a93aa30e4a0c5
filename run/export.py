"""Export a minivit checkpoint to timm-compatible safetensors, or import one back.

    python run/export.py runs/X/ckpt/step_0000100.h5 --format safetensors [--out W.safetensors]
    python run/export.py --import W.safetensors --model vit-tiny --out imported.h5

The exported keys and shapes are timm ``VisionTransformer``'s, e.g. for
``--model vit-tiny`` those of ``vit_tiny_patch16_224``; in PyTorch:
``timm.create_model("vit_tiny_patch16_224", pretrained=True,
pretrained_cfg_overlay=dict(file="W.safetensors"))``.
"""
import argparse
import sys
from pathlib import Path

from minivit.checkpoint import CheckpointError
from minivit.config import PRESETS
from minivit.timm_compat import export_safetensors, import_safetensors


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", help="minivit checkpoint (.h5) to export")
    p.add_argument("--format", default="safetensors", choices=["safetensors"],
                   help="export format")
    p.add_argument("--out", default=None,
                   help="output file; default: the checkpoint path with .safetensors "
                        "(export); required with --import")
    p.add_argument("--dtype", default="float32", choices=["float32", "keep"],
                   help="exported tensor dtype ('keep' = the checkpoint's)")
    p.add_argument("--import", dest="import_file", default=None,
                   help="safetensors file with timm keys to convert into a minivit checkpoint")
    p.add_argument("--model", default=None, choices=sorted(PRESETS),
                   help="preset of the imported weights (required with --import)")
    p.add_argument("--classes", type=int, default=None,
                   help="classes of the imported head; default: rows of head.weight")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.import_file:
            if args.model is None or args.out is None:
                parser.error("--import needs --model PRESET and --out CKPT.h5")
            if not Path(args.import_file).is_file():
                parser.error(f"--import {args.import_file}: no such file")
            path = import_safetensors(args.import_file, args.model, args.out,
                                      num_classes=args.classes)
            print(f"wrote {path} (preset {args.model}, step 0, weights only)")
            return 0
        if args.checkpoint is None:
            parser.error("expected a checkpoint to export, or --import FILE")
        out = args.out or str(Path(args.checkpoint).with_suffix(".safetensors"))
        path, meta = export_safetensors(args.checkpoint, out, args.dtype)
        print(f"wrote {path}: {meta['timm_model']} keys ({meta['timm_kwargs']})")
        return 0
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
