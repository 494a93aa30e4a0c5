"""Branch-free float32 erf and exp for the vectorised float32 kernels.

libm's ``erff``/``expf`` are calls LLVM cannot vectorise; written out as
polynomials in float32 arithmetic, a loop over them runs 8 lanes per AVX2
instruction.  Every constant is a ``np.float32`` so Numba keeps the arithmetic
in float32 (a float64 constant would promote the whole expression).

- ``erf32``: the rational minimax erf of Eigen/XLA's float32 path
  (z * P(z^2) / Q(z^2) on [-4, 4], +-1 outside): absolute error below 5e-7
  in float32 arithmetic (4.2e-7 measured, 4 ulps of 1).
- ``exp32_split(t)`` for t <= 0: Cephes ``expf`` (S. Moshier, Cephes Math
  Library, expf.c): t = k ln2 + g with |g| <= ln2 / 2, a degree-7 polynomial
  for exp(g), and 2**k, which the caller builds from its exponent bits with
  ``pow2_bits`` in an int32 buffer viewed as float32 (Numba has no scalar
  bit cast).  Relative error below 3e-7 (measured against float64 libm).
  t is clamped at -87 (exp(-87) = 1.6e-38, the smallest normal float32 is 1.2e-38).
"""
import math

import numpy as np
from numba import njit

F32 = np.float32
ONE, HALF, FOUR = F32(1.0), F32(0.5), F32(4.0)
INV_SQRT2 = F32(1.0 / math.sqrt(2.0))
INV_SQRT_2PI = F32(1.0 / math.sqrt(2.0 * math.pi))

_P = [F32(c) for c in (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
                       -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
                       -1.60960333262415e-02)]
_Q = [F32(c) for c in (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
                       -7.37332916720468e-03, -1.42647390514189e-02)]
P0, P1, P2, P3, P4, P5, P6 = _P
Q0, Q1, Q2, Q3, Q4 = _Q

EXP_LO = F32(-87.0)
LOG2E = F32(1.4426950408889634)
LN2_HI, LN2_LO = F32(0.693359375), F32(-2.12194440e-4)   # ln 2 = HI + LO, HI exact in 9 bits
E0, E1, E2, E3, E4, E5 = (F32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                            4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))


@njit(cache=True, inline="always", fastmath=True, error_model="numpy")
def erf32(z):
    """erf(z) for float32 z (selects, not branches, so loops over it vectorise)."""
    c = -FOUR if z < -FOUR else z
    c = FOUR if c > FOUR else c
    z2 = c * c
    p = ((((((P0 * z2 + P1) * z2 + P2) * z2 + P3) * z2 + P4) * z2 + P5) * z2 + P6)
    q = ((((Q0 * z2 + Q1) * z2 + Q2) * z2 + Q3) * z2 + Q4)
    e = c * p / q
    # outside +-4 erf is +-1 to 1.5e-8; the exact +-1 keeps gelu(-100) at 0
    e = -ONE if z < -FOUR else e
    return ONE if z > FOUR else e


@njit(cache=True, inline="always", fastmath=True, error_model="numpy")
def exp32_split(t):
    """``(y, k)`` with exp(t) = y * 2**k for float32 t <= 0; y in [0.7, 1.42], k int32 in [-126, 0]."""
    t = EXP_LO if t < EXP_LO else t
    k = -np.int32(HALF - t * LOG2E)      # round(t / ln 2): the operand is >= 0.5, so truncation floors
    kf = F32(k)
    g = t - kf * LN2_HI - kf * LN2_LO
    y = ((((E0 * g + E1) * g + E2) * g + E3) * g + E4) * g + E5
    return y * g * g + g + ONE, k


@njit(cache=True, inline="always", error_model="numpy")
def pow2_bits(k):
    """The int32 bit pattern of the float32 2**k, for int32 k in [-126, 127]."""
    return (k + 127) << 23
