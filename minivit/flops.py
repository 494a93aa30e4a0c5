"""Model FLOPs of the ViT, counted from its matmuls.

A matmul of (M, K) by (K, N) counts 2 * M * N * K FLOPs (one multiply and
one add per term).  Elementwise work (LayerNorm, GELU, softmax, biases) is
left out, as in the model-FLOPs convention of Kaplan et al., "Scaling Laws
for Neural Language Models", 2020, section 2.1, and of Megatron-LM's MFU.
The backward pass costs two matmuls per forward matmul (input gradient and
weight gradient), so one training step is 3x the forward.
"""


def forward_matmul_flops(config, batch):
    """Forward-pass matmul FLOPs for ``batch`` images (an int).

    Per image, with N patches, T tokens, width D, MLP width M, K classes:
      patch embedding 2 N (C p^2) D; per block: qkv 2 T D (3D), scores Q K^T
      2 T T D, weighted sum A V 2 T T D, output projection 2 T D D, MLP 2 T D M
      twice; head 2 D K.
    """
    if batch < 0:
        raise ValueError(f"batch={batch}: expected a non-negative integer")
    c = config
    n, t, d, m = c.num_patches, c.seq_len, c.dim, c.mlp_dim
    embed = 2 * n * c.patch_dim * d
    block = (2 * t * d * 3 * d      # qkv projection
             + 2 * t * t * d        # Q K^T over all heads
             + 2 * t * t * d        # A V over all heads
             + 2 * t * d * d        # output projection
             + 2 * 2 * t * d * m)   # fc1 and fc2
    head = 2 * d * c.num_classes
    return batch * (embed + c.depth * block + head)


def train_flops(config, batch):
    """Training-step model FLOPs: 3x the forward matmul FLOPs."""
    return 3 * forward_matmul_flops(config, batch)


def linear_gemms(config, batch):
    """The Linear-layer GEMMs of one forward pass: a list of ``(name, M, K, N, count)``.

    Each is ``(M, K) @ (K, N)`` (rows x in_features -> out_features), ``count``
    times per forward: per block (``count = depth``) ``qkv`` (B T, D, 3D),
    ``proj`` (B T, D, D), ``fc1`` (B T, D, M), ``fc2`` (B T, M, D); once the
    patch embedding ``embed`` (B N, C p^2, D) and the classifier ``head``
    (B, D, K).  The backward runs two GEMMs of the same FLOPs per forward GEMM
    (``dX = dY W``, ``dW = dY^T X``).
    """
    c = config
    rows = batch * c.seq_len
    return [("embed", batch * c.num_patches, c.patch_dim, c.dim, 1),
            ("qkv", rows, c.dim, 3 * c.dim, c.depth),
            ("proj", rows, c.dim, c.dim, c.depth),
            ("fc1", rows, c.dim, c.mlp_dim, c.depth),
            ("fc2", rows, c.mlp_dim, c.dim, c.depth),
            ("head", batch, c.dim, c.num_classes, 1)]


def step_work(config, batch):
    """Closed-form work per training step (forward + backward) of each operator class.

    Returns ``{class: (amount, unit)}`` for the classes of
    ``minivit.tools.profiler`` where a count makes sense:
    - ``matmul``: FLOPs of the block and head Linears, 3 x 2 M K N each (forward,
      ``dX``, ``dW``; :func:`linear_gemms`);
    - ``embed``: FLOPs of the patch-embedding GEMM, 3 x 2 (B N)(C p^2) D;
    - ``attention``: FLOPs of the core's GEMMs, forward Q K^T and P V
      (2 x 2 T^2 hd per head), backward dV, dP, dQ, dK (4 x 2 T^2 hd):
      12 B H T^2 hd = 12 B T^2 D per block;
    - ``layernorm`` and ``gelu``: bytes of the kernels' inputs and outputs, each
      array once (the least memory traffic, since these kernels are bound by it):
      LayerNorm on (R, D), itemsize s, float64 mean/rstd: forward 2 R D s + 2 D s
      + 16 R, backward 3 R D s + 3 D s + 16 R (dy, x, dx; w, dw, db), 2 per block
      with R = B T and one in the head with R = B; GELU on (B T, M): forward
      2 B T M s, backward 3 B T M s.
    The FLOPs of ``matmul``, ``embed`` and ``attention`` add up to
    :func:`train_flops`.  Raises ValueError for a negative batch.
    """
    if batch < 0:
        raise ValueError(f"batch={batch}: expected a non-negative integer")
    import numpy as np

    c = config
    s = np.dtype(c.dtype).itemsize
    gemms = {name: 3 * 2 * m * k * n * count for name, m, k, n, count in linear_gemms(c, batch)}
    t, d, rows = c.seq_len, c.dim, batch * c.seq_len

    def ln_bytes(r):
        return 5 * r * d * s + 5 * d * s + 32 * r

    return {"matmul": (sum(v for k, v in gemms.items() if k != "embed"), "FLOP"),
            "embed": (gemms["embed"], "FLOP"),
            "attention": (c.depth * 12 * batch * t * t * d, "FLOP"),
            "layernorm": (2 * c.depth * ln_bytes(rows) + ln_bytes(batch), "B"),
            "gelu": (c.depth * 5 * rows * c.mlp_dim * s, "B")}


def measure_gemm_peak(n=512, dtype="float32", repeats=5, warmup=1):
    """Measured BLAS GEMM throughput of this process, in FLOP/s (a float).

    Times ``repeats`` products of two ``(n, n)`` matrices of ``dtype`` (after
    ``warmup`` untimed ones) and returns ``2 n^3 / best time``: the best of
    the repeats, so a moment of contention on a shared machine does not lower
    it.  It runs with whatever BLAS thread limit is active.  This is the
    denominator of MFU (model FLOPs utilisation, Chowdhery et al., "PaLM",
    2022, appendix B) on hardware without a datasheet peak.
    Raises ValueError for n < 1 or repeats < 1.
    """
    import time

    import numpy as np

    if n < 1 or repeats < 1:
        raise ValueError(f"n={n}, repeats={repeats}: expected positive integers")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype=dtype)
    for _ in range(warmup):
        np.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best
