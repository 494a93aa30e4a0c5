"""The float32 fast paths (polynomial erf/exp, fused softmax scale, blocked
reductions) against their NumPy references, over the whole input range."""
import numpy as np
import pytest

from minivit import kernels, kernels_ref
from minivit.optim import grad_sumsq

TOL32 = 1e-6


def test_gelu_fast_path_over_whole_range():
    # every float32 regime: far tails (clamped erf, exp underflow), the erf
    # cancellation region near -4..-3, and the linear region
    x = np.linspace(-100.0, 100.0, 400_001).astype(np.float32)
    np.testing.assert_allclose(kernels.gelu_forward(x), kernels_ref.gelu_forward(x),
                               rtol=TOL32, atol=TOL32)
    dy = np.random.default_rng(0).standard_normal(x.size).astype(np.float32)
    np.testing.assert_allclose(kernels.gelu_backward(dy, x), kernels_ref.gelu_backward(dy, x),
                               rtol=TOL32, atol=TOL32)


def test_gelu_float64_stays_exact():
    x = np.linspace(-8.0, 8.0, 1001)
    np.testing.assert_allclose(kernels.gelu_forward(x), kernels_ref.gelu_forward(x),
                               rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype,tol", [(np.float32, TOL32), (np.float64, 1e-12)])
def test_softmax_with_fused_scale(dtype, tol):
    rng = np.random.default_rng(1)
    x = (20 * rng.standard_normal((37, 197))).astype(dtype)   # includes exp underflow
    scale = 64 ** -0.5
    p = kernels.softmax_forward(x, scale)
    np.testing.assert_allclose(p, kernels_ref.softmax_forward(x, scale), rtol=tol, atol=tol)
    dp = rng.standard_normal(x.shape).astype(dtype)
    np.testing.assert_allclose(kernels.softmax_backward(dp, p, scale),
                               kernels_ref.softmax_backward(dp, p, scale), rtol=tol, atol=tol)
    # the fused scale equals scaling the input first
    np.testing.assert_allclose(p, kernels.softmax_forward(x * dtype(scale)), rtol=tol * 10,
                               atol=tol)


def test_softmax_rejects_bad_scale():
    with pytest.raises(ValueError, match="scale=0.0: expected a positive"):
        kernels.softmax_forward(np.zeros((2, 3)), 0.0)


@pytest.mark.parametrize("rows", [1, 63, 64, 65, 300])
def test_layernorm_backward_blocks(rows):
    # partial dw/db sums per 64-row block: block edges must not drop or repeat rows
    rng = np.random.default_rng(rows)
    x, dy = rng.standard_normal((2, rows, 24))
    w, b = rng.standard_normal((2, 24))
    y, mean, rstd = kernels.layernorm_forward(x, w, b, 1e-6)
    dw, db = np.zeros(24), np.zeros(24)
    dx = kernels.layernorm_backward(dy, x, mean, rstd, w, dw, db)
    dx_ref, dw_ref, db_ref = kernels_ref.layernorm_backward(dy, x, mean, rstd, w)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, db_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [0, 1, 4095, 4096, 4097, 100_003])
def test_grad_sumsq_blocks(n):
    g = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    ref = float(np.sum(g.astype(np.float64) ** 2))
    assert grad_sumsq(g) == pytest.approx(ref, rel=1e-12, abs=0.0)


def test_math32_erf_and_exp_against_float64():
    from numba import njit
    from scipy.special import erf

    from minivit import math32

    @njit
    def apply(t, z, e, f):
        for i in range(t.size):
            y, k = math32.exp32_split(t[i])
            e[i] = y * np.float32(2.0) ** k
            f[i] = math32.erf32(z[i])
    t = np.linspace(-87.0, 0.0, 200_001).astype(np.float32)
    z = np.linspace(-6.0, 6.0, 200_001).astype(np.float32)
    e, f = np.empty_like(t), np.empty_like(z)
    apply(t, z, e, f)
    exact = np.exp(t.astype(np.float64))
    assert np.max(np.abs(e - exact) / exact) < 3e-7
    assert np.max(np.abs(f - erf(z.astype(np.float64)))) < 5e-7     # 4 float32 ulps of 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layernorm_and_bias_kernels_keep_nan(dtype):
    # the kernels reassociate sums but must not assume finite inputs: a NaN
    # has to reach the loss, where the non-finite guard sees it
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(dtype)
    x[2, 7] = np.nan
    w, b = np.ones(16, dtype), np.zeros(16, dtype)
    y, mean, rstd = kernels.layernorm_forward(x, w, b, 1e-6)
    assert np.isnan(y[2]).all() and np.isfinite(np.delete(y, 2, axis=0)).all()
    db = np.zeros(16, dtype)
    kernels.bias_grad_(x, db)
    assert np.isnan(db[7]) and np.isfinite(np.delete(db, 7)).all()
