"""Float64 gradient checks of every module, the whole ViT and the loss, plus a
test of the tester (a backward off by a factor 1.001 must fail)."""
import numpy as np
import pytest

from minivit.attention import MultiHeadAttention
from minivit.config import ViTConfig
from minivit.tools.gradcheck import check_function, check_module
from minivit.layers import GELU, MLP, LayerNorm, Linear
from minivit.loss import cross_entropy_backward, cross_entropy_forward
from minivit.model import Block, Embed, Head, ViT

TOL = 1e-6
F64 = "float64"


def tiny_config(class_token=True, **kw):
    base = dict(image_size=8, patch_size=4, dim=8, depth=2, heads=2, mlp_dim=12,
                num_classes=5, in_chans=3, dtype=F64, class_token=class_token)
    base.update(kw)
    return ViTConfig(**base)


def randn(*shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape)


def assert_all_below(errors, tol=TOL):
    worst = max(errors, key=errors.get)
    assert errors[worst] <= tol, f"gradient check failed: {worst} rel err {errors[worst]:.3e}"
    return errors[worst]


# T = 5 is N + 1 (with a class token), T = 4 is N patches without one.
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("seq", [4, 5])
def test_linear_layernorm_gelu_mlp(batch, seq):
    x = randn(batch, seq, 8)
    modules = [Linear("lin", 8, 6, F64, seed=0), LayerNorm("ln", 8, F64, seed=0),
               GELU(), MLP("mlp", 8, 12, F64, seed=0)]
    # LN with non-trivial scale/bias so their gradients are exercised
    modules[1].weight.data[...] = 1.0 + 0.3 * randn(8, seed=2)
    modules[1].bias.data[...] = 0.1 * randn(8, seed=3)
    for m in modules:
        errors = check_module(m, x)
        assert set(errors) == {"input", *(p.name for p in m.parameters())}
        assert_all_below(errors)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("seq", [4, 5])
def test_attention_and_block(batch, seq):
    x = randn(batch, seq, 8)
    cfg = tiny_config()
    attn = MultiHeadAttention("attn", 8, 2, F64, seed=0)
    # larger weights give peaked softmaxes, which exercise the softmax backward
    attn.qkv.weight.data[...] *= 20
    assert_all_below(check_module(attn, x))
    block = Block("blocks.0", cfg, seed=0)
    errors = check_module(block, x)
    assert len(errors) == 1 + 12
    assert_all_below(errors)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("class_token", [True, False])
def test_embed_and_head(batch, class_token):
    cfg = tiny_config(class_token)
    assert_all_below(check_module(Embed(cfg, seed=0), randn(batch, 3, 8, 8)))
    assert_all_below(check_module(Head(cfg, seed=0), randn(batch, cfg.seq_len, 8)))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("class_token", [True, False])
def test_whole_vit(batch, class_token):
    model = ViT(tiny_config(class_token), seed=0)
    errors = check_module(model, randn(batch, 3, 8, 8))
    assert len(errors) == 1 + len(model.parameters())
    worst = assert_all_below(errors)
    print(f"ViT batch={batch} class_token={class_token}: worst rel err {worst:.2e}")


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy(batch, smoothing):
    labels = np.arange(batch) % 5

    def forward(z):
        return cross_entropy_forward(z, labels, smoothing)[0]

    def backward(z):
        return cross_entropy_backward(cross_entropy_forward(z, labels, smoothing)[1])

    assert check_function(forward, backward, randn(batch, 5)) <= TOL
    # scale multiplies the gradient of the loss by exactly that factor
    ctx = cross_entropy_forward(randn(batch, 5), labels, smoothing)[1]
    np.testing.assert_allclose(cross_entropy_backward(ctx, scale=0.25),
                               0.25 * cross_entropy_backward(ctx), rtol=1e-15)


# ------------------------------------------------------ test of the tester
class ScaledInputGrad(Linear):
    def backward(self, dy, ctx):
        return 1.001 * super().backward(dy, ctx)


class ScaledBiasGrad(LayerNorm):
    def backward(self, dy, ctx):
        before = self.bias.grad.copy()
        dx = super().backward(dy, ctx)
        self.bias.grad[...] = before + 1.001 * (self.bias.grad - before)
        return dx


class ScaledWeightGrad(MultiHeadAttention):
    def backward(self, dy, ctx):
        dx = super().backward(dy, ctx)
        self.proj.weight.grad *= 1.001
        return dx


@pytest.mark.parametrize("module, culprit", [
    (ScaledInputGrad("lin", 8, 6, F64, seed=0), "input"),
    (ScaledBiasGrad("ln", 8, F64, seed=0), "ln.bias"),
    (ScaledWeightGrad("attn", 8, 2, F64, seed=0), "attn.proj.weight"),
])
def test_checker_catches_factor_1_001(module, culprit):
    errors = check_module(module, randn(3, 5, 8))
    assert errors[culprit] > 1e-4, errors            # ~1e-3 expected
    others = {k: e for k, e in errors.items() if k != culprit}
    assert max(others.values()) <= TOL               # and only the culprit is flagged
    with pytest.raises(AssertionError):
        assert_all_below(errors)


def test_checker_catches_wrong_loss_gradient():
    labels = np.array([0, 3, 1])

    def forward(z):
        return cross_entropy_forward(z, labels)[0]

    def wrong_backward(z):
        return 1.001 * cross_entropy_backward(cross_entropy_forward(z, labels)[1])

    assert check_function(forward, wrong_backward, randn(3, 5)) > 1e-4
