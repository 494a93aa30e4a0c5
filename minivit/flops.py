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
