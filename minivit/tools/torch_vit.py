"""A PyTorch ViT with timm's ``VisionTransformer`` module and parameter names,
used as the speed reference of ``run/bench.py train --vs-torch``.

timm itself is not used because its torchvision dependency does not import on
this machine; this file rebuilds the same graph (Dosovitskiy et al., ICLR 2021,
section 3.1: patch embedding conv, class token, position embedding, pre-LN
blocks with fused qkv attention and a GELU MLP, final LN, linear head), so a
``minivit`` state dict loads into it by name (``load_minivit_state``).

PyTorch is never a runtime dependency of minivit: import this module only
behind an ``ImportError`` guard.
"""
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


class Attention(nn.Module):
    """timm ``Attention``: qkv Linear (3D, D) -> SDPA over heads -> proj Linear."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])   # (B, H, T, hd)
        return self.proj(o.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, hidden, eps):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=eps), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=eps), Mlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch, in_chans, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)          # (B, N, D)


class TorchViT(nn.Module):
    """ViT from a ``minivit.config.ViTConfig`` (class token or mean pooling)."""

    def __init__(self, config):
        super().__init__()
        c = config
        self.class_token = c.class_token
        self.patch_embed = PatchEmbed(c.patch_size, c.in_chans, c.dim)
        if c.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.seq_len, c.dim))
        self.blocks = nn.Sequential(*[Block(c.dim, c.heads, c.mlp_dim, c.ln_eps)
                                      for _ in range(c.depth)])
        norm = nn.LayerNorm(c.dim, eps=c.ln_eps)
        if c.class_token:
            self.norm = norm
        else:
            self.fc_norm = norm
        self.head = nn.Linear(c.dim, c.num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x):
        x = self.patch_embed(x)
        if self.class_token:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.blocks(x + self.pos_embed)
        if self.class_token:
            return self.head(self.norm(x)[:, 0])
        return self.head(self.fc_norm(x.mean(dim=1)))


def load_minivit_state(module, state):
    """Copy a minivit ``{name: ndarray}`` state dict into ``module`` by name.

    Raises ValueError when the name sets or any shape differ.
    """
    own = dict(module.named_parameters())
    if set(own) != set(state):
        raise ValueError(f"name mismatch: only in torch {sorted(set(own) - set(state))}, "
                         f"only in minivit {sorted(set(state) - set(own))}")
    with torch.no_grad():
        for name, p in own.items():
            value = torch.from_numpy(np.ascontiguousarray(state[name])).to(p.dtype)
            if tuple(value.shape) != tuple(p.shape):
                raise ValueError(f"{name}: shape {tuple(value.shape)}, expected {tuple(p.shape)}")
            p.copy_(value)


class TorchTrainer:
    """One AdamW training step (forward, cross-entropy, backward, step) of TorchViT.

    x: (B, C, H, W) ndarray, y: (B,) integer ndarray; same dtype as the model.
    autocast: None (the model's dtype throughout) or "bfloat16": forward and
    loss under ``torch.autocast("cpu", dtype=torch.bfloat16)``, PyTorch's mixed
    precision (fp32 master weights, bf16 matmuls on CPUs with bf16 units).
    """

    def __init__(self, config, x, y, state=None, lr=1e-4, weight_decay=0.05, autocast=None):
        dtype = torch.float64 if config.dtype == "float64" else torch.float32
        self.model = TorchViT(config).to(dtype)
        if state is not None:
            load_minivit_state(self.model, state)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        self.x = torch.from_numpy(np.ascontiguousarray(x)).to(dtype)
        self.y = torch.from_numpy(np.asarray(y, dtype=np.int64))
        if autocast not in (None, "bfloat16"):
            raise ValueError(f"autocast={autocast!r}: expected None or 'bfloat16'")
        self.autocast = autocast

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        if self.autocast is None:
            loss = F.cross_entropy(self.model(self.x), self.y)
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        return loss.item()
