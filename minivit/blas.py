"""A row-major GEMM on strided operands, callable from Numba kernels.

``gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`` computes
``C = alpha * op(A) op(B) + beta * C`` for row-major matrices given by their
first element and their leading dimension (elements between rows), the
(C)BLAS ``?gemm`` contract.  ``op(X)`` is X or X^T as ``ta``/``tb`` is
``NOTRANS`` or ``TRANS``.

Why: Numba's ``np.dot`` needs contiguous operands, so the attention core
copied q, k, v and dO of each head out of the qkv layout (B, T, 3, H, hd)
into scratch and the head's results back: eight (T, hd) copies per
(batch, head) pair in the backward, 5.4 ms of a 31.8 ms vit-tiny b32 layer
(one thread, AMD EPYC Zen 4).  A head's q is already a BLAS matrix in
place: T rows of hd elements, ``3 H hd`` apart.  Passing that leading
dimension lets BLAS read and write the qkv layout directly.

This calls the BLAS NumPy's ``np.dot`` reaches from Numba: the
``numba_xxgemm`` entry of Numba's helper library, which dispatches to
SciPy's ``scipy.linalg.cython_blas`` (Fortran, column-major) ``sgemm`` or
``dgemm``.  A row-major C = op(A) op(B) is the column-major
C^T = op(B)^T op(A)^T, so the operands and sizes are swapped, the
transpose flags kept.  Pointers are declared as integers (``uintp``), the
same register on every 64-bit ABI, so one declaration serves float32 and
float64, and the symbol is found by name: kernels that use it stay
cacheable (``cache=True``).  Nothing is checked at this level: callers pass
addresses and sizes that fit their arrays (``minivit.kernels_attention``),
and ``tests/model/test_blas.py`` checks every flag pair and both dtypes
against NumPy.
"""
import numpy as np
import scipy.linalg.cython_blas  # noqa: F401  (the BLAS numba_xxgemm loads lazily)
from numba import njit, types

NOTRANS = np.int8(ord("n"))
TRANS = np.int8(ord("t"))

_xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char,          # kind ('s'/'d'), transa, transb
    types.intp, types.intp, types.intp,          # m, n, k (column-major)
    types.uintp, types.uintp, types.intp,        # &alpha, a, lda
    types.uintp, types.intp, types.uintp,        # b, ldb, &beta
    types.uintp, types.intp))                    # c, ldc


@njit(cache=True, inline="always")
def addr(x, offset):
    """Address of element ``offset`` (in elements, from the first) of array x."""
    return x.ctypes.data + np.uintp(offset * x.itemsize)


@njit(cache=True, inline="always")
def gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """Row-major C (m, n) = alpha op(A) (m, k) op(B) (k, n) + beta C.

    ta, tb: ``NOTRANS`` or ``TRANS``.  a, b, c: addresses (``addr``) of the
    first elements; lda, ldb, ldc: row strides in elements.  alpha, beta:
    1-element arrays of the operands' dtype (float32 or float64), which also
    selects sgemm or dgemm.  With beta = 0, C need not be initialised.
    """
    kind = np.int8(ord("s")) if alpha.itemsize == 4 else np.int8(ord("d"))
    _xxgemm(kind, tb, ta, n, m, k, alpha.ctypes.data, b, ldb, a, lda,
            beta.ctypes.data, c, ldc)
