"""The backward split into an input half and a weight half (zero-bubble pipelines).

``backward_input(dy, ctx) -> (dx, wctx)`` then ``backward_weight(wctx)`` must give
bitwise the gradients of ``backward(dy, ctx)``, also when the weight halves of
several micro-batches run late (in micro-batch order), as ZB-H1 runs them.
"""
import numpy as np
import pytest

from minivit.config import get_config
from minivit.model import ViT

CFG = get_config("vit-nano", dtype="float64", depth=2)


def _micro_batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((3, 3, 16, 16)), rng.standard_normal((3, 10)))
            for _ in range(n)]


def _unsplit(batches):
    model = ViT(CFG, seed=4)
    dxs = []
    for x, dlogits in batches:
        logits, ctx = model.forward(x)
        dxs.append(model.backward(dlogits, ctx))
    return model, dxs


def _split(batches, skip=None):
    """All input halves first, then every weight half, micro-batch order kept."""
    model = ViT(CFG, seed=4)
    dxs, wctxs = [], []
    for x, dlogits in batches:
        logits, ctx = model.forward(x)
        dx, w = model.backward_input(dlogits, ctx)
        dxs.append(dx)
        wctxs.append(w)
    for i, w in enumerate(wctxs):
        if i != skip:
            model.backward_weight(w)
    return model, dxs


def test_split_backward_is_bitwise_the_unsplit_one():
    batches = _micro_batches(3)
    (a, dx_a), (b, dx_b) = _unsplit(batches), _split(batches)
    assert np.array_equal(a.flat.grad, b.flat.grad)
    assert all(np.array_equal(u, v) for u, v in zip(dx_a, dx_b))
    # the input half alone leaves the Linear weights' gradients untouched
    model = ViT(CFG, seed=4)
    x, dlogits = batches[0]
    logits, ctx = model.forward(x)
    model.backward_input(dlogits, ctx)
    grads = model.flat.named_arrays(model.flat.grad)
    assert not grads["blocks.0.mlp.fc1.weight"].any() and not grads["head.weight"].any()
    assert grads["blocks.0.norm1.weight"].any() and grads["pos_embed"].any()


def test_a_lost_weight_half_is_caught():
    batches = _micro_batches(2)
    a, _ = _unsplit(batches)
    b, _ = _split(batches, skip=1)        # forgets micro-batch 1's weight gradients
    assert not np.array_equal(a.flat.grad, b.flat.grad)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(b.flat.grad, a.flat.grad, rtol=1e-8)
