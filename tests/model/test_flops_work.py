"""minivit.flops.step_work (the per-class closed forms behind ``bench train
--breakdown``'s rates) against a direct count of one training step of a tiny
ViT: every GEMM's FLOPs from the shapes of the arrays it was actually given, and
every LayerNorm/GELU kernel's bytes from the arrays it took and returned."""
import numpy as np
import pytest

from minivit import attention, kernels
from minivit.config import get_config
from minivit.flops import linear_gemms, step_work, train_flops
from minivit.layers import Linear
from minivit.loss import cross_entropy_backward, cross_entropy_forward
from minivit.model import Embed, ViT
from minivit.tools.gemm_gap import gap_rows, isolated_linear_gemms, time_linear_gemm


def _nbytes(*arrays):
    return sum(a.nbytes for a in arrays)


def _count(monkeypatch, counts, cls_name, target, attr, measure):
    """Wrap ``target.attr`` so each call adds ``measure(args, result)`` to counts[cls_name]."""
    orig = getattr(target, attr)

    def wrapper(*args, **kwargs):
        out = orig(*args, **kwargs)
        counts[cls_name] += measure(args, out)
        return out
    monkeypatch.setattr(target, attr, wrapper)


def _gemm(m, k, n):
    return 2 * m * k * n


def _direct_count(monkeypatch, cfg, batch):
    counts = dict.fromkeys(("matmul", "embed", "attention", "layernorm", "gelu"), 0)
    # Linear: y = x W^T (forward), dx = dy W, dW = dy^T x; shapes from the real operands
    _count(monkeypatch, counts, "matmul", Linear, "forward",
           lambda a, out: _gemm(out[1].shape[0], a[0].in_features, a[0].out_features))
    _count(monkeypatch, counts, "matmul", Linear, "backward_input",
           lambda a, out: _gemm(out[1][0].shape[0], a[0].out_features, a[0].in_features))
    _count(monkeypatch, counts, "matmul", Linear, "backward_weight",
           lambda a, out: _gemm(a[1][0].shape[1], a[1][0].shape[0], a[1][1].shape[1]))
    _count(monkeypatch, counts, "embed", Embed, "forward",
           lambda a, out: _gemm(*out[1][0].shape, a[0].config.dim))
    _count(monkeypatch, counts, "embed", Embed, "backward_input",
           lambda a, out: _gemm(*out[1][1].shape, a[0].config.dim))
    _count(monkeypatch, counts, "embed", Embed, "backward_weight",
           lambda a, out: _gemm(*a[1][1].shape, a[0].config.dim))
    # attention core: forward Q K^T and P V, backward dV, dP, dQ, dK per (batch, head)
    head_gemm = lambda q: q.shape[0] * q.shape[3] * _gemm(q.shape[1], q.shape[4], q.shape[1])
    _count(monkeypatch, counts, "attention", attention, "attention_forward",
           lambda a, out: 2 * head_gemm(a[0]))
    _count(monkeypatch, counts, "attention", attention, "attention_backward",
           lambda a, out: 4 * head_gemm(a[1]))
    # memory-bound kernels: every array argument and result once
    _count(monkeypatch, counts, "layernorm", kernels, "layernorm_forward",
           lambda a, out: _nbytes(*a[:3], *out))
    _count(monkeypatch, counts, "layernorm", kernels, "layernorm_backward",
           lambda a, out: _nbytes(*a, out))
    _count(monkeypatch, counts, "gelu", kernels, "gelu_forward", lambda a, out: _nbytes(a[0], out))
    _count(monkeypatch, counts, "gelu", kernels, "gelu_backward", lambda a, out: _nbytes(*a, out))
    model = ViT(cfg, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, cfg.in_chans, cfg.image_size, cfg.image_size)).astype(cfg.dtype)
    logits, ctx = model.forward(x)
    _, lctx = cross_entropy_forward(logits, rng.integers(0, cfg.num_classes, batch))
    model.backward(cross_entropy_backward(lctx), ctx)
    return counts


@pytest.mark.parametrize("preset,overrides,batch", [
    ("vit-nano", {}, 3),
    ("vit-nano", {"dtype": "float64", "class_token": False, "heads": 2, "mlp_dim": 48}, 2),
])
def test_step_work_equals_a_direct_count(monkeypatch, preset, overrides, batch):
    cfg = get_config(preset, **overrides)
    direct = _direct_count(monkeypatch, cfg, batch)
    closed = step_work(cfg, batch)
    assert {k: v[0] for k, v in closed.items()} == direct
    assert closed["matmul"][1] == closed["attention"][1] == "FLOP"
    assert closed["layernorm"][1] == closed["gelu"][1] == "B"
    # the GEMM classes are the model FLOPs of bench train's MFU, split up
    assert sum(closed[k][0] for k in ("matmul", "embed", "attention")) == train_flops(cfg, batch)


def test_a_wrong_closed_form_fails_the_direct_count(monkeypatch):
    # a model whose GELU runs on twice the MLP width breaks the GELU bytes equality
    cfg = get_config("vit-nano")
    direct = _direct_count(monkeypatch, cfg, 2)
    wrong = step_work(get_config("vit-nano", mlp_dim=2 * cfg.mlp_dim), 2)
    assert wrong["gelu"][0] != direct["gelu"]
    assert wrong["matmul"][0] != direct["matmul"]


def test_isolated_gemms_and_gap_rows():
    cfg = get_config("vit-nano")
    shapes = {name: (m, k, n, c) for name, m, k, n, c in linear_gemms(cfg, 2)}
    assert shapes["fc1"] == (2 * cfg.seq_len, cfg.dim, cfg.mlp_dim, cfg.depth)
    alone = isolated_linear_gemms(cfg, 2, repeats=1)
    assert set(alone) == set(shapes)
    for name, (sec, flops) in alone.items():
        m, k, n, c = shapes[name]
        assert sec > 0 and flops == c * 6 * m * k * n
    rows = gap_rows(cfg, 2, {"qkv": 1.0, "fc1": 3.0}, alone)
    assert [r[0] for r in rows] == ["qkv", "fc1", "all"]
    assert rows[-1][3] == 4.0 and rows[-1][5] == alone["qkv"][1] + alone["fc1"][1]
    with pytest.raises(ValueError, match="repeats"):
        time_linear_gemm(2, 2, 2, "float32", repeats=0)
