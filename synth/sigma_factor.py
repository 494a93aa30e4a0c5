"""The sigma-factor IFS sampler of Anderson & Farrell.

Anderson and Farrell, "Improving Fractal Pre-training", WACV 2022 (arXiv
2110.03091), section 3.2: the linear part of map ``i`` is ``A_i = U_i
diag(s1_i, s2_i) V_i`` with random rotations-with-reflections ``U_i, V_i``
and singular values ``1 >= s1_i >= s2_i >= 0`` (so every map is a
contraction).  The geometry of the attractor is governed by the
*sigma-factor*

    sigma = sum_i (s1_i + 2 * s2_i),

which is drawn near a target and then split over the singular values by
``sample_singular_values``; translations ``(e, f)`` are uniform in
``[-translation, translation]``.  The paper samples sigma uniformly in
``((5 + N) / 2, (6 + N) / 2)`` for N maps; 1p-frac's released generator
(``utils.sample_system(N, beta=(sigma - 0.1, sigma + 0.1))``) draws it within
0.1 of a target.

Maps are returned as rows ``a, b, c, d, e, f`` (``synth.ifs`` order):
``x' = a x + b y + e``, ``y' = c x + d y + f``.
"""
import math

import numpy as np


def _check_sigma(n, sigma):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= 255:
        raise ValueError(f"number of maps must be an int in [1, 255], got {n!r}")
    if not (math.isfinite(sigma) and 0 < sigma < 3 * n):
        raise ValueError(f"sigma-factor must lie in (0, 3 N) = (0, {3 * n}) for N={n} maps "
                         f"(each map adds at most s1 + 2 s2 = 3), got {sigma!r}")


def sample_singular_values(n, sigma, rng):
    """Singular values float64 (n, 2), rows ``(s1, s2)``, with ``sum(s1 + 2 s2) = sigma``.

    Every row satisfies ``1 >= s1 >= s2 >= 0``.  Pairs are drawn in turn,
    each uniform within the bounds that still let the remaining pairs reach
    ``sigma`` (Anderson & Farrell, WACV 2022, sec. 3.2, "sample_svs" in their
    code); the last pair is then fixed by the sum.  rng: a
    ``numpy.random.Generator``.  Raises ValueError unless ``0 < sigma < 3 n``
    (their code means to clamp sigma into [0, 3n] but writes ``a == 0``, a
    comparison, so an unreachable sigma silently breaks the constraints).
    """
    _check_sigma(n, sigma)
    s = np.empty((n, 2))
    p = float(sigma)               # what the pairs still to draw must add up to
    for i in range(n - 1):
        rest = 3.0 * (n - 1 - i)   # the most the later pairs can contribute
        # s1 + 2 s2 <= 3 s1, so s1 >= (p - rest) / 3; s2 >= 0 gives s1 <= p
        s1 = rng.uniform(max(0.0, (p - rest) / 3.0), min(1.0, p))
        # the later pairs must take p - s1 - 2 s2 <= rest, and s2 <= s1
        s2 = rng.uniform(max(0.0, (p - s1 - rest) / 2.0), min(s1, (p - s1) / 2.0))
        s[i] = s1, s2
        p -= s1 + 2.0 * s2
    # last pair: s1 = p - 2 s2 <= 1 and s2 <= s1 give (p - 1) / 2 <= s2 <= p / 3
    s2 = rng.uniform(max(0.0, (p - 1.0) / 2.0), p / 3.0)
    s[-1] = p - 2.0 * s2, s2
    return s


def _rotations_with_reflections(rng, count):
    """float64 (count, 2, 2): a rotation by a uniform angle times diag(+-1, +-1)."""
    angle = rng.uniform(-math.pi, math.pi, count)
    signs = np.where(rng.random((count, 2)) < 0.5, -1.0, 1.0)
    c, s = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    return rot * signs[:, None, :]


def sample_system(n, sigma, rng, translation=1.0):
    """Maps float64 (n, 6), rows ``a, b, c, d, e, f``, whose sigma-factor is ``sigma``.

    ``A_i = U_i diag(s_i) V_i`` (Anderson & Farrell, WACV 2022, sec. 3.2) with
    ``s`` from ``sample_singular_values``; ``e, f`` uniform in
    ``[-translation, translation]``.  Raises ValueError for bad n, sigma or
    a translation that is not a finite number > 0.
    """
    _check_sigma(n, sigma)
    if not (math.isfinite(translation) and translation > 0):
        raise ValueError(f"translation must be a finite number > 0, got {translation!r}")
    uv = _rotations_with_reflections(rng, 2 * n)
    s = sample_singular_values(n, sigma, rng)
    linear = (uv[:n] * s[:, None, :]) @ uv[n:]      # U diag(s) V
    shift = rng.uniform(-translation, translation, (n, 2))
    return np.column_stack([linear.reshape(n, 4), shift])


def sigma_factor(maps):
    """``sum_i (s1_i + 2 s2_i)`` over the singular values of each map's linear part.

    maps: (N, 6) rows ``a, b, c, d, e, f``.  Returns a float.
    Raises ValueError for another shape.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 2 or maps.shape[1] != 6:
        raise ValueError(f"maps must have shape (N, 6), got {maps.shape}")
    sv = np.linalg.svd(maps[:, :4].reshape(-1, 2, 2), compute_uv=False)
    return float(np.sum(sv[:, 0] + 2.0 * sv[:, 1]))
