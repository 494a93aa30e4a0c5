"""Presets and parameter counts, timm names, deterministic init, flat buffers, bad input."""
import numpy as np
import pytest

from minivit.config import PRESETS, ViTConfig, get_config
from minivit.loss import cross_entropy_forward
from minivit.model import ViT
from minivit.params import FlatParams, Parameter, init_shard, init_tensor

# timm.create_model(name, num_classes=1000) parameter counts; the last three were
# read from timm 1.0.31 by tests/support/timm_counts.py (test_counts_equal_timm_itself
# below re-reads them whenever timm is installed)
TIMM_COUNTS = {"vit-tiny": 5_717_416, "vit-small": 22_050_664, "vit-base": 86_567_656,
               "vit-large": 304_326_632, "vit-huge": 632_045_800,
               "vit-giant": 1_012_611_432}


def param_count(config):
    """Count without allocating: the closed form of the ViT's parameter shapes."""
    d, m, k, t = config.dim, config.mlp_dim, config.num_classes, config.seq_len
    embed = d * config.patch_dim + d + t * d + (d if config.class_token else 0)
    block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * m + m) + (m * d + d)
    return embed + config.depth * block + 2 * d + k * d + k


@pytest.mark.parametrize("name", sorted(TIMM_COUNTS))
def test_parameter_counts_equal_timm(name):
    assert param_count(get_config(name)) == TIMM_COUNTS[name]


@pytest.mark.parametrize("name, overrides", [
    ("vit-nano", {}), ("vit-micro", {}), ("vit-nano", {"class_token": False}),
    ("vit-small", {}),   # vit-base (86.6M) is left to the closed form to keep tests light
])
def test_closed_form_matches_built_model(name, overrides):
    config = get_config(name, **overrides)
    assert ViT(config).num_params == param_count(config)


def test_vit_tiny_built_count_and_names():
    model = ViT(get_config("vit-tiny"))
    assert model.num_params == 5_717_416
    shapes = {p.name: p.shape for p in model.parameters()}
    assert shapes["cls_token"] == (1, 1, 192)
    assert shapes["pos_embed"] == (1, 197, 192)
    assert shapes["patch_embed.proj.weight"] == (192, 3, 16, 16)
    assert shapes["blocks.11.attn.qkv.weight"] == (576, 192)
    assert shapes["blocks.0.mlp.fc1.weight"] == (768, 192)
    assert shapes["blocks.0.mlp.fc2.weight"] == (192, 768)
    assert shapes["head.weight"] == (1000, 192)
    assert len(shapes) == 4 + 12 * 12 + 4
    assert model.unit_names == ["embed"] + [f"blocks.{i}" for i in range(12)] + ["head"]


def test_presets_and_defaults():
    assert get_config("vit-nano").num_classes == 10
    assert get_config("vit-micro").num_classes == 10
    assert get_config("vit-base").num_classes == 1000
    assert get_config("vit-tiny", num_classes=7).num_classes == 7
    assert set(PRESETS) == {"vit-nano", "vit-micro", "vit-tiny", "vit-small", "vit-base",
                            "vit-large", "vit-huge", "vit-giant"}


def test_units_are_contiguous_in_flat_buffer():
    model = ViT(get_config("vit-nano"))
    ranges = model.unit_ranges()
    assert ranges[0][0] == 0 and ranges[-1][1] == model.flat.numel
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    for unit, (lo, hi) in zip(model.units, ranges):
        assert sum(p.size for p in unit.parameters()) == hi - lo


def test_params_are_views_of_flat_buffers_and_decay_mask():
    model = ViT(get_config("vit-nano"))
    flat = model.flat
    for p in model.parameters():
        assert np.shares_memory(p.data, flat.data) and np.shares_memory(p.grad, flat.grad)
        lo, hi, shape = flat.offsets[p.name]
        assert p.shape == shape
        assert np.all(flat.decay_mask[lo:hi] == p.decay)
        no_decay = (p.name.endswith(".bias") or "norm" in p.name
                    or p.name in ("pos_embed", "cls_token"))
        assert p.decay == (not no_decay), p.name
    # one byte per parameter whatever the model dtype (not 4 or 8: the optimizers
    # read it as a 0/1 factor, tests/model/test_optim.py)
    assert flat.decay_mask.dtype == np.bool_ and flat.decay_mask.nbytes == flat.numel
    p = model.parameters()[3]
    p.grad += 1.0
    assert flat.grad.sum() == p.size
    model.zero_grad()
    assert not flat.grad.any()


def test_init_deterministic_and_slices():
    a, b = ViT(get_config("vit-nano"), seed=3), ViT(get_config("vit-nano"), seed=3)
    assert a.flat.data.tobytes() == b.flat.data.tobytes()
    c = ViT(get_config("vit-nano"), seed=4)
    assert not np.array_equal(a.flat.data, c.flat.data)
    w = a.flat.named_arrays(a.flat.data)["blocks.1.attn.qkv.weight"]
    full = init_tensor(3, "blocks.1.attn.qkv.weight", (96, 32), "trunc_normal", "float32")
    assert np.array_equal(w, full)
    # a column-parallel shard (rows) and a row-parallel shard (columns)
    assert np.array_equal(init_shard(3, "blocks.1.attn.qkv.weight", (96, 32), "trunc_normal",
                                     "float32", np.s_[32:64]), w[32:64])
    assert np.array_equal(init_shard(3, "blocks.1.attn.qkv.weight", (96, 32), "trunc_normal",
                                     "float32", np.s_[:, 16:]), w[:, 16:])
    # statistics: std 0.02, truncated at 2 std, different names differ
    big = init_tensor(0, "x", (200_000,), "trunc_normal", "float64")
    assert np.abs(big).max() <= 0.04
    assert abs(big.std() - 0.02 * 0.8796) < 2e-4   # std of N(0,1) truncated at +-2
    assert not np.array_equal(big[:10], init_tensor(0, "y", (10,), "trunc_normal", "float64"))
    # float32 and float64 models start from the same draws, up to rounding
    f32 = init_tensor(0, "x", (200_000,), "trunc_normal", "float32")
    assert np.array_equal(f32, big.astype(np.float32))


def test_flat_state_dict_roundtrip_and_errors():
    model = ViT(get_config("vit-nano"))
    state = model.flat.state_dict()
    other = ViT(get_config("vit-nano"), seed=9)
    other.flat.load_state_dict(state)
    assert np.array_equal(other.flat.data, model.flat.data)
    with pytest.raises(ValueError, match="missing"):
        other.flat.load_state_dict({k: v for k, v in state.items() if k != "head.bias"})
    with pytest.raises(ValueError, match="duplicate parameter names"):
        FlatParams([Parameter("a", np.zeros(2), True), Parameter("a", np.zeros(2), True)],
                   "float32")


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_size=30, patch_size=4), "image_size=30 is not divisible by patch_size=4"),
    (dict(dim=30, heads=4), "dim=30 is not divisible by heads=4"),
    (dict(dtype="float16"), "dtype='float16'"),
    (dict(depth=0), "depth=0"),
])
def test_bad_config(kwargs, match):
    base = dict(image_size=16, patch_size=4, dim=32, depth=1, heads=4, mlp_dim=8, num_classes=3)
    with pytest.raises(ValueError, match=match):
        ViTConfig(**{**base, **kwargs})


def test_unknown_preset_lists_known():
    with pytest.raises(ValueError, match="unknown preset 'vit-colossal'.*vit-nano"):
        get_config("vit-colossal")


def test_bad_input_shape_dtype_and_labels():
    model = ViT(get_config("vit-nano"))
    with pytest.raises(ValueError, match=r"input shape \(2, 3, 8, 8\): expected \(B, 3, 16, 16\)"):
        model.forward(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="input dtype float64: expected float32"):
        model.forward(np.zeros((2, 3, 16, 16)))
    with pytest.raises(ValueError, match="label 10 out of range: expected 0 <= label < 10"):
        cross_entropy_forward(np.zeros((2, 10)), np.array([3, 10]))
    with pytest.raises(ValueError, match="label -1 out of range"):
        cross_entropy_forward(np.zeros((2, 10)), np.array([-1, 0]))
    with pytest.raises(ValueError, match="labels dtype float64"):
        cross_entropy_forward(np.zeros((2, 10)), np.array([1.0, 0.0]))


@pytest.mark.parametrize("name, shape", [
    ("vit-large", (224, 16, 1024, 24, 16, 4096)),   # ViT-L/16, Dosovitskiy et al. Table 1
    ("vit-huge", (224, 14, 1280, 32, 16, 5120)),    # ViT-H/14
    ("vit-giant", (224, 14, 1408, 40, 16, 6144)),   # ViT-g/14, Zhai et al. 2022 Table 2
])
def test_large_preset_shapes(name, shape):
    c = get_config(name)
    assert (c.image_size, c.patch_size, c.dim, c.depth, c.heads, c.mlp_dim) == shape
    assert c.num_classes == 1000 and c.seq_len == (224 // c.patch_size) ** 2 + 1


def test_large_presets_closed_form_is_the_built_unit_sizes():
    # vit-large is 1.2 GB in fp32: build one block and count the others alike
    from minivit.model import Block, Embed, Head
    from minivit.parallel.cost import vit_unit_sizes
    c = get_config("vit-large", dtype="float32")
    sizes = [sum(p.data.size for p in u.parameters())
             for u in (Embed(c, 0), Block("blocks.0", c, 0), Head(c, 0))]
    assert sizes == [vit_unit_sizes(c)[0], vit_unit_sizes(c)[1], vit_unit_sizes(c)[-1]]
    assert sizes[0] + c.depth * sizes[1] + sizes[2] == TIMM_COUNTS["vit-large"]


@pytest.mark.parametrize("name", ["vit-large", "vit-huge", "vit-giant"])
def test_counts_equal_timm_itself(name):
    """Our closed form against timm's own model definition, built on the meta device."""
    import importlib.util
    if importlib.util.find_spec("timm") is None or importlib.util.find_spec("torch") is None:
        pytest.skip("timm (a test-only extra) is not installed")
    import json
    import subprocess
    import sys
    from pathlib import Path

    from minivit.timm_compat import TIMM_NAMES, timm_kwargs
    helper = Path(__file__).resolve().parents[1] / "support" / "timm_counts.py"
    proc = subprocess.run([sys.executable, str(helper), TIMM_NAMES[name]],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ref = json.loads(proc.stdout)[TIMM_NAMES[name]]
    config = get_config(name)
    assert ref["params"] == param_count(config) == TIMM_COUNTS[name]
    assert ref["shapes"]["pos_embed"] == [1, config.seq_len, config.dim]
    assert ref["shapes"]["blocks.0.mlp.fc1.weight"] == [config.mlp_dim, config.dim]
    assert len(ref["names"]) == 4 + 12 * config.depth + 4
    assert int(config.dim * timm_kwargs(config)["mlp_ratio"]) == config.mlp_dim
