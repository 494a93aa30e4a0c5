"""Predict memory and communication per rank for a model, a layout and a scale.

    python run/plan.py --model vit-base --nodes 1024 --dp 1024 --zero 3
    python run/plan.py --model vit-base --nodes 64 --tp 4 --pp 2 --zero 1 --micro-batch 8

One MPI rank per node.  Model-state memory and data-parallel volumes are the
closed forms of the ZeRO paper (Rajbhandari et al. 2020, sections 5 and 7)
in ``minivit.parallel.cost``; tensor- and pipeline-parallel volumes follow
Megatron-LM (Shoeybi et al. 2019, section 3; Narayanan et al. 2021).  With
tp*pp > 1 each rank holds Psi / (tp*pp) parameters (the split is taken as even).
Nothing is run: the numbers are predictions for scales this machine cannot reach.
"""
import argparse
import sys

from minivit.config import PRESETS, get_config
from minivit.parallel import cost
from minivit.parallel.grid import validate_layout

ITEMSIZE = {"float32": 4, "float64": 8}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit-base", choices=sorted(PRESETS))
    ap.add_argument("--nodes", type=int, required=True, help="world size (one rank per node)")
    ap.add_argument("--dp", type=int, default=None, help="default: nodes / (tp * pp)")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--zero", type=int, default=0, choices=(0, 1, 2, 3))
    ap.add_argument("--micro-batch", type=int, default=32, help="images per micro-batch per rank")
    ap.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    ap.add_argument("--dtype", default="float32", choices=sorted(ITEMSIZE))
    return ap.parse_args(argv)


def _human(nbytes):
    """Bytes in GiB, MiB or KiB, whichever keeps 3 significant digits visible."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:10.3f} {unit}"
    return f"{nbytes:10.0f} B"


def plan(args):
    """The prediction as a list of ``(label, value string)`` rows."""
    cfg = get_config(args.model)
    tp, pp = args.tp, args.pp
    dp = args.nodes // (tp * pp) if args.dp is None else args.dp
    validate_layout(args.nodes, dp, tp, pp)
    if cfg.depth % pp:
        raise ValueError(f"pp={pp}: expected a divisor of the model depth {cfg.depth}")
    size = ITEMSIZE[args.dtype]
    psi = sum(cost.vit_unit_sizes(cfg))
    psi_rank = psi / (tp * pp)
    mem = cost.zero_memory_bytes(psi_rank, dp, args.zero, size)
    dp_bytes = cost.zero_comm_elements(psi_rank, dp, args.zero, args.accum) * size
    b, s, h = args.micro_batch, cfg.seq_len, cfg.dim
    ring = 2 * (tp - 1) / tp
    tp_bytes = cost.tp_comm_elements(b, s, h, cfg.depth // pp, args.accum) * ring * size
    # a middle stage sends activations forward and their gradients backward
    pp_bytes = cost.pp_comm_elements(b, s, h, 1 if pp > 1 else 0, args.accum) * size
    return [
        ("model", f"{args.model}: Psi = {psi:,} parameters"),
        ("layout", f"world {args.nodes} = dp {dp} x tp {tp} x pp {pp}, ZeRO stage {args.zero}"),
        ("batch", f"micro-batch {b} x accumulation {args.accum} x dp {dp} = "
                  f"global batch {b * args.accum * dp}"),
        ("params / rank", _human(mem["params"])),
        ("grads / rank", _human(mem["grads"])),
        ("optimizer state / rank", _human(mem["optim"])),
        ("model state / rank",
         f"{_human(mem['total'])}   (no ZeRO: {_human(16 * psi_rank * size / 4)})"),
        ("dp bytes sent / rank / step", _human(dp_bytes)),
        ("tp bytes sent / rank / step", _human(tp_bytes)),
        ("pp bytes sent / rank / step", _human(pp_bytes)),
    ]


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        rows = plan(args)
    except ValueError as exc:
        print(f"plan.py: error: {exc}", file=sys.stderr)
        return 2
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
