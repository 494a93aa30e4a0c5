"""Each Numba kernel equals its NumPy reference: 1e-6 in float32, 1e-12 in float64."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minivit import kernels, kernels_ref

TOL = {np.float32: 1e-6, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]


def data(shape, dtype, seed=0, scale=3.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)


def close(a, b, dtype):
    np.testing.assert_allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm(dtype):
    x = data((7, 33), dtype) + 5.0        # offset mean: the variance must be centred
    w, b = data((33,), dtype, 1, 1.0), data((33,), dtype, 2, 1.0)
    y, mean, rstd = kernels.layernorm_forward(x, w, b, 1e-6)
    y_ref, mean_ref, rstd_ref = kernels_ref.layernorm_forward(x, w, b, 1e-6)
    assert y.dtype == dtype
    close(y, y_ref, dtype)
    close(mean, mean_ref, dtype)
    close(rstd, rstd_ref, dtype)
    dy = data((7, 33), dtype, 3)
    dw = np.full(33, 0.5, dtype)           # kernel accumulates into existing grads
    db = np.full(33, -0.5, dtype)
    dx = kernels.layernorm_backward(dy, x, mean, rstd, w, dw, db)
    dx_ref, dw_ref, db_ref = kernels_ref.layernorm_backward(dy, x, mean, rstd, w)
    close(dx, dx_ref, dtype)
    close(dw, (0.5 + dw_ref).astype(dtype), dtype)
    close(db, (-0.5 + db_ref).astype(dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu(dtype):
    x = data((4, 5, 6), dtype)
    y = kernels.gelu_forward(x)
    assert y.shape == x.shape and y.dtype == dtype
    close(y, kernels_ref.gelu_forward(x), dtype)
    dy = data((4, 5, 6), dtype, 1)
    close(kernels.gelu_backward(dy, x), kernels_ref.gelu_backward(dy, x), dtype)
    # anchor values of the exact erf form: gelu(1) = Phi(1) = 0.841344746...
    one = kernels.gelu_forward(np.array([1.0, 0.0, -1.0]))
    np.testing.assert_allclose(one, [0.8413447460685429, 0.0, -0.15865525393145707], rtol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax(dtype):
    x = data((6, 9), dtype, scale=10.0)
    p = kernels.softmax_forward(x)
    close(p, kernels_ref.softmax_forward(x), dtype)
    close(p.sum(-1), np.ones(6), dtype)
    dp = data((6, 9), dtype, 1)
    close(kernels.softmax_backward(dp, p), kernels_ref.softmax_backward(dp, p), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy(dtype, smoothing):
    z = data((5, 7), dtype, scale=5.0)
    labels = np.array([0, 6, 3, 3, 1], dtype=np.int64)
    losses, probs = kernels.xent_forward(z, labels, smoothing)
    losses_ref, probs_ref = kernels_ref.xent_forward(z, labels, smoothing)
    close(losses, losses_ref, dtype)
    close(probs, probs_ref, dtype)
    dz = kernels.xent_backward(probs, labels, smoothing, 0.2)
    close(dz, kernels_ref.xent_backward(probs, labels, smoothing, 0.2), dtype)


def test_softmax_is_stable_for_huge_logits():
    x = np.array([[1000.0, 1000.0, -1000.0]])
    np.testing.assert_allclose(kernels.softmax_forward(x), [[0.5, 0.5, 0.0]])
    losses, _ = kernels.xent_forward(np.array([[1e4, 0.0]]), np.array([1]), 0.0)
    np.testing.assert_allclose(losses, [1e4])


def test_kernels_reject_wrong_rank():
    with pytest.raises(ValueError, match="expected a 2-D"):
        kernels.softmax_forward(np.zeros(3))
    with pytest.raises(ValueError, match="expected equal shapes"):
        kernels.gelu_backward(np.zeros(3), np.zeros(4))


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), width=st.integers(1, 40), seed=st.integers(0, 2**16),
       scale=st.sampled_from([1e-3, 1.0, 30.0]), f32=st.booleans())
def test_kernels_match_reference_on_any_shape(rows, width, seed, scale, f32):
    """Property: every kernel agrees with its reference for any row count and width
    (width 1 included: LayerNorm of a constant row, softmax of one logit)."""
    dtype = np.float32 if f32 else np.float64
    x, dy = data((rows, width), dtype, seed, scale), data((rows, width), dtype, seed + 1)
    w, b = data((width,), dtype, seed + 2, 1.0), data((width,), dtype, seed + 3, 1.0)
    y, mean, rstd = kernels.layernorm_forward(x, w, b, 1e-6)
    close(y, kernels_ref.layernorm_forward(x, w, b, 1e-6)[0], dtype)
    dw, db = np.zeros(width, dtype), np.zeros(width, dtype)
    dx_ref, dw_ref, db_ref = kernels_ref.layernorm_backward(dy, x, mean, rstd, w)
    # LayerNorm's dx is a difference of O(rstd) terms: compare relative to rstd
    np.testing.assert_allclose(kernels.layernorm_backward(dy, x, mean, rstd, w, dw, db) / rstd[:, None],
                               dx_ref / rstd[:, None], rtol=TOL[dtype], atol=TOL[dtype] * 10)
    close(dw, dw_ref.astype(dtype), dtype)
    close(db, db_ref.astype(dtype), dtype)
    close(kernels.gelu_forward(x), kernels_ref.gelu_forward(x), dtype)
    close(kernels.gelu_backward(dy, x), kernels_ref.gelu_backward(dy, x), dtype)
    p = kernels.softmax_forward(x)
    close(p, kernels_ref.softmax_forward(x), dtype)
    close(kernels.softmax_backward(dy, p), kernels_ref.softmax_backward(dy, p), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 63, 64, 200])
def test_bias_add_and_gradient(dtype, rows):
    y, b = data((rows, 19), dtype), data((19,), dtype, 1)
    expected = y + b
    assert kernels.add_bias_(y, b) is y
    close(y, expected, dtype)
    dy = data((rows, 19), dtype, 2)
    db = np.full(19, 0.25, dtype)            # accumulates into an existing gradient
    kernels.bias_grad_(dy, db)
    close(db, (0.25 + kernels_ref.bias_grad(dy)).astype(dtype), dtype)
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.add_bias_(np.asfortranarray(np.ones((3, 19), dtype)), b)
