"""Predict memory and communication per rank for a model, a layout and a scale.

    python run/plan.py --model vit-base --nodes 1024 --dp 1024 --zero 3
    python run/plan.py --model vit-base --nodes 64 --tp 4 --pp 2 --zero 1 --micro-batch 8
    python run/plan.py --model vit-huge --nodes 256 --zero 3 --recompute --machine fugaku --json
    python run/plan.py --model vit-huge --zero 3 --recompute --machine fugaku \
        --global-batch 4096 --micro-batch 4 --strong-scaling 1,2,4,...,1024 --plot scaling.png

One MPI rank per node.  Model-state memory and data-parallel volumes are the
closed forms of the ZeRO paper (Rajbhandari et al. 2020, sections 5 and 7)
in ``minivit.parallel.cost``; tensor- and pipeline-parallel volumes follow
Megatron-LM (Shoeybi et al. 2019, section 3; Narayanan et al. 2021).  With
tp*pp > 1 each rank holds Psi / (tp*pp) parameters (the split is taken as even).
Activations, peak memory and seconds per step come from
``minivit.parallel.tools.plan_model`` (activation bytes derived from the code's own
contexts, compute at ``peak x efficiency`` of a machine file in
``run/machines/``, collectives through an alpha-beta ring model).
Nothing is run: the numbers are predictions for scales this machine cannot reach.
"""
import argparse
import json
import sys

from minivit.config import PRESETS, get_config
from minivit.parallel import cost
from minivit.parallel.grid import validate_layout
from minivit.parallel.pipeline import SCHEDULES
from minivit.parallel.tools import plan_model

ITEMSIZE = {"float32": 4, "float64": 8}


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit-base", choices=sorted(PRESETS))
    ap.add_argument("--nodes", type=int, default=None,
                    help="world size (required unless --strong-scaling)")
    ap.add_argument("--dp", type=int, default=None, help="default: nodes / (tp * pp)")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--zero", type=int, default=0, choices=(0, 1, 2, 3))
    ap.add_argument("--micro-batch", type=int, default=32, help="images per micro-batch per rank")
    ap.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    ap.add_argument("--dtype", default="float32", choices=sorted(ITEMSIZE))
    # step time and activations (issue 15)
    ap.add_argument("--machine", default="fugaku",
                    help="run/machines/NAME.toml or a TOML path (default: fugaku)")
    ap.add_argument("--ranks-per-node", type=int, default=1,
                    help="ranks sharing one node's FLOP/s and memory")
    ap.add_argument("--recompute", action="store_true", help="activation recompute per block")
    ap.add_argument("--recompute-granularity", choices=("full", "selective"),
                    help="with --recompute: full (default) keeps each block's input; "
                         "selective keeps the attention core's row log-sum-exp instead of P")
    ap.add_argument("--sequence-parallel", action="store_true", help="with --tp > 1: LN regions "
                    "sharded along T (their activations / tp; pp sends (b, T/tp, h))")
    ap.add_argument("--offload", action="store_true", help="optimizer state offloaded to disk")
    ap.add_argument("--schedule", default="1f1b", choices=SCHEDULES,
                    help="pipeline schedule (with --pp > 1): its bubble stretches the compute, "
                         "its micro-batches in flight set the activations")
    ap.add_argument("--virtual-stages", type=int, default=1,
                    help="model chunks per stage with --schedule interleaved")
    ap.add_argument("--overlap", action="store_true",
                    help="dp collectives overlap the last backward")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--strong-scaling", default=None, metavar="N1,N2,...",
                    help="node counts at a fixed --global-batch (accumulation at fewer nodes); "
                         "'1,2,4,...,1024' doubles up to the last")
    ap.add_argument("--global-batch", type=int, default=None,
                    help="with --strong-scaling (default: micro-batch x the largest count)")
    ap.add_argument("--plot", default=None, help="with --strong-scaling: write a PNG here")
    args = ap.parse_args(argv)
    if args.recompute_granularity and not args.recompute:
        ap.error(f"--recompute-granularity {args.recompute_granularity}: expected --recompute too")
    return args


# plan.py's integer flags: (attribute, smallest value); None (not given) passes
POSITIVE_FLAGS = ("nodes", "dp", "tp", "pp", "micro_batch", "accum", "ranks_per_node",
                  "virtual_stages", "global_batch")


def check_numbers(args):
    """ValueError naming plan.py's own flag for an integer flag below 1 (checked before
    any arithmetic, so no division by zero and no negative step time)."""
    for name in POSITIVE_FLAGS:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} {value}: expected a positive integer")


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
    if args.sequence_parallel:       # AG + RS of (b, T_loc, h) blocks: TP's bytes on t T_loc
        s = plan_model.tokens_per_rank(s, tp)
    tp_bytes = cost.tp_comm_elements(b, s * (tp if args.sequence_parallel else 1), h,
                                     cfg.depth // pp, args.accum) * ring * size
    # a middle stage sends activations forward and their gradients backward
    pp_bytes = cost.pp_comm_elements(b, s, h, 1 if pp > 1 else 0, args.accum) * size \
        * args.virtual_stages                 # interleaved: v x the messages
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


def _recompute(args):
    """False, "full" or "selective" (``cost.recompute_mode``) from the two flags."""
    return (args.recompute_granularity or "full") if args.recompute else False


def _layout(args, nodes=None, accum=None):
    nodes = args.nodes if nodes is None else nodes
    dp = nodes // (args.tp * args.pp) if args.dp is None or nodes != args.nodes else args.dp
    return plan_model.Layout(
        model=args.model, nodes=nodes, dp=dp, tp=args.tp, pp=args.pp, zero=args.zero,
        micro_batch=args.micro_batch, accum=args.accum if accum is None else accum,
        dtype=args.dtype, recompute=_recompute(args), offload=args.offload,
        schedule=args.schedule, virtual_stages=args.virtual_stages, overlap=args.overlap,
        ranks_per_node=args.ranks_per_node, sequence_parallel=args.sequence_parallel)


def step_rows(result):
    """Rows of the activation / peak memory / step-time prediction (``plan_step`` dict)."""
    act, t = result["memory"]["activations"], result["time"]
    chunks = result["layout"]["virtual_stages"] > 1
    return [
        ("activations / rank", f"{_human(act['total'])}   ({act['in_flight']} "
                               + ("chunk contexts in flight, largest " if chunks else
                                  "micro-batch(es) in flight x ")
                               + f"{_human(act['per_micro_batch']).strip()}"
                               f" + rebuilt block {_human(act['recompute_transient']).strip()})"),
        ("peak memory / rank", f"{_human(result['peak_bytes_per_rank'])}   "
                               f"({'fits' if result['fits'] else 'DOES NOT FIT'} in "
                               f"{result['machine']}'s memory)"),
        ("step time", f"{result['step_seconds']:10.4f} s   (compute {t['compute']:.4f}, dp "
                      f"{t['dp']:.4f}, tp {t['tp']:.4f}, pp {t['pp']:.4f}; with overlap "
                      f"{result['step_seconds_overlap']:.4f})"),
        ("throughput", f"{result['tflops']:10.3f} TFLOP/s in all"),
    ]


def scaling(args, machine):
    counts = plan_model.parse_node_counts(args.strong_scaling)
    gb = args.global_batch or args.micro_batch * max(counts) // (args.tp * args.pp)
    out = plan_model.strong_scaling(
        args.model, counts, machine, global_batch=gb, micro_batch=args.micro_batch,
        zero=args.zero, tp=args.tp, pp=args.pp, dtype=args.dtype, recompute=_recompute(args),
        offload=args.offload, schedule=args.schedule, virtual_stages=args.virtual_stages,
        overlap=args.overlap, ranks_per_node=args.ranks_per_node,
        sequence_parallel=args.sequence_parallel)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.model} on {machine.name}, global batch {gb}, ZeRO-{args.zero}, "
              f"tp {args.tp}, pp {args.pp}")
        print(f"{'nodes':>6}{'accum':>7}{'s/step':>11}{'TFLOP/s':>11}{'peak/rank':>14}  fits")
        for r in out:
            print(f"{r['layout']['nodes']:>6}{r['layout']['accum']:>7}{r['step_seconds']:>11.3f}"
                  f"{r['tflops']:>11.2f}{_human(r['peak_bytes_per_rank']):>14}  {r['fits']}")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        n = [r["layout"]["nodes"] for r in out]
        a.loglog(n, [r["step_seconds"] for r in out], "o-", label="predicted")
        a.loglog(n, [out[0]["step_seconds"] * n[0] / k for k in n], "k--", label="ideal 1/N")
        a.set(xlabel="nodes", ylabel="seconds per step", title=f"{args.model}, batch {gb}")
        b.loglog(n, [r["tflops"] for r in out], "o-")
        b.set(xlabel="nodes", ylabel="TFLOP/s (all nodes)", title=machine.name)
        a.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        check_numbers(args)
        machine = plan_model.load_machine(args.machine)
        if args.strong_scaling:
            return scaling(args, machine)
        if args.nodes is None:
            raise ValueError("--nodes is required (or give --strong-scaling)")
        for name in ("global_batch", "plot"):     # else silently ignored by a single plan
            if getattr(args, name) is not None:
                raise ValueError(f"--{name.replace('_', '-')} applies to --strong-scaling only "
                                 "(a single plan's batch is --micro-batch x --accum x dp)")
        result = plan_model.plan_step(_layout(args), machine)
        rows = plan(args) + step_rows(result)
    except ValueError as exc:
        print(f"plan.py: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
        return 0
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
