"""run/export.py: timm-compatible safetensors export, the reverse import, and
PyTorch logits from the exported file equal to minivit's (torch is a test-only extra)."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from minivit.checkpoint_state import read_params, save_model
from minivit.config import get_config
from minivit.model import ViT
from minivit.timm_compat import export_safetensors

EXPORT = str(ROOT / "run" / "export.py")
# timm vit_tiny_patch16_224: 5,717,416 parameters in 152 tensors (timm model card)
VIT_TINY_PARAMS, VIT_TINY_TENSORS = 5_717_416, 152


def _export(tmp_path, preset, seed=0, **overrides):
    model = ViT(get_config(preset, **overrides), seed=seed)
    ckpt = save_model(tmp_path / f"{preset}.h5", model, step=7, preset=preset)
    proc = subprocess.run([sys.executable, EXPORT, str(ckpt), "--format", "safetensors"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return model, ckpt, ckpt.with_suffix(".safetensors"), proc.stdout


def test_vit_tiny_export_has_timm_keys_and_shapes(tmp_path):
    from safetensors import safe_open
    model, _, st, out = _export(tmp_path, "vit-tiny")
    assert "vit_tiny_patch16_224 keys" in out
    with safe_open(str(st), "numpy") as f:
        keys = list(f.keys())
        meta = f.metadata()
        shapes = {k: f.get_slice(k).get_shape() for k in keys}
    assert len(keys) == VIT_TINY_TENSORS
    assert sum(int(np.prod(s)) for s in shapes.values()) == VIT_TINY_PARAMS
    assert shapes["cls_token"] == [1, 1, 192] and shapes["pos_embed"] == [1, 197, 192]
    assert shapes["patch_embed.proj.weight"] == [192, 3, 16, 16]
    assert shapes["blocks.11.attn.qkv.weight"] == [576, 192]
    assert shapes["blocks.0.mlp.fc1.weight"] == [768, 192] and shapes["head.weight"] == [1000, 192]
    assert meta["timm_model"] == "vit_tiny_patch16_224" and meta["minivit_step"] == "7"
    assert set(keys) == set(model.flat.offsets)


def test_import_round_trip_is_exact_and_errors_are_clear(tmp_path):
    model, ckpt, st, _ = _export(tmp_path, "vit-nano", seed=3, num_classes=7)
    back = tmp_path / "back.h5"
    proc = subprocess.run([sys.executable, EXPORT, "--import", str(st), "--model", "vit-nano",
                           "--out", str(back)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    original, imported = read_params(ckpt), read_params(back)
    assert list(imported) == list(original)
    assert all(np.array_equal(imported[k], original[k]) for k in original)
    proc = subprocess.run([sys.executable, EXPORT, "--import", str(st), "--model", "vit-micro",
                           "--out", str(tmp_path / "bad.h5")], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 1
    assert "cls_token has shape (1, 1, 32), preset 'vit-micro' expects (1, 1, 128)" in proc.stderr
    assert not (tmp_path / "bad.h5").exists()


@pytest.mark.parametrize("preset, batch, overrides", [
    ("vit-nano", 4, {}), ("vit-nano", 3, {"class_token": False}), ("vit-tiny", 1, {})])
def test_torch_logits_from_exported_file_match(tmp_path, preset, batch, overrides):
    try:
        import torch
        from safetensors.torch import load_file
    except ImportError as exc:   # torch is a test-only extra: pip install torch==2.13.0
        pytest.skip(f"torch cannot be imported ({exc}); install the test extra torch==2.13.0")
    from minivit.tools.torch_vit import TorchViT
    torch.set_num_threads(1)
    model = ViT(get_config(preset, **overrides), seed=1)
    # give LayerNorms, biases and the head non-trivial values so every tensor matters
    rng = np.random.default_rng(0)
    model.flat.data[...] += rng.standard_normal(model.flat.numel).astype(np.float32) * 0.05
    ckpt = save_model(tmp_path / "perturbed.h5", model, step=1, preset=preset)
    st, _ = export_safetensors(ckpt, tmp_path / "w.safetensors")   # the CLI's code path
    reference = TorchViT(model.config).eval()
    reference.load_state_dict(load_file(str(st)), strict=True)   # timm names, strict
    c = model.config
    x = rng.standard_normal((batch, c.in_chans, c.image_size, c.image_size)).astype(np.float32)
    ours, _ = model.forward(x)
    with torch.no_grad():
        theirs = reference(torch.from_numpy(x)).numpy()
    assert theirs.shape == ours.shape == (batch, c.num_classes)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
