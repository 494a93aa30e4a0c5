"""1-D Perlin gradient noise, periodic (Perlin, "Improving Noise", SIGGRAPH 2002).

At integer lattice point i the noise has value 0 and slope ``g_i`` (a random
gradient in [-1, 1]); between lattice points the two linear ramps
``g_i t`` and ``g_{i+1} (t - 1)`` are blended with the quintic fade
``6t^5 - 15t^4 + 10t^3`` (C2-continuous).  With |g| <= 1 the raw value is in
[-0.5, 0.5] (the bound is reached at t = 1/2 for g_i = 1, g_{i+1} = -1), so it
is scaled by 2 to [-1, 1].  The gradient index wraps modulo ``len(grads)``, so
the noise is periodic with period ``len(grads)``: closed curves stay closed.
"""
import math

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def fade(t):
    """Perlin's quintic fade 6t^5 - 15t^4 + 10t^3 (2002, sec. 4)."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


@numba.njit(cache=True)
def perlin1d(u, grads):
    """Noise at float ``u`` for gradients ``grads`` float64 (P,); value in [-1, 1]."""
    period = grads.shape[0]
    cell = math.floor(u)
    t = u - cell
    i0 = int(cell) % period
    i1 = (i0 + 1) % period
    a = grads[i0] * t
    b = grads[i1] * (t - 1.0)
    return 2.0 * (a + fade(t) * (b - a))


def perlin1d_reference(u, grads):
    """Plain-NumPy reference of ``perlin1d`` for float64 array ``u``."""
    u = np.asarray(u, dtype=np.float64)
    grads = np.asarray(grads, dtype=np.float64)
    cell = np.floor(u)
    t = u - cell
    i0 = cell.astype(np.int64) % len(grads)
    i1 = (i0 + 1) % len(grads)
    a = grads[i0] * t
    b = grads[i1] * (t - 1.0)
    f = t ** 3 * (t * (t * 6.0 - 15.0) + 10.0)
    return 2.0 * ((1.0 - f) * a + f * b)


def random_gradients(rng, shape):
    """Lattice gradients uniform in [-1, 1]: float64 array of ``shape``."""
    return rng.uniform(-1.0, 1.0, size=shape)
