"""Forward semantics against naive, independently written references (loops over
heads, patches and tokens), so the layout matches timm's ViT and not just itself.
Gradient checks only prove backward matches forward; these prove the forward."""
import math
from dataclasses import replace

import numpy as np
from scipy.special import erf

from minivit.attention import MultiHeadAttention
from minivit.config import ViTConfig
from minivit.model import ViT

CFG = ViTConfig(image_size=8, patch_size=4, dim=12, depth=2, heads=3, mlp_dim=10,
                num_classes=4, in_chans=2, dtype="float64")


def naive_layernorm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def naive_attention(x, wqkv, bqkv, wproj, bproj, heads):
    """timm: qkv(x).reshape(B, T, 3, H, hd); head h of q uses q columns h*hd:(h+1)*hd."""
    b, t, d = x.shape
    hd = d // heads
    out = np.zeros((b, t, d))
    for i in range(b):
        qkv = x[i] @ wqkv.T + bqkv
        q, k, v = qkv[:, :d], qkv[:, d:2 * d], qkv[:, 2 * d:]
        for h in range(heads):
            cols = slice(h * hd, (h + 1) * hd)
            s = q[:, cols] @ k[:, cols].T / math.sqrt(hd)
            a = np.exp(s - s.max(1, keepdims=True))
            a /= a.sum(1, keepdims=True)
            out[i, :, cols] = a @ v[:, cols]
    return out @ wproj.T + bproj


def naive_conv_patches(img, weight, bias, p):
    """Conv2d with kernel = stride = p, output tokens in row-major patch order."""
    b, c, hgt, wid = img.shape
    tokens = []
    for gy in range(hgt // p):
        for gx in range(wid // p):
            patch = img[:, :, gy * p:(gy + 1) * p, gx * p:(gx + 1) * p]      # (B, C, p, p)
            tokens.append(np.einsum("bcij,dcij->bd", patch, weight) + bias)
    return np.stack(tokens, axis=1)


def perturbed_model():
    model = ViT(CFG, seed=5)
    # non-trivial LN and bias values so a mix-up of any two parameters shows
    rng = np.random.default_rng(0)
    for p in model.parameters():
        if not p.decay:
            p.data[...] = rng.standard_normal(p.shape) * 0.5 + (1.0 if "norm" in p.name
                                                                 and p.name.endswith("weight") else 0.0)
    return model


def test_attention_matches_per_head_loop():
    attn = MultiHeadAttention("attn", 12, 3, "float64", seed=1)
    attn.qkv.bias.data[...] = np.random.default_rng(2).standard_normal(36)
    x = np.random.default_rng(3).standard_normal((2, 5, 12))
    y, _ = attn.forward(x)
    ref = naive_attention(x, attn.qkv.weight.data, attn.qkv.bias.data, attn.proj.weight.data,
                          attn.proj.bias.data, 3)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-14)


def test_vit_matches_naive_timm_forward():
    model = perturbed_model()
    prm = {p.name: p.data for p in model.parameters()}
    img = np.random.default_rng(4).standard_normal((3, 2, 8, 8))
    x = naive_conv_patches(img, prm["patch_embed.proj.weight"], prm["patch_embed.proj.bias"], 4)
    x = np.concatenate([np.repeat(prm["cls_token"], 3, axis=0), x], axis=1) + prm["pos_embed"]
    for i in range(CFG.depth):
        g = lambda n: prm[f"blocks.{i}.{n}"]          # noqa: E731
        h = naive_layernorm(x, g("norm1.weight"), g("norm1.bias"))
        x = x + naive_attention(h, g("attn.qkv.weight"), g("attn.qkv.bias"),
                                g("attn.proj.weight"), g("attn.proj.bias"), CFG.heads)
        h = naive_layernorm(x, g("norm2.weight"), g("norm2.bias"))
        h = h @ g("mlp.fc1.weight").T + g("mlp.fc1.bias")
        h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
        x = x + h @ g("mlp.fc2.weight").T + g("mlp.fc2.bias")
    x = naive_layernorm(x, prm["norm.weight"], prm["norm.bias"])   # timm: norm all, then pick
    ref = x[:, 0] @ prm["head.weight"].T + prm["head.bias"]
    logits, _ = model.forward(img)
    assert logits.shape == (3, 4)
    np.testing.assert_allclose(logits, ref, rtol=1e-11, atol=1e-12)


def test_float32_model_tracks_float64():
    img = np.random.default_rng(6).standard_normal((2, 2, 8, 8))
    cfg32 = replace(CFG, dtype="float32")
    l64, _ = ViT(CFG, seed=7).forward(img)
    l32, _ = ViT(cfg32, seed=7).forward(img.astype(np.float32))
    assert l32.dtype == np.float32
    np.testing.assert_allclose(l32, l64, rtol=1e-4, atol=1e-5)
