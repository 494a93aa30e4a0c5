"""Closed-form communication volumes and memory per rank.

Source: Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training
Trillion Parameter Models", section 5 (memory, Figure 1) and section 7
(communication analysis).  TP volumes: Shoeybi et al. 2019 (Megatron-LM),
section 3; PP: Narayanan et al. 2021, section 2.2.

Accounting of "bytes sent per rank" (used by ``comm.Communicator`` for the
ledger and by every prediction below, so the two agree exactly).  The model is
the bandwidth-optimal ring algorithm for a group of ``p`` ranks on a buffer of
``n`` elements, cut into ``p`` chunks of ``ceil(n / p)`` elements (the last
chunk padded; exact when p divides n, as it does for every ZeRO buffer):

========================  =====================================
all-reduce                ``2 (p-1) ceil(n/p) * itemsize``
reduce-scatter            ``(p-1) * block * itemsize``  (n = p * block)
all-gather                ``(p-1) * block * itemsize``  (n = p * block)
broadcast                 ``(p-1) ceil(n/p) * itemsize`` (pipelined chain, per-rank mean)
send                      ``n * itemsize`` on the sender, 0 on the receiver
any collective, p == 1    0 (nothing leaves the rank)
========================  =====================================

Memory: fp32 mixed-precision-free AdamW keeps 4 bytes of parameter, 4 of
gradient and 8 of optimizer state (exp_avg, exp_avg_sq) per parameter: 16 Psi.
(The paper's K=12 counts fp16 weights plus an fp32 master copy; this project
trains in fp32, so the master copy is the parameter itself.)
"""
from math import ceil


# ---------------------------------------------------------------- per operation
def allreduce_bytes(n, p, itemsize):
    """Bytes one rank sends in a ring all-reduce of ``n`` elements over ``p`` ranks."""
    return 0 if p == 1 else 2 * (p - 1) * ceil(n / p) * itemsize


def reduce_scatter_bytes(block, p, itemsize):
    """Bytes one rank sends reducing ``p * block`` elements to a ``block`` per rank."""
    return 0 if p == 1 else (p - 1) * block * itemsize


def allgather_bytes(block, p, itemsize):
    """Bytes one rank sends gathering ``block`` elements from each of ``p`` ranks."""
    return 0 if p == 1 else (p - 1) * block * itemsize


def broadcast_bytes(n, p, itemsize):
    """Mean bytes per rank of a pipelined broadcast of ``n`` elements."""
    return 0 if p == 1 else (p - 1) * ceil(n / p) * itemsize


# ------------------------------------------------------------ closed forms (ZeRO s.7)
def dp_comm_elements(psi, p):
    """Elements sent per rank per step by data parallel: ``2 (p-1)/p * Psi``.

    An all-reduce is a reduce-scatter plus an all-gather, each (p-1)/p Psi
    (ZeRO section 7.1).
    """
    return 2 * (p - 1) / p * psi


def zero_comm_elements(psi, p, stage, accum=1):
    """Elements sent per rank per optimizer step, closed form of ZeRO section 7.

    stage 0 (plain DP) and 2: ``2 (p-1)/p Psi``.  Stage 1 *as built here*
    (all-reduce of the full gradient, then all-gather of the updated
    parameters, issue 5) is ``3 (p-1)/p Psi``; the paper's stage-1 variant that
    reduce-scatters instead is the stage-2 figure.  Stage 3 (section 7.2.2):
    parameters all-gathered for the forward and again for the backward, plus a
    gradient reduce-scatter: ``3 (p-1)/p Psi``.

    accum : micro-batches per step.  Stages 0-1 synchronise once per step; the
    sharded stages move their per-micro-batch terms every micro-batch
    (stage 2: ``(accum + 1) (p-1)/p Psi``, stage 3: ``3 accum (p-1)/p Psi``).
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"stage={stage!r}: expected 0, 1, 2 or 3")
    factor = {0: 2, 1: 3, 2: accum + 1, 3: 3 * accum}[stage]
    return factor * (p - 1) / p * psi


def zero_memory_bytes(psi, p, stage, itemsize=4):
    """Model-state bytes per rank for AdamW (ZeRO section 5.1 / Figure 1).

    ``k = 4 * itemsize / 4`` bytes per parameter for each of parameter and
    gradient and twice that for the optimizer state (16 bytes at fp32):
    stage 0: 16 Psi; 1: 8 Psi + 8 Psi/p; 2: 4 Psi + 12 Psi/p; 3: 16 Psi/p.
    Returns a dict with ``params``, ``grads``, ``optim`` and ``total`` bytes.
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"stage={stage!r}: expected 0, 1, 2 or 3")
    full, shard = psi * itemsize, psi * itemsize / p
    params = shard if stage == 3 else full
    grads = shard if stage >= 2 else full
    optim = 2 * (shard if stage >= 1 else full)
    return {"params": params, "grads": grads, "optim": optim,
            "total": params + grads + optim}


def decay_mask_bytes(full, shard, stage):
    """Bytes per rank of the weight-decay mask (this code's array, not ZeRO's).

    ``FlatParams.decay_mask`` is numpy bool, 1 byte per parameter whatever the
    model dtype.  Stages 0-2 keep the full mask (``full`` elements), ZeRO 1-3
    keep their shard of it (``shard`` elements: ``Psi / p``, or with per-unit
    padding ``sum(ceil(n_u / p))``), and stage 3 drops the full one.
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"stage={stage!r}: expected 0, 1, 2 or 3")
    return (0 if stage == 3 else full) + (shard if stage >= 1 else 0)


# ------------------------------------------------------- padding-exact (the audit)
def unit_blocks(unit_sizes, p):
    """Per-rank block ``ceil(n_u / p)`` of each unit: ZeRO pads each unit to p blocks."""
    return [ceil(n / p) for n in unit_sizes]


def bucket_sizes(total, bucket_elems):
    """Sizes of the consecutive buckets covering ``total`` elements."""
    if bucket_elems < 1:
        raise ValueError(f"bucket_elems={bucket_elems!r}: expected a positive integer")
    return [min(bucket_elems, total - start) for start in range(0, total, bucket_elems)]


def step_comm_bytes(unit_sizes, p, stage, itemsize, *, accum=1,
                    bucket_elems=None, clip=False):
    """Exact bytes one dp rank sends in one optimizer step of this code base.

    unit_sizes : parameter count of each unit (embed, blocks..., head), in the
        order of the flat buffer.
    stage : 0 = DP all-reduce in buckets of ``bucket_elems`` (default: one bucket);
        1 = the stage-0 bucketed all-reduce of the grads + all-gather of the
            updated parameters, per unit (padded);
        2 = per micro-batch reduce-scatter + all-gather, per unit;
        3 = per micro-batch forward and backward all-gathers + reduce-scatter.
    clip : measuring the global gradient norm (for clipping or the log) adds
        one all-reduce of a float64 sum of squares for stages 2 and 3, where
        each rank holds only its gradient shard
        (stages 0 and 1 hold the full averaged gradient, so the norm is local).

    Returns a dict ``{op: bytes}`` with keys among ``allreduce``,
    ``reduce_scatter`` and ``allgather``.
    """
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"stage={stage!r}: expected 0, 1, 2 or 3")
    total = sum(unit_sizes)
    blocks = unit_blocks(unit_sizes, p)
    gather = sum(allgather_bytes(b, p, itemsize) for b in blocks)
    scatter = sum(reduce_scatter_bytes(b, p, itemsize) for b in blocks)
    out = {}
    if stage in (0, 1):
        sizes = bucket_sizes(total, bucket_elems or total)
        out["allreduce"] = sum(allreduce_bytes(n, p, itemsize) for n in sizes)
    if stage == 1:
        out["allgather"] = gather
    if stage == 2:
        out["reduce_scatter"] = accum * scatter
        out["allgather"] = gather
    if stage == 3:
        out["reduce_scatter"] = accum * scatter
        out["allgather"] = 2 * accum * gather
    if clip and stage >= 2:
        out["allreduce"] = out.get("allreduce", 0) + allreduce_bytes(1, p, 8)
    return out


def padded_memory_bytes(unit_sizes, p, stage, itemsize):
    """Exact persistent model-state bytes per rank with per-unit padding.

    Like :func:`zero_memory_bytes` but each sharded quantity holds
    ``sum(ceil(n_u / p))`` elements.  Stage 3 also holds one gathered unit
    (the largest) while it computes; that transient buffer is reported apart
    as ``gather_buffer``.
    """
    total = sum(unit_sizes)
    shard = sum(unit_blocks(unit_sizes, p))
    full_b, shard_b = total * itemsize, shard * itemsize
    params = shard_b if stage == 3 else full_b
    grads = shard_b if stage >= 2 else full_b
    optim = 2 * (shard_b if stage >= 1 else full_b)
    out = {"params": params, "grads": grads, "optim": optim,
           "total": params + grads + optim}
    if stage == 3:
        out["gather_buffer"] = 2 * max(unit_blocks(unit_sizes, p)) * p * itemsize
    return out


# ----------------------------------------------------- TP / PP (Parallelism II)
def tp_comm_elements(b, s, h, layers, micro_batches=1):
    """Elements all-reduced per step by Megatron tensor parallelism.

    Shoeybi et al. 2019 section 3: per layer and micro-batch, 2 all-reduces of
    ``b*s*h`` in the forward (after attention and after the MLP) and 2 in the
    backward (their conjugates): 4 b s h per layer per micro-batch.
    """
    return 4 * b * s * h * layers * micro_batches


def pp_comm_elements(b, s, h, boundaries, micro_batches=1):
    """Elements sent per step across pipeline boundaries: ``b*s*h`` each way
    (activation forward, its gradient backward) per boundary per micro-batch."""
    return 2 * b * s * h * boundaries * micro_batches


# ------------------------------------------------------- parameter count
def vit_unit_sizes(cfg):
    """Parameter count of each unit ``[embed, block x depth, head]`` of a ViT config.

    embed: patch projection (P*D + D), class token (D, if any), position
    embedding (T*D).  block: 2 LayerNorms (4D), qkv (3D*D + 3D), proj (D*D + D),
    fc1 (D*M + M), fc2 (M*D + D).  head: final LayerNorm (2D) + linear (D*K + K).
    vit-base gives 86,567,656, timm's count for ``vit_base_patch16_224``.
    """
    d, m = cfg.dim, cfg.mlp_dim
    cls = d if getattr(cfg, "class_token", True) else 0
    embed = cfg.patch_dim * d + d + cls + cfg.seq_len * d
    block = 4 * d + 3 * d * d + 3 * d + d * d + d + d * m + m + m * d + d
    head = 2 * d + d * cfg.num_classes + cfg.num_classes
    return [embed] + [block] * cfg.depth + [head]


def vit_param_specs(config):
    """``[[(name, full_shape), ...] per unit]`` of the serial ViT, units
    ``[embed, blocks..., head]`` in flat-buffer order, without building it."""
    c = config
    d, m, p = c.dim, c.mlp_dim, c.patch_size
    embed = ([("cls_token", (1, 1, d))] if c.class_token else []) + [
        ("pos_embed", (1, c.seq_len, d)), ("patch_embed.proj.weight", (d, c.in_chans, p, p)),
        ("patch_embed.proj.bias", (d,))]
    units = [embed]
    for i in range(c.depth):
        b = f"blocks.{i}"
        units.append([(f"{b}.norm1.weight", (d,)), (f"{b}.norm1.bias", (d,)),
                      (f"{b}.attn.qkv.weight", (3 * d, d)), (f"{b}.attn.qkv.bias", (3 * d,)),
                      (f"{b}.attn.proj.weight", (d, d)), (f"{b}.attn.proj.bias", (d,)),
                      (f"{b}.norm2.weight", (d,)), (f"{b}.norm2.bias", (d,)),
                      (f"{b}.mlp.fc1.weight", (m, d)), (f"{b}.mlp.fc1.bias", (m,)),
                      (f"{b}.mlp.fc2.weight", (d, m)), (f"{b}.mlp.fc2.bias", (d,))])
    norm = "norm" if c.class_token else "fc_norm"
    units.append([(f"{norm}.weight", (d,)), (f"{norm}.bias", (d,)),
                  ("head.weight", (c.num_classes, d)), ("head.bias", (c.num_classes,))])
    return units


# ------------------------------------------- TP / PP, exact bytes of this code base
def tp_step_bytes(b, s, h, layers, micro_batches, tp, itemsize, recompute=False):
    """Bytes one tp rank sends per step in the blocks' all-reduces (Megatron section 3).

    Per block and micro-batch: ``g`` after attention and after the MLP in the
    forward, ``f`` before qkv and fc1 in the backward, each an all-reduce of
    ``b*s*h`` elements; full recompute runs the forward (2 more) again in backward;
    selective recompute (``recompute="selective"``) rebuilds only the head-local core
    and adds none.  layers : blocks on this rank's stage.  Returns 0 for tp == 1.
    """
    count = (6 if recompute_mode(recompute) == "full" else 4) * layers * micro_batches
    return count * allreduce_bytes(b * s * h, tp, itemsize)


def sp_step_bytes(b, s, h, layers, micro_batches, tp, itemsize, *, recompute=False,
                  first=False, last=False):
    """``{op: bytes}`` one tp rank sends per step under sequence parallelism
    (Korthikanti et al. 2022, section 4.2.2; ``sequence_parallel.py``).

    Each of TP's 4 all-reduces of ``(b, s, h)`` per block and micro-batch becomes an
    all-gather plus a reduce-scatter of ``(b, s_loc, h)`` blocks, ``s_loc = ceil(s/t)``:
    ``2 (t-1) b s_loc h`` elements, TP's ``2 (t-1)/t b s h`` exactly when t divides s
    (the padding's ``t s_loc - s`` tokens travel too otherwise).  ``g`` all-gathers in
    the forward (qkv, fc1) and reduce-scatters in the backward; ``g-bar`` the other
    way round (proj, fc2): 4 of each per block and micro-batch, 6 with full recompute
    (selective adds none).
    The region's ends add one all-gather per micro-batch each: the embedding's
    backward (first stage) and the head's forward (last stage).  ``allreduce``: the
    LayerNorm gradients, 2 all-reduces of ``2h`` per block and micro-batch (the
    Megatron #1446 reduction).  All zeros for tp == 1.
    """
    if tp == 1:
        return {"allgather": 0, "reduce_scatter": 0, "allreduce": 0}
    one = allgather_bytes(b * (-(-s // tp)) * h, tp, itemsize)   # = reduce_scatter_bytes
    per_block = (6 if recompute_mode(recompute) == "full" else 4) * layers
    ends = int(bool(first)) + int(bool(last))
    return {"allgather": (per_block + ends) * micro_batches * one,
            "reduce_scatter": per_block * micro_batches * one,
            "allreduce": 2 * layers * micro_batches * allreduce_bytes(2 * h, tp, itemsize)}


def pp_step_bytes(b, s, h, micro_batches, itemsize, has_prev, has_next, virtual_stages=1):
    """Bytes one pipeline stage sends per step: the ``(b, s, h)`` activation to the
    next stage and its gradient to the previous one, per micro-batch (Narayanan
    et al. 2021, section 2.2).  Interleaved (``virtual_stages = v``, section
    2.2.2) every chunk sends both, except the model's first chunk (no gradient
    to send back) and its last (no activation to send on): ``v`` times the
    messages of 1F1B on a middle stage (:func:`pp_step_messages`)."""
    return pp_step_messages(micro_batches, has_prev, has_next, virtual_stages) * b * s * h \
        * itemsize


def pp_step_messages(micro_batches, has_prev, has_next, virtual_stages=1):
    """Point-to-point sends of one pipeline stage per step: ``(2 v - [first stage] -
    [last stage]) m`` (1F1B, v = 1: ``m`` per neighbour)."""
    return (2 * virtual_stages - int(not has_prev) - int(not has_next)) * micro_batches


# --------------------------------------- activation memory (issue 15: the contexts)
# Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
# Models" (arXiv 2205.05198), section 4, counts the bytes a transformer layer
# keeps for its backward (34 s b h + 5 a s^2 b at 16-bit, with dropout masks).
# The same count here is derived from this code's own contexts (``ctx``), which
# ``recompute.ctx_nbytes`` measures: s = itemsize of the model dtype, B images,
# T = seq_len tokens, D = dim, M = mlp_dim, H = heads, K = classes,
# N = patches, P = C p^2.  LayerNorm keeps its mean and 1/std in float64
# (``kernels.layernorm_forward``), whatever the model dtype.
_LN_STATS = 2 * 8        # bytes per row: mean and rstd, float64
_LSE = 8                 # bytes per attention row: the selective core's log-sum-exp, float64
RECOMPUTE_MODES = ("full", "selective")


def recompute_mode(recompute):
    """The recompute granularity named by ``recompute``: None (keep every context),
    ``"full"`` (keep only each block's input: ``True`` or ``"full"``) or
    ``"selective"`` (the attention core keeps its row log-sum-exp instead of P).

    ``False`` and None mean none.  Raises ValueError for anything else.
    """
    if recompute is None or recompute is False:
        return None
    if recompute is True:
        return "full"
    if recompute in RECOMPUTE_MODES:
        return recompute
    raise ValueError(f"recompute={recompute!r}: expected False, True or one of "
                     f"{RECOMPUTE_MODES}")


def block_ctx_bytes(cfg, b, itemsize, *, tp=1, recompute=False, sequence_parallel=False):
    """Bytes of the context one transformer block keeps for one micro-batch of ``b`` images.

    Without recompute (``minivit.model.Block``, or ``TensorParallelBlock`` with
    heads and MLP split over ``tp``), the block keeps, per micro-batch:

    ========================  ===================  ==========================
    tensor                    shape                kept by
    ========================  ===================  ==========================
    block input x             (B T, D)             norm1 (its x2d)
    norm1 output              (B T, D)             qkv Linear
    qkv output                (B, T, 3, H/tp, hd)  attention core
    attention probabilities   (B, H/tp, T, T)      attention core
    attention output o        (B T, D/tp)          proj Linear
    x + attn (residual 1)     (B T, D)             norm2
    norm2 output              (B T, D)             fc1 Linear
    fc1 output                (B T, M/tp)          GELU
    GELU output               (B T, M/tp)          fc2 Linear
    2 x (mean, rstd)          2 x 2 x (B T,) f64   norm1, norm2
    ========================  ===================  ==========================

    ``s B T (4 D + (4 D + 2 M + H T) / tp) + 32 B T`` bytes; for ViT's M = 4 D
    and tp = 1 that is ``s B T (16 D + H T) + 32 B T`` (Korthikanti's
    ``34 s b h + 5 a s^2 b`` at 2-byte activations keeps Q, K, V apart, the
    softmax input and output and dropout masks; this code keeps qkv once, only
    the probabilities, and has no dropout).
    ``recompute`` is a :func:`recompute_mode` value.  Full (True or ``"full"``,
    ``recompute.Recompute``): the block keeps only its input, ``s B T D``.
    Selective (``"selective"``, ``minivit.kernels_attention_lse``; Korthikanti
    et al. section 4.2): the attention core keeps the row log-sum-exp
    (B, H/tp, T) in float64 instead of P, so ``s B (H/tp) T^2`` becomes
    ``8 B (H/tp) T``: ``s B T (4 D + (4 D + 2 M) / tp) + 8 B T H / tp + 32 B T``.
    Raises ValueError unless heads and mlp_dim divide by tp.

    With ``sequence_parallel`` (``sequence_parallel.SequenceParallelBlock``) the LN
    region's tensors hold ``T_loc = ceil(T/t)`` tokens: the block input, residual 1
    and the LN statistics; the all-gathered LN outputs that qkv and fc1 keep stay
    (B T, D) (Megatron instead keeps them sharded and all-gathers again in the
    backward, one more all-gather per linear):
    ``s B (2 T_loc D + T (2 D + (4 D + 2 M + H T) / tp)) + 32 B T_loc``;
    with full recompute ``s B T_loc D``; selective swaps the same P term for L.
    """
    mode = recompute_mode(recompute)
    if cfg.heads % tp or cfg.mlp_dim % tp:
        raise ValueError(f"tp={tp}: expected a divisor of heads={cfg.heads} and "
                         f"mlp_dim={cfg.mlp_dim}")
    rows, d, m, t = b * cfg.seq_len, cfg.dim, cfg.mlp_dim, cfg.seq_len
    ln_rows = b * -(-t // tp) if sequence_parallel else rows    # the LN region's tokens
    if mode == "full":
        return itemsize * ln_rows * d
    local_heads = cfg.heads // tp
    elems = 2 * ln_rows * d + rows * (2 * d + (4 * d + 2 * m) // tp)
    if mode == "selective":
        core = _LSE * rows * local_heads                 # L: (B, H/tp, T) float64
    else:
        core = itemsize * rows * local_heads * t         # P: (B, H/tp, T, T)
    return itemsize * elems + core + 2 * _LN_STATS * ln_rows


def embed_ctx_bytes(cfg, b, itemsize):
    """Bytes the patch embedding keeps: the patchified images (B N, C p^2) (``Embed.forward``)."""
    return itemsize * b * cfg.num_patches * cfg.patch_dim


def head_ctx_bytes(cfg, b, itemsize, loss=True):
    """Bytes the head keeps: the pooled token (B, D), its LayerNorm output (B, D)
    and float64 (mean, rstd) (``Head.forward``); with ``loss``, also the
    cross-entropy's probabilities (B, K) and int64 labels (``loss.cross_entropy_forward``).

    At B = 1 with a class token, ``np.ascontiguousarray(x[:, 0])`` is already
    contiguous, so it is a view and the context keeps the whole (1, T, D) input
    alive: ``s T D`` instead of ``s D`` for the pooled token."""
    pooled = b * cfg.dim if (b > 1 or not cfg.class_token) else cfg.seq_len * cfg.dim
    out = itemsize * (pooled + b * cfg.dim) + _LN_STATS * b
    if loss:
        out += itemsize * b * cfg.num_classes + 8 * b
    return out


def stage_activation_bytes(cfg, b, itemsize, *, blocks, first=True, last=True, tp=1,
                           recompute=False, loss=True, sequence_parallel=False):
    """Context bytes of one micro-batch on one pipeline stage (or the whole model).

    blocks : transformer blocks on the stage; first / last : the stage holds the
    embedding / the head (and, with ``loss``, the loss context, as
    ``pipeline.Pipeline`` keeps it).  The serial model is ``first = last = True``,
    ``blocks = depth``.  Equal to ``sum(ctx_nbytes(ctx))`` of the stage's units.
    """
    out = blocks * block_ctx_bytes(cfg, b, itemsize, tp=tp, recompute=recompute,
                                   sequence_parallel=sequence_parallel)
    if first:
        out += embed_ctx_bytes(cfg, b, itemsize)
    if last:
        out += head_ctx_bytes(cfg, b, itemsize, loss=loss)
    return out


def micro_batches_in_flight(schedule, m, pp, stage, virtual_stages=1):
    """Micro-batch contexts alive at once on ``stage`` at the peak of a step.

    GPipe (Huang et al. 2019): all ``m`` forwards run before any backward.
    1F1B (Narayanan et al. 2021, section 2.2.1): ``pp - stage - 1`` warm-up
    forwards plus the one of the first steady-state pair, ``min(pp - stage, m)``.
    ZB-H1 (Qi et al. 2024, section 3.1): a micro-batch stays from its F to its W,
    which lags F by ``pp - 1`` on every stage: ``min(pp, m)`` (part of it only
    the weight halves' arrays once its B has run).
    Interleaved 1F1B (section 2.2.2, Megatron's order, ``pipeline.interleaved_order``)
    counts (micro-batch, chunk) contexts, each about ``1/v`` of a stage's: its
    warm-up of ``2 (pp - stage - 1) + (v - 1) pp`` forwards plus one,
    ``min(2 (pp - stage - 1) + (v - 1) pp + 1, m v)``; on stage 0 that is
    ``v pp + pp - 1`` chunk contexts, ``pp (1 + (pp - 1) / (pp v))`` stages' worth,
    against 1F1B's ``pp``.
    Without a pipeline (pp = 1) micro-batches run one after another: 1.
    Raises ValueError for an unknown schedule.
    """
    if schedule not in ("gpipe", "1f1b", "zb-h1", "interleaved"):
        raise ValueError(f"schedule={schedule!r}: expected 'gpipe', '1f1b', 'zb-h1' or "
                         "'interleaved'")
    if pp == 1:
        return 1
    if schedule == "interleaved":
        v = virtual_stages
        return min(2 * (pp - stage - 1) + (v - 1) * pp + 1, m * v)
    if schedule == "zb-h1":
        return min(pp, m)
    return m if schedule == "gpipe" else min(pp - stage, m)


def peak_activation_bytes(cfg, b, itemsize, *, m=1, pp=1, stage=0, blocks=None, tp=1,
                          recompute=False, schedule="1f1b", sequence_parallel=False):
    """Peak context bytes on a stage: in-flight micro-batches x one micro-batch's contexts,
    plus, with full recompute, the one block context rebuilt at a time in the backward
    (the selective core rebuilds one (batch, head) pair's P per thread in scratch: not
    a context, not counted).

    blocks : blocks on this stage (default ``depth / pp``, the even split).
    Returns a dict: ``per_micro_batch``, ``in_flight``, ``contexts``
    (``in_flight * per_micro_batch``), ``recompute_transient`` and ``total``.
    """
    blocks = cfg.depth // pp if blocks is None else blocks
    per = stage_activation_bytes(cfg, b, itemsize, blocks=blocks, first=stage == 0,
                                 last=stage == pp - 1, tp=tp, recompute=recompute,
                                 sequence_parallel=sequence_parallel)
    n = micro_batches_in_flight(schedule, m, pp, stage)
    rebuilt = (block_ctx_bytes(cfg, b, itemsize, tp=tp, sequence_parallel=sequence_parallel)
               if recompute_mode(recompute) == "full" else 0)
    return {"per_micro_batch": per, "in_flight": n, "contexts": n * per,
            "recompute_transient": rebuilt, "total": n * per + rebuilt}
