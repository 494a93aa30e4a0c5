"""The fused attention core (minivit.kernels_attention) equals its float64 NumPy
reference, does not depend on the Numba thread count, and rejects bad shapes."""
import numba
import numpy as np
import pytest

from minivit import kernels_attention as ka
from minivit import kernels_ref
from minivit.tools.gradcheck import check_function
from minivit.threads import limit_threads

# float32: GEMMs of length hd and T in float32, softmax accumulated in float64
TOL = {np.float32: 2e-5, np.float64: 1e-12}


def case(b, t, h, hd, dtype, seed=0):
    rng = np.random.default_rng(seed)
    qkv = (2.0 * rng.standard_normal((b, t, 3, h, hd))).astype(dtype)
    do = rng.standard_normal((b, t, h, hd)).astype(dtype)
    return qkv, do, hd ** -0.5


def rel_err(a, b):
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (3, 17, 2, 8), (1, 65, 4, 32)])
def test_attention_matches_reference(dtype, shape):
    qkv, do, scale = case(*shape, dtype)
    o, p = ka.attention_forward(qkv, scale)
    o_ref, p_ref = kernels_ref.attention_forward(qkv.astype(np.float64), scale)
    assert o.dtype == p.dtype == dtype
    assert o.shape == (shape[0], shape[1], shape[2], shape[3])
    assert rel_err(o, o_ref) < TOL[dtype] and rel_err(p, p_ref) < TOL[dtype]
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=TOL[dtype])
    dqkv = ka.attention_backward(do, qkv, p, scale)
    dqkv_ref = kernels_ref.attention_backward(do.astype(np.float64), qkv.astype(np.float64),
                                              p_ref, scale)
    assert dqkv.shape == qkv.shape and dqkv.dtype == dtype
    for i in range(3):                    # q, k and v slots each, so none hides behind another
        assert rel_err(dqkv[:, :, i], dqkv_ref[:, :, i]) < TOL[dtype]


def test_a_wrong_gradient_fails_the_comparison():
    qkv, do, scale = case(2, 9, 2, 4, np.float64)
    o, p = ka.attention_forward(qkv, scale)
    dqkv_ref = kernels_ref.attention_backward(do, qkv, p, scale)
    wrong = ka.attention_backward(do, qkv, p, scale * 1.001)
    assert rel_err(wrong, dqkv_ref) > 1e3 * TOL[np.float64]


def test_float64_gradient_matches_finite_differences():
    qkv, do, scale = case(1, 6, 2, 3, np.float64, seed=4)

    def loss(z):                          # a scalar of o: <o, do>
        return float((ka.attention_forward(z, scale)[0] * do).sum())

    def grad(z):
        return ka.attention_backward(do, z, ka.attention_forward(z, scale)[1], scale)
    # 5-point differences along 6 random directions (a 1.001 error gives ~1e-3)
    assert max(check_function(loss, grad, qkv, seed=s) for s in range(6)) < 1e-8


def test_results_do_not_depend_on_thread_count():
    qkv, do, scale = case(4, 33, 3, 16, np.float32)
    out = []
    for n in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
        with limit_threads(n):
            o, p = ka.attention_forward(qkv, scale)
            out.append((o, p, ka.attention_backward(do, qkv, p, scale)))
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


def test_bad_inputs_raise():
    qkv, do, scale = case(2, 5, 3, 4, np.float32)
    with pytest.raises(ValueError, match="expected \\(B, T, 3, H, head_dim\\)"):
        ka.attention_forward(qkv.reshape(2, 5, 36), scale)
    with pytest.raises(ValueError, match="dtype"):
        ka.attention_forward(qkv.astype(np.float16), scale)
    with pytest.raises(ValueError, match="scale"):
        ka.attention_forward(qkv, 0.0)
    _, p = ka.attention_forward(qkv, scale)
    with pytest.raises(ValueError, match="do not fit"):
        ka.attention_backward(do[:, :4], qkv, p, scale)
