"""Exchange weights with timm's ``VisionTransformer`` through safetensors files.

minivit's parameter names and shapes are timm's own (``cls_token`` (1, 1, D),
``pos_embed`` (1, T, D), ``patch_embed.proj.weight`` (D, C, p, p),
``blocks.i.attn.qkv.weight`` (3D, D) with output rows ordered (3, heads,
head_dim), ``blocks.i.mlp.fc1.weight`` (M, D), ``norm.*`` / ``fc_norm.*``,
``head.weight`` (K, D)), so export is a rename-free copy: a file written here
loads with ``model.load_state_dict(safetensors.torch.load_file(f))`` or
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=f))``.
The GELU is the exact (erf) one and LayerNorm eps 1e-6, as timm's ViT.
"""
from pathlib import Path

import numpy as np

from .checkpoint_state import read_params, save_model
from .config import ViTConfig, get_config

# timm model names whose architecture equals a preset (with num_classes=1000)
TIMM_NAMES = {"vit-tiny": "vit_tiny_patch16_224", "vit-small": "vit_small_patch16_224",
              "vit-base": "vit_base_patch16_224", "vit-large": "vit_large_patch16_224",
              "vit-huge": "vit_huge_patch14_224", "vit-giant": "vit_giant_patch14_224"}


def timm_kwargs(config):
    """``timm.models.vision_transformer.VisionTransformer(**kwargs)`` matching ``config``.

    mlp_ratio = mlp_dim / dim; raises ValueError if that ratio is not exact
    in float (timm computes ``int(dim * mlp_ratio)``).
    """
    ratio = config.mlp_dim / config.dim
    if int(config.dim * ratio) != config.mlp_dim:
        raise ValueError(f"mlp_dim={config.mlp_dim}, dim={config.dim}: timm's int(dim * "
                         "mlp_ratio) cannot express this MLP width")
    kwargs = dict(img_size=config.image_size, patch_size=config.patch_size,
                  in_chans=config.in_chans, num_classes=config.num_classes,
                  embed_dim=config.dim, depth=config.depth, num_heads=config.heads,
                  mlp_ratio=ratio, qkv_bias=True)
    if not config.class_token:
        kwargs.update(class_token=False, global_pool="avg")
    return kwargs


def export_safetensors(checkpoint, out, dtype="float32"):
    """Write the parameters of ``checkpoint`` (an .h5 file) to ``out`` (.safetensors).

    dtype : "float32" (timm's default) or "keep" (the checkpoint's dtype).
    Returns ``(out path, metadata dict)``; metadata (strings, stored in the
    file header) names the preset, timm model and VisionTransformer kwargs.
    Raises CheckpointError for a corrupt checkpoint (checksums are verified).
    """
    from safetensors.numpy import save_file

    from .checkpoint import CheckpointReader
    with CheckpointReader(checkpoint) as reader:
        preset, model_config, step = (reader.meta.get("preset"), reader.meta["model_config"],
                                      reader.step)
    params = read_params(checkpoint)
    if dtype != "keep":
        params = {k: v.astype(dtype) for k, v in params.items()}
    config = ViTConfig(**model_config)
    meta = {"format": "pt", "minivit_preset": str(preset), "minivit_step": str(step),
            "timm_model": TIMM_NAMES.get(preset, "VisionTransformer"),
            "timm_kwargs": repr(timm_kwargs(config))}
    save_file({k: np.ascontiguousarray(v) for k, v in params.items()}, str(out), metadata=meta)
    return Path(out), meta


def import_safetensors(path, preset, out, *, num_classes=None, dtype="float32"):
    """Build a minivit checkpoint (step 0, weights only) at ``out`` from a timm state dict.

    num_classes : default from the file's ``head.weight`` rows.
    Raises ValueError naming the first missing or unexpected key, or a shape
    that differs from the preset's (e.g. a vit_small file with ``--model vit-tiny``).
    """
    from safetensors.numpy import load_file

    from .model import ViT
    state = load_file(str(path))
    if num_classes is None:
        if "head.weight" not in state:
            raise ValueError(f"{path}: no head.weight; pass num_classes explicitly")
        num_classes = int(state["head.weight"].shape[0])
    model = ViT(get_config(preset, num_classes=num_classes, dtype=dtype), seed=0)
    offsets = model.flat.offsets
    for name, (_, _, shape) in offsets.items():
        if name not in state:
            raise ValueError(f"{path}: key {name!r} missing (expected timm's "
                             f"{TIMM_NAMES.get(preset, 'VisionTransformer')} keys)")
        if tuple(state[name].shape) != tuple(shape):
            raise ValueError(f"{path}: {name} has shape {tuple(state[name].shape)}, preset "
                             f"{preset!r} expects {tuple(shape)}")
    extra = [k for k in state if k not in offsets]
    if extra:
        raise ValueError(f"{path}: key {extra[0]!r} is not a parameter of preset {preset!r}")
    model.flat.load_state_dict({k: v.astype(dtype) for k, v in state.items()})
    return save_model(out, model, step=0, preset=preset,
                      run_config={"imported_from": str(path)})
