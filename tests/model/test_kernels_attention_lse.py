"""Selective recompute of the attention core (minivit.kernels_attention_lse): the
forward keeps only the row log-sum-exp, the backward rebuilds P from it.  It must
equal the P-keeping core and the float64 NumPy reference, pass finite differences,
not depend on the thread count, and a wrong rebuild must fail the comparison."""
import numba
import numpy as np
import pytest

from minivit import kernels_attention as ka
from minivit import kernels_attention_lse as kl
from minivit import kernels_ref
from minivit.threads import limit_threads
from minivit.tools.gradcheck import check_function

from test_kernels_attention import TOL, case, rel_err

# against the P-keeping core: the rebuilt P differs by rounding only (float64), by the
# float32 polynomial exp's error (float32, ~1e-6 relative per element)
CLOSE = {np.float32: 2e-5, np.float64: 1e-13}


def lse_ref(qkv, scale):
    """log sum_j exp(scale q_i . k_j) per (batch, head, query) in float64: (B, H, T)."""
    q, k = (qkv[:, :, i].astype(np.float64).transpose(0, 2, 1, 3) for i in range(2))
    z = scale * (q @ k.transpose(0, 1, 3, 2))
    m = z.max(-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[..., 0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (3, 17, 2, 8), (1, 65, 4, 32)])
def test_selective_core_equals_the_p_keeping_core_and_the_reference(dtype, shape):
    qkv, do, scale = case(*shape, dtype)
    o_p, p = ka.attention_forward(qkv, scale)
    o, lse = kl.attention_forward_lse(qkv, scale)
    np.testing.assert_array_equal(o, o_p)          # the same forward kernel and softmax
    assert lse.shape == (shape[0], shape[2], shape[1]) and lse.dtype == np.float64
    # float32: L uses the float32-rounded scale the forward's exponentials used
    assert rel_err(lse, lse_ref(qkv, float(dtype(scale)))) < CLOSE[dtype]   # float32: S's GEMM
    dqkv = kl.attention_backward_lse(do, qkv, lse, scale)
    assert dqkv.shape == qkv.shape and dqkv.dtype == dtype
    dqkv_p = ka.attention_backward(do, qkv, p, scale)
    _, p_ref = kernels_ref.attention_forward(qkv.astype(np.float64), scale)
    dqkv_ref = kernels_ref.attention_backward(do.astype(np.float64), qkv.astype(np.float64),
                                              p_ref, scale)
    for i in range(3):                    # q, k and v slots each, so none hides behind another
        assert rel_err(dqkv[:, :, i], dqkv_p[:, :, i].astype(np.float64)) < CLOSE[dtype]
        assert rel_err(dqkv[:, :, i], dqkv_ref[:, :, i]) < TOL[dtype]


@pytest.mark.parametrize("wrong", ["lse", "scale"])
def test_a_wrong_rebuild_fails_the_comparison(wrong):
    qkv, do, scale = case(2, 9, 2, 4, np.float64)
    o, lse = kl.attention_forward_lse(qkv, scale)
    want = ka.attention_backward(do, qkv, ka.attention_forward(qkv, scale)[1], scale)
    if wrong == "lse":                    # P rebuilt 1% too small: exp(-0.01)
        got = kl.attention_backward_lse(do, qkv, lse + 0.01, scale)
    else:
        got = kl.attention_backward_lse(do, qkv, lse, scale * 1.001)
    assert rel_err(got, want) > 1e3 * CLOSE[np.float64]


def test_float64_gradient_matches_finite_differences():
    qkv, do, scale = case(1, 6, 2, 3, np.float64, seed=4)

    def loss(z):                          # a scalar of o: <o, do>
        return float((kl.attention_forward_lse(z, scale)[0] * do).sum())

    def grad(z):
        return kl.attention_backward_lse(do, z, kl.attention_forward_lse(z, scale)[1], scale)
    assert max(check_function(loss, grad, qkv, seed=s) for s in range(6)) < 1e-8


def test_float64_finite_differences_catch_a_wrong_rebuild():
    qkv, do, scale = case(1, 6, 2, 3, np.float64, seed=4)

    def loss(z):
        return float((kl.attention_forward_lse(z, scale)[0] * do).sum())

    def grad(z):                          # L off by 1e-3: P, and every gradient, 0.1% off
        return kl.attention_backward_lse(do, z, kl.attention_forward_lse(z, scale)[1] + 1e-3,
                                         scale)
    assert max(check_function(loss, grad, qkv, seed=s) for s in range(6)) > 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_thread_count(dtype):
    qkv, do, scale = case(4, 33, 3, 16, dtype)
    out = []
    for n in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
        with limit_threads(n):
            o, lse = kl.attention_forward_lse(qkv, scale)
            out.append((o, lse, kl.attention_backward_lse(do, qkv, lse, scale)))
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


def test_bad_inputs_raise():
    qkv, do, scale = case(2, 5, 3, 4, np.float32)
    with pytest.raises(ValueError, match="expected \\(B, T, 3, H, head_dim\\)"):
        kl.attention_forward_lse(qkv.reshape(2, 5, 36), scale)
    with pytest.raises(ValueError, match="scale"):
        kl.attention_forward_lse(qkv, -1.0)
    _, lse = kl.attention_forward_lse(qkv, scale)
    with pytest.raises(ValueError, match="do not fit"):
        kl.attention_backward_lse(do, qkv, lse[:, :, :4], scale)
    with pytest.raises(ValueError, match="do not fit"):
        kl.attention_backward_lse(do[:, :4], qkv, lse, scale)
