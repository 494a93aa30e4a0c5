"""The planner's model of a training step at any scale: memory per rank and seconds per step.

Memory per rank = model state (ZeRO section 5.1, ``cost.zero_memory_bytes``,
on ``Psi / (tp pp)`` parameters) + this code's other per-parameter arrays (the
weight-decay mask, and under tp the norm weights) + activations (``cost.peak_activation_bytes``:
the contexts of the micro-batches in flight, derived from this code's contexts)
+ transient buffers (the ZeRO-3 gathered unit and its padded gradient, one
backward's gradient arrays) + the resident bytes of an idle rank (Python,
NumPy, Numba, MPI; the machine file's ``process_baseline_bytes``).

Seconds per step (one rank per node unless ``ranks_per_node`` says otherwise):

* compute: model FLOPs (``minivit.flops``: 3x the forward matmuls, 4x with
  recompute) of this rank's share (``1 / tp`` of its stage's blocks) divided by
  ``peak_flops / ranks_per_node x efficiency``; a pipeline stretches it by the
  bubble, ``(m + p - 1) / m`` (Narayanan et al. 2021, eq. 1), interleaved with
  ``v`` chunks per stage ``(v m + p - 1) / (v m)`` (section 2.2.2: the bubble
  time shrinks by v);
* communication: each collective through the alpha-beta model of a ring
  (Thakur, Rabenseifner and Gropp 2005, "Optimization of Collective
  Communication Operations in MPICH", section 2; Patarasuk and Yuan 2009):
  ``t = k alpha + bytes_sent / beta`` with ``k`` the ring's rounds
  (all-reduce ``2 (p-1)``, all-gather / reduce-scatter ``p-1``, send 1) and
  ``bytes_sent`` the per-rank volume of ``cost.py`` (the ledger's accounting);
* overlap: without it every term adds; with it the data-parallel term hides
  behind the backward of the last micro-batch (2/3 of its compute) and only
  the excess shows.  Tensor- and pipeline-parallel transfers sit on the
  critical path either way.

Machines are TOML files (``run/machines/*.toml``) with the keys of
:class:`Machine`.  Nothing here runs anything: these are predictions.
"""
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from minivit.config import get_config
from minivit.flops import forward_matmul_flops

from .. import cost
from ..grid import validate_layout
from ..sequence_parallel import tokens_per_rank
from ..pipeline import bubble_fraction, check_schedule, in_flight_peak, pipeline_ops
from ..zero import check_gradient_sync

ITEMSIZE = {"float32": 4, "float64": 8}
MACHINE_DIR = Path(__file__).resolve().parents[2] / "run" / "machines"


@dataclass(frozen=True)
class Machine:
    """One node of a machine.

    peak_flops : FLOP/s of the node at the training dtype (float).
    efficiency : achieved fraction of ``peak_flops`` on the model's matmuls (0, 1].
    memory_bytes : memory per node, bytes.  link_bandwidth : beta, bytes/s one
    rank sends on a link.  latency : alpha, seconds per message.  cores : per node.
    process_baseline_bytes : resident bytes of one idle rank after its imports.
    """
    name: str
    description: str
    peak_flops: float
    efficiency: float
    memory_bytes: int
    link_bandwidth: float
    latency: float
    cores: int = 1
    process_baseline_bytes: int = 0

    def __post_init__(self):
        for key in ("peak_flops", "memory_bytes", "link_bandwidth"):
            if not getattr(self, key) > 0:
                raise ValueError(f"machine {self.name!r}: {key}={getattr(self, key)!r}: "
                                 "expected a positive number")
        if not 0 < self.efficiency <= 1:
            raise ValueError(f"machine {self.name!r}: efficiency={self.efficiency!r}: "
                             "expected 0 < efficiency <= 1")
        if self.latency < 0 or self.process_baseline_bytes < 0:
            raise ValueError(f"machine {self.name!r}: latency and process_baseline_bytes "
                             "must be >= 0")


def load_machine(name_or_path):
    """A :class:`Machine` from ``run/machines/NAME.toml`` or a TOML file path.

    Raises ValueError naming the file for a missing file, an unknown key or a
    missing required key.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = MACHINE_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in MACHINE_DIR.glob("*.toml"))
        raise ValueError(f"machine {name_or_path!r}: no file {path} (known: {known})")
    data = tomllib.loads(path.read_text())
    names = {f.name for f in fields(Machine)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{path}: unknown key {unknown[0]!r} (expected keys {sorted(names)})")
    try:
        return Machine(**data)
    except TypeError as exc:
        raise ValueError(f"{path}: {exc}") from None


# ---------------------------------------------------------------- alpha-beta
def collective_seconds(op, nbytes_sent, p, machine, count=1):
    """Seconds of ``count`` ring collectives in which one rank sends ``nbytes_sent`` in all.

    op : "allreduce" (2 (p-1) rounds), "allgather" / "reduce_scatter" (p-1), "send" (1).
    ``nbytes_sent`` is the ledger's per-rank volume (``cost.allreduce_bytes`` ...).
    Returns 0 for p == 1.  Raises ValueError for an unknown op.
    """
    rounds = {"allreduce": 2 * (p - 1), "allgather": p - 1, "reduce_scatter": p - 1,
              "send": 1}
    if op not in rounds:
        raise ValueError(f"op={op!r}: expected one of {sorted(rounds)}")
    if p == 1 and op != "send":
        return 0.0
    return count * rounds[op] * machine.latency + nbytes_sent / machine.link_bandwidth


# ---------------------------------------------------------------- the layout
@dataclass(frozen=True)
class Layout:
    """What ``plan.py`` is asked about.  nodes = dp x tp x pp ranks (``ranks_per_node`` per node)."""
    model: str
    nodes: int
    dp: int
    tp: int = 1
    pp: int = 1
    zero: int = 0
    micro_batch: int = 32
    accum: int = 1
    dtype: str = "float32"
    recompute: bool | str = False        # a cost.recompute_mode value: True/"full", "selective"
    offload: bool = False
    schedule: str = "1f1b"
    virtual_stages: int = 1
    overlap: bool = False
    ranks_per_node: int = 1
    bucket_bytes: int = 25 * 2**20
    sequence_parallel: bool = False

    @property
    def world(self):
        return self.dp * self.tp * self.pp


def _dp_messages(unit_sizes, p, stage, accum, bucket_elems):
    """(op, count) of the data-parallel collectives of one step (for the alpha term)."""
    units = len(unit_sizes)
    buckets = len(cost.bucket_sizes(sum(unit_sizes), bucket_elems))
    return {0: [("allreduce", buckets)],
            1: [("allreduce", buckets), ("allgather", units)],
            2: [("reduce_scatter", accum * units), ("allgather", units)],
            3: [("reduce_scatter", accum * units), ("allgather", 2 * accum * units)]}[stage]


def plan_step(layout, machine, source="--accum"):
    """Memory per rank and seconds per step of ``layout`` on ``machine``.

    source : the flags that set ``layout.accum``, named in the schedule errors
    (``run/plan.py --accum``; the strong-scaling sweep derives it from the batch).

    Returns a dict with the keys of ``plan.py --json``: ``params``,
    ``model_state_bytes_per_rank``, ``activation_bytes_per_rank``,
    ``peak_bytes_per_rank``, ``step_seconds``, ``comm_bytes_per_rank``
    (``{"dp": .., "tp": .., "pp": ..}`` per step), ``fits``; and the details
    ``memory`` (dict of the terms), ``time`` (dict of the terms, seconds),
    ``step_seconds_overlap``, ``flops_per_step`` (whole job, the matmul FLOPs
    executed: a full recompute's extra forward and a selective one's rebuilt
    scores included), ``tflops`` (achieved total, per the prediction), ``global_batch``,
    ``peak_resident_bytes_per_rank`` (with offloaded pages, as ``VmHWM`` sees them).
    Memory is that of pipeline stage 0, the heaviest: it holds the embedding
    and, under 1F1B, the most micro-batches in flight (``pp``).  Units: bytes,
    seconds, FLOP; ``dtype`` float32 or float64.
    Raises ValueError for an inconsistent layout.
    """
    lay = layout
    cfg = get_config(lay.model, dtype=lay.dtype)
    validate_layout(lay.world, lay.dp, lay.tp, lay.pp)
    if cfg.depth % lay.pp:
        raise ValueError(f"pp={lay.pp}: expected a divisor of the model depth {cfg.depth}")
    if lay.pp > 1 and lay.schedule in ("1f1b", "zb-h1") and lay.accum < lay.pp:
        name = "1F1B" if lay.schedule == "1f1b" else "ZB-H1"
        raise ValueError(f"{name} with accum={lay.accum} micro-batches on pp={lay.pp}: "
                         f"expected accum >= pp (accum = {source})")
    if lay.sequence_parallel:
        tokens_per_rank(cfg.seq_len, lay.tp)      # ValueError for tp 1 or a padding-only rank
    _check_interleaved(lay, cfg, source)
    check_gradient_sync(lay.zero, lay.overlap, lay.schedule, lay.pp)   # pretrain.py's check
    item = ITEMSIZE[lay.dtype]
    sizes = cost.vit_unit_sizes(cfg)
    psi = sum(sizes)
    blocks = cfg.depth // lay.pp
    # the heaviest stage: the first (embedding) when pp > 1, everything when pp == 1
    share = [sizes[0]] + [sizes[1] // lay.tp] * blocks + ([sizes[-1]] if lay.pp == 1 else [])
    psi_rank = psi / (lay.tp * lay.pp)
    b, m, p = lay.micro_batch, lay.accum, lay.dp
    mem = _memory_terms(lay, cfg, machine, item, psi_rank, share)
    compute, passes = _compute_seconds(lay, cfg, machine, blocks)
    comm = _comm_terms(lay, cfg, machine, item, psi_rank, share, blocks)
    backward_last = compute * (passes - 1) / passes / m
    exposed_dp = max(0.0, comm["dp_time"] - backward_last)
    no_overlap = compute + comm["dp_time"] + comm["tp_time"] + comm["pp_time"]
    with_overlap = compute + exposed_dp + comm["tp_time"] + comm["pp_time"]
    step = with_overlap if lay.overlap else no_overlap
    flops_step = (passes * forward_matmul_flops(cfg, b) + rebuilt_scores_flops(lay, cfg)) * m * p
    return {
        "model": lay.model, "params": psi, "machine": machine.name,
        "layout": {"nodes": lay.nodes, "world": lay.world, "dp": p, "tp": lay.tp, "pp": lay.pp,
                   "zero": lay.zero, "micro_batch": b, "accum": m, "recompute": lay.recompute,
                   "offload": lay.offload, "schedule": lay.schedule,
                   "virtual_stages": lay.virtual_stages, "overlap": lay.overlap,
                   "ranks_per_node": lay.ranks_per_node, "dtype": lay.dtype,
                   "sequence_parallel": lay.sequence_parallel},
        "global_batch": b * m * p,
        "model_state_bytes_per_rank": int(mem["model_state"]),
        "activation_bytes_per_rank": int(mem["act"]["total"]),
        "peak_bytes_per_rank": int(mem["peak"]),
        "peak_resident_bytes_per_rank": int(mem["peak"] + mem["mapped"]),
        "step_seconds": step,
        "step_seconds_overlap": with_overlap,
        "step_seconds_no_overlap": no_overlap,
        "comm_bytes_per_rank": {"dp": int(comm["dp_bytes"]), "tp": int(comm["tp_bytes"]),
                                "pp": int(comm["pp_bytes"])},
        "fits": bool(mem["peak"] * lay.ranks_per_node <= machine.memory_bytes),
        "memory": mem["terms"],
        "time": {"compute": compute, "dp": comm["dp_time"], "dp_exposed_with_overlap": exposed_dp,
                 "tp": comm["tp_time"], "pp": comm["pp_time"]},
        "flops_per_step": flops_step,
        "tflops": flops_step / step / 1e12,
    }


def _memory_terms(lay, cfg, machine, item, psi_rank, share):
    """Per-rank bytes of stage 0: ``model_state``, ``act`` (cost.peak_activation_bytes),
    ``peak``, ``mapped`` (offloaded pages) and the ``terms`` dict of ``plan_step``."""
    b, m, p = lay.micro_batch, lay.accum, lay.dp
    state = cost.zero_memory_bytes(psi_rank, p, lay.zero, item)
    optim = 0 if lay.offload else state["optim"]
    model_state = state["params"] + state["grads"] + optim
    act = (interleaved_activation_bytes(lay, cfg, item) if lay.schedule == "interleaved"
           else cost.peak_activation_bytes(cfg, b, item, m=m, pp=lay.pp, stage=0, tp=lay.tp,
                                           recompute=lay.recompute, schedule=lay.schedule,
                                           sequence_parallel=lay.sequence_parallel))
    # persistent arrays beyond the 16 Psi of ZeRO's count, measured by run/bench.py
    # rankmem: the weight-decay mask (1 byte per parameter whatever the dtype,
    # FlatParams.decay_mask; ZeRO 1-3 keep their shard of it, ZeRO-3 drops the full
    # one) and, under tp, ModelShard.norm_weight (the same length, model dtype)
    decay = cost.decay_mask_bytes(psi_rank, psi_rank / p, lay.zero)
    norm_weight = item * psi_rank if lay.tp > 1 else 0
    largest = max(share)
    gather = 2 * largest * item if lay.zero == 3 else 0      # gathered unit + its gradient
    rows = b * cfg.seq_len
    # the backward's live gradient arrays: dy, dx (B T D) and the MLP's (B T M/tp) pair
    workspace = item * rows * (2 * cfg.dim + 2 * cfg.mlp_dim // lay.tp)
    baseline = machine.process_baseline_bytes
    peak = model_state + decay + norm_weight + act["total"] + gather + workspace + baseline
    # offloaded state is file-backed: its pages are resident while the update
    # touches them (VmHWM counts them) but reclaimable, so "fits" leaves them out
    mapped = (state["optim"] + (state["params"] if lay.zero == 3 else 0)) if lay.offload else 0
    if lay.offload and lay.zero == 3:
        peak -= state["params"]           # the parameter shard is mapped too (Offload)
    terms = {"params": int(state["params"]), "grads": int(state["grads"]),
             "optim": int(optim), "optim_offloaded": int(state["optim"] - optim),
             "activations": act, "zero3_gather": int(gather),
             "decay_mask": int(decay), "norm_weight": int(norm_weight),
             "offload_mapped": int(mapped),
             "backward_workspace": int(workspace), "process_baseline": int(baseline)}
    return {"model_state": model_state, "act": act, "peak": peak, "mapped": mapped,
            "terms": terms}


def rebuilt_scores_flops(lay, cfg):
    """FLOP of the scores Q K^T that selective recompute rebuilds in one micro-batch's
    backward, whole model: ``depth x 2 b T^2 D`` (0 without it)."""
    if cost.recompute_mode(lay.recompute) != "selective":
        return 0
    return cfg.depth * 2 * lay.micro_batch * cfg.seq_len ** 2 * cfg.dim


def _compute_seconds(lay, cfg, machine, blocks):
    """``(seconds of compute per step on one rank, passes)``: matmul FLOPs at the node
    peak x efficiency shared by its ranks; 3 passes (4 with full recompute; selective
    adds the rebuilt scores Q K^T, ``2 b T^2 D / tp`` per block); the pipeline
    bubble ``pipeline.bubble_fraction`` (equal F, B and W) stretches it by
    ``1 / (1 - bubble)``: (m + p - 1) / m for GPipe and 1F1B, (v m + p - 1) / (v m)
    interleaved, (3 m + p - 1) / (3 m) for ZB-H1."""
    b, m = lay.micro_batch, lay.accum
    fwd_block = (forward_matmul_flops(cfg, b) - forward_matmul_flops(
        get_config(lay.model, depth=1, dtype=lay.dtype), b)) / (cfg.depth - 1) \
        if cfg.depth > 1 else forward_matmul_flops(cfg, b)
    fwd_rest = forward_matmul_flops(cfg, b) - cfg.depth * fwd_block
    mode = cost.recompute_mode(lay.recompute)
    passes = 4 if mode == "full" else 3
    fwd_rank = blocks * fwd_block / lay.tp + fwd_rest      # embed + head counted on the stage
    rate = machine.peak_flops / lay.ranks_per_node * machine.efficiency
    rebuilt = rebuilt_scores_flops(lay, cfg) * blocks / cfg.depth / lay.tp
    compute = (passes * fwd_rank + rebuilt) * m / rate
    if lay.pp > 1:
        compute /= 1.0 - bubble_fraction(lay.schedule, lay.pp, m, v=lay.virtual_stages)
    return compute, passes


def _comm_terms(lay, cfg, machine, item, psi_rank, share, blocks):
    """Bytes per rank and alpha-beta seconds per step of the dp, tp and pp collectives."""
    b, m, p = lay.micro_batch, lay.accum, lay.dp
    dp_bytes = cost.zero_comm_elements(psi_rank, p, lay.zero, m) * item
    dp_time = 0.0
    if p > 1:
        bucket_elems = max(1, lay.bucket_bytes // item)
        for op, count in _dp_messages(share, p, lay.zero, m, bucket_elems):
            dp_time += count * collective_seconds(op, 0, p, machine)
        dp_time += dp_bytes / machine.link_bandwidth
    tokens = tokens_per_rank(cfg.seq_len, lay.tp) if lay.sequence_parallel else cfg.seq_len
    act_elems = b * tokens * cfg.dim            # the activation between pipeline stages
    tp_count = (6 if cost.recompute_mode(lay.recompute) == "full" else 4) * blocks * m
    if lay.sequence_parallel:
        tp_bytes, tp_time = _sequence_parallel_terms(lay, cfg, machine, item, blocks)
    else:
        tp_bytes = tp_count * cost.allreduce_bytes(b * cfg.seq_len * cfg.dim, lay.tp, item)
        tp_time = collective_seconds("allreduce", tp_bytes, lay.tp, machine, count=tp_count)
    v = lay.virtual_stages
    pp_bytes = cost.pp_step_bytes(b, tokens, cfg.dim, m, item, lay.pp > 2, lay.pp > 1, v)
    pp_time = 0.0
    if lay.pp > 1:
        # one activation and one gradient per slot of the pipeline (of a chunk, interleaved)
        transfers = 2 * (v * m + lay.pp - 1)
        pp_time = collective_seconds("send", transfers * act_elems * item, 1, machine,
                                     count=transfers)
    return {"dp_bytes": dp_bytes, "dp_time": dp_time, "tp_bytes": tp_bytes, "tp_time": tp_time,
            "pp_bytes": pp_bytes, "pp_time": pp_time}


def _sequence_parallel_terms(lay, cfg, machine, item, blocks):
    """tp bytes and seconds per step of stage 0 under sequence parallelism: the
    all-gathers and reduce-scatters of ``cost.sp_step_bytes`` (TP's bytes, in 2x the
    messages of half the rounds) and the LayerNorm-gradient all-reduces."""
    b, m = lay.micro_batch, lay.accum
    sp = cost.sp_step_bytes(b, cfg.seq_len, cfg.dim, blocks, m, lay.tp, item,
                            recompute=lay.recompute, first=True, last=lay.pp == 1)
    per_block = (6 if cost.recompute_mode(lay.recompute) == "full" else 4) * blocks * m
    ends = 1 + int(lay.pp == 1)
    seconds = (collective_seconds("allgather", sp["allgather"], lay.tp, machine,
                                  count=per_block + ends * m)
               + collective_seconds("reduce_scatter", sp["reduce_scatter"], lay.tp, machine,
                                    count=per_block)
               + collective_seconds("allreduce", sp["allreduce"], lay.tp, machine,
                                    count=2 * blocks * m))
    return sum(sp.values()), seconds


def _check_interleaved(lay, cfg, source):
    """ValueError unless ``lay`` can run interleaved 1F1B (``pipeline.check_interleaved``)
    on an even split of the blocks into ``pp x virtual_stages`` chunks."""
    if lay.schedule != "interleaved":
        if lay.virtual_stages != 1:
            raise ValueError(f"--virtual-stages {lay.virtual_stages} with --schedule "
                             f"{lay.schedule}: expected 1 (or --schedule interleaved)")
        return
    check_schedule("interleaved", lay.accum, lay.pp, lay.virtual_stages, source)
    if cfg.depth % (lay.pp * lay.virtual_stages):
        raise ValueError(f"--pp {lay.pp} x --virtual-stages {lay.virtual_stages} = "
                         f"{lay.pp * lay.virtual_stages} virtual stages: expected a divisor of "
                         f"the model depth {cfg.depth}")


def interleaved_activation_bytes(lay, cfg, item):
    """Peak context bytes on stage 0 under interleaved 1F1B (the dict of
    ``cost.peak_activation_bytes``; ``in_flight`` counts (micro-batch, chunk) contexts
    and ``per_micro_batch`` is the largest chunk's).

    Stage 0 keeps ``v p + p - 1`` chunk contexts at its peak
    (``cost.micro_batches_in_flight``), each ``1/v`` of a stage's blocks, chunk 0
    with the embedding: about ``p (1 + (p - 1)/(p v))`` stages' worth against
    1F1B's ``p``.  The bytes are those of the contexts the op list
    (``pipeline.interleaved_order``) keeps alive at its peak, which is exact for
    even chunks.
    """
    v, p, b = lay.virtual_stages, lay.pp, lay.micro_batch
    blocks = cfg.depth // (p * v)
    chunk = [cost.stage_activation_bytes(cfg, b, item, blocks=blocks, first=c == 0,
                                         last=c * p == p * v - 1, tp=lay.tp,
                                         recompute=lay.recompute,
                                         sequence_parallel=lay.sequence_parallel)
             for c in range(v)]
    count, contexts = in_flight_peak(pipeline_ops("interleaved", lay.accum, p, 0, v), chunk)
    rebuilt = (cost.block_ctx_bytes(cfg, b, item, tp=lay.tp,
                                    sequence_parallel=lay.sequence_parallel)
               if cost.recompute_mode(lay.recompute) == "full" else 0)
    return {"per_micro_batch": max(chunk), "in_flight": count, "contexts": contexts,
            "recompute_transient": rebuilt, "total": contexts + rebuilt}


def strong_scaling(model, node_counts, machine, *, global_batch, micro_batch, zero=3,
                   tp=1, pp=1, **kwargs):
    """Time per step and total TFLOP/s at a fixed global batch for each node count
    (as the seed report's Figure 2): ``dp = nodes / (tp pp)`` and the
    gradient-accumulation sub-steps ``accum = global_batch / (micro_batch dp)``
    shrink as nodes grow.  Returns a list of :func:`plan_step` dicts.
    Raises ValueError when a node count does not divide the batch evenly.
    """
    out = []
    for nodes in node_counts:
        if nodes % (tp * pp):
            raise ValueError(f"nodes={nodes}: expected a multiple of tp*pp={tp * pp}")
        dp = nodes // (tp * pp)
        if global_batch % (micro_batch * dp):
            raise ValueError(f"nodes={nodes}: global batch {global_batch} is not a multiple of "
                             f"micro-batch {micro_batch} x dp {dp}")
        accum = global_batch // (micro_batch * dp)
        source = (f"--global-batch {global_batch} / (--micro-batch {micro_batch} x dp {dp}) "
                  f"at {nodes} nodes")
        out.append(plan_step(Layout(model=model, nodes=nodes, dp=dp, tp=tp, pp=pp, zero=zero,
                                    micro_batch=micro_batch, accum=accum, **kwargs), machine,
                             source))
    return out


def parse_node_counts(text):
    """``"1,2,4,...,1024"`` -> ``[1, 2, 4, ..., 1024]`` (``...`` doubles the last number
    given up to the final one); ``"1,3,5"`` -> ``[1, 3, 5]``.
    Raises ValueError for a non-integer or non-positive entry."""
    parts = [p.strip() for p in text.split(",")]
    tail = []
    if "..." in parts:
        i = parts.index("...")
        parts, tail = parts[:i], parts[i + 1:]
    try:
        counts, last = [int(p) for p in parts], [int(p) for p in tail]
    except ValueError:
        raise ValueError(f"node counts {text!r}: expected integers like 1,2,4,...,1024") from None
    if not counts or min(counts + last) < 1:
        raise ValueError(f"node counts {text!r}: expected positive integers")
    while last and counts[-1] * 2 <= last[-1]:
        counts.append(counts[-1] * 2)
    return counts
