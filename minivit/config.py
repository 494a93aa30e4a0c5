"""Model configuration: the ``ViTConfig`` dataclass and the named presets.

The presets follow DESIGN.md section 2.  ``vit-tiny/small/base`` have the
shapes of timm's ``vit_{tiny,small,base}_patch16_224`` (Dosovitskiy et al.,
"An Image is Worth 16x16 Words", ICLR 2021, Table 1; DeiT for tiny/small), so
their parameter counts equal timm's.  The very large presets (issue 15) are
``vit-large`` (ViT-L/16, Dosovitskiy et al. Table 1; timm
``vit_large_patch16_224``, 304,326,632 parameters), ``vit-huge`` (ViT-H/14;
timm ``vit_huge_patch14_224`` with 1000 classes, 632,045,800) and
``vit-giant`` (ViT-g/14 of Zhai et al. 2022, "Scaling Vision Transformers",
Table 2: width 1408, depth 40, MLP 6144, 16 heads; timm
``vit_giant_patch14_224``, 1,012,611,432).
"""
from dataclasses import dataclass, replace

_DTYPES = ("float32", "float64")


@dataclass(frozen=True, kw_only=True)
class ViTConfig:
    """Shape and numeric settings of a Vision Transformer.

    image_size, patch_size: pixels; the image is square and split into
        ``(image_size // patch_size) ** 2`` patches (the sequence length N).
    in_chans: image channels C.
    dim: embedding width D.  depth: number of blocks L.  heads: attention heads H
        (head width D // H).  mlp_dim: hidden width M of the MLP.
    num_classes: classifier outputs K.
    dtype: "float32" for training, "float64" for exactness tests.
    ln_eps: LayerNorm epsilon (timm uses 1e-6 for ViT).
    class_token: prepend a learned class token (T = N + 1) and classify from it;
        without it the head averages the N patch tokens (timm ``global_pool="avg"``).

    Raises ValueError (naming the value) on inconsistent shapes.
    """
    image_size: int
    patch_size: int
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    num_classes: int
    in_chans: int = 3
    dtype: str = "float32"
    ln_eps: float = 1e-6
    class_token: bool = True

    def __post_init__(self):
        for field in ("image_size", "patch_size", "dim", "depth", "heads",
                      "mlp_dim", "num_classes", "in_chans"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field}={value!r}: expected a positive integer")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not divisible by "
                f"patch_size={self.patch_size}: expected a multiple of the patch size")
        if self.dim % self.heads:
            raise ValueError(
                f"dim={self.dim} is not divisible by heads={self.heads}: "
                "expected dim to be a multiple of the number of heads")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: expected one of {_DTYPES}")
        if not self.ln_eps > 0:
            raise ValueError(f"ln_eps={self.ln_eps!r}: expected a positive float")

    @property
    def num_patches(self):
        """N, the number of patches per image."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def seq_len(self):
        """T, tokens per image (N + 1 with a class token)."""
        return self.num_patches + (1 if self.class_token else 0)

    @property
    def head_dim(self):
        return self.dim // self.heads

    @property
    def patch_dim(self):
        """C * p * p, the length of one flattened patch."""
        return self.in_chans * self.patch_size ** 2


PRESETS = {
    "vit-nano": ViTConfig(image_size=16, patch_size=4, dim=32, depth=4, heads=4,
                          mlp_dim=64, num_classes=10),
    "vit-micro": ViTConfig(image_size=32, patch_size=4, dim=128, depth=6, heads=4,
                           mlp_dim=512, num_classes=10),
    "vit-tiny": ViTConfig(image_size=224, patch_size=16, dim=192, depth=12, heads=3,
                          mlp_dim=768, num_classes=1000),
    "vit-small": ViTConfig(image_size=224, patch_size=16, dim=384, depth=12, heads=6,
                           mlp_dim=1536, num_classes=1000),
    "vit-base": ViTConfig(image_size=224, patch_size=16, dim=768, depth=12, heads=12,
                          mlp_dim=3072, num_classes=1000),
    "vit-large": ViTConfig(image_size=224, patch_size=16, dim=1024, depth=24, heads=16,
                           mlp_dim=4096, num_classes=1000),
    "vit-huge": ViTConfig(image_size=224, patch_size=14, dim=1280, depth=32, heads=16,
                          mlp_dim=5120, num_classes=1000),
    "vit-giant": ViTConfig(image_size=224, patch_size=14, dim=1408, depth=40, heads=16,
                           mlp_dim=6144, num_classes=1000),
}


def get_config(name, **overrides):
    """The preset ``name`` with ``overrides`` applied (e.g. ``num_classes=10``).

    Raises ValueError for an unknown preset (listing the known ones) or an
    invalid override (via ViTConfig validation); TypeError for an unknown field.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: expected one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
