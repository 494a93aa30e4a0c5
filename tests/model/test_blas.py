"""minivit.blas.gemm: the row-major GEMM on strided operands that the attention
core calls from Numba, against NumPy for every transpose pair and both dtypes."""
import itertools

import numpy as np
import pytest
from numba import njit

from minivit.blas import NOTRANS, TRANS, addr, gemm


@njit(cache=True)
def _call(ta, tb, m, n, k, alpha, a, a_off, lda, b, b_off, ldb, beta, c, c_off, ldc):
    gemm(ta, tb, m, n, k, np.full(1, alpha, a.dtype), addr(a, a_off), lda,
         addr(b, b_off), ldb, np.full(1, beta, a.dtype), addr(c, c_off), ldc)


def _strided(rng, rows, cols, dtype):
    """A (rows, cols) view inside a wider buffer: its row stride exceeds cols."""
    buf = rng.standard_normal((rows, cols + 5)).astype(dtype)
    return buf, 2, buf.shape[1], buf[:, 2:2 + cols]


@pytest.mark.parametrize("dtype, ta, tb", [
    (d, ta, tb) for d in (np.float32, np.float64) for ta, tb in itertools.product((0, 1), repeat=2)])
def test_gemm_equals_numpy_on_strided_operands(dtype, ta, tb):
    rng = np.random.default_rng(0)
    m, n, k = 7, 5, 3
    a_buf, a_off, lda, a = _strided(rng, *((k, m) if ta else (m, k)), dtype)
    b_buf, b_off, ldb, b = _strided(rng, *((n, k) if tb else (k, n)), dtype)
    c_buf, c_off, ldc, c = _strided(rng, m, n, dtype)
    before = c_buf.copy()
    want = 0.5 * (a.T if ta else a) @ (b.T if tb else b) + 2.0 * c
    _call(TRANS if ta else NOTRANS, TRANS if tb else NOTRANS, m, n, k, 0.5,
          a_buf, a_off, lda, b_buf, b_off, ldb, 2.0, c_buf, c_off, ldc)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(c, want, rtol=tol, atol=tol)
    # nothing outside C's (m, n) window was written: the padding columns are intact
    outside = np.ones_like(c_buf, dtype=bool)
    outside[:, c_off:c_off + n] = False
    np.testing.assert_array_equal(c_buf[outside], before[outside])


def test_a_wrong_transpose_flag_is_detected():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 4))
    b = rng.standard_normal((4, 4))
    c = np.empty((4, 4))
    _call(TRANS, NOTRANS, 4, 4, 4, 1.0, a, 0, 4, b, 0, 4, 0.0, c, 0, 4)
    assert not np.allclose(c, a @ b)       # A^T B is not A B: the check above has teeth
    np.testing.assert_allclose(c, a.T @ b, rtol=1e-13)
