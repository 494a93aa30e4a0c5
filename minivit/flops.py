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
