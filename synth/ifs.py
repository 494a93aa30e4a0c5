"""Iterated function systems: chaos game, rasteriser and filling rate (Numba).

An IFS is N affine maps ``w_i(x, y) = (a x + b y + e, c x + d y + f)`` chosen
with probabilities ``p_i``.  The chaos game (Barnsley, "Fractals Everywhere",
1988, ch. III.8) iterates a random map from (0, 0); the visited points
approximate the attractor.  FractalDB (Kataoka et al., ACCV 2020, sec. 3.1)
rescales the orbit min-max into the image and measures the *filling rate*,
lit pixels / all pixels, to accept a system as a category.

Column order ``a, b, c, d, e, f`` is the public FractalDB CSV order.
"""
from dataclasses import dataclass

import numba
import numpy as np

from .rng import splitmix64, unit_float

# An orbit that leaves this box is treated as divergent (the system is not
# contractive on average); real attractors of maps with |params| <= ~2 stay
# within a few units.
_DIVERGED = 1e8


@dataclass(frozen=True)
class IFSystem:
    """An iterated function system.

    maps: float64 array (N, 6), rows ``a, b, c, d, e, f``, 1 <= N <= 255.
    probs: float64 array (N,), non-negative, summing to 1.
    Raises ValueError for other shapes, non-finite values or bad probabilities.
    """
    maps: np.ndarray
    probs: np.ndarray

    def __post_init__(self):
        maps = np.ascontiguousarray(self.maps, dtype=np.float64)
        probs = np.ascontiguousarray(self.probs, dtype=np.float64)
        if maps.ndim != 2 or maps.shape[1] != 6 or not 1 <= maps.shape[0] <= 255:
            # the renderer stores map index + 1 in a byte
            raise ValueError(f"maps must have shape (N, 6) with 1 <= N <= 255, got {maps.shape}")
        if probs.shape != (maps.shape[0],):
            raise ValueError(f"probs must have shape ({maps.shape[0]},), got {probs.shape}")
        if not (np.all(np.isfinite(maps)) and np.all(np.isfinite(probs))):
            raise ValueError("maps and probs must be finite")
        if np.any(probs < 0) or not abs(probs.sum() - 1.0) < 1e-6:
            raise ValueError(f"probs must be >= 0 and sum to 1, got {probs.tolist()}")
        object.__setattr__(self, "maps", maps)
        object.__setattr__(self, "probs", probs)

    @property
    def num_maps(self):
        return self.maps.shape[0]

    @staticmethod
    def det_probs(maps):
        """FractalDB map probabilities, ``p_i = |det A_i| / sum_j |det A_j|`` (sec. 3.1).

        Returns None when every determinant is 0 (a degenerate system).
        """
        maps = np.asarray(maps, dtype=np.float64)
        det = np.abs(maps[:, 0] * maps[:, 3] - maps[:, 1] * maps[:, 2])
        total = det.sum()
        if not total > 0:
            return None
        return det / total


@numba.njit(cache=True, nogil=True)
def chaos_game(maps, cum_probs, num_points, seed, discard):
    """Run the chaos game from (0, 0).

    maps: float64 (N, 6); cum_probs: float64 (N,) cumulative probabilities;
    seed: uint64 start of the SplitMix64 stream.  The first ``discard``
    iterates are dropped (they lie off the attractor).
    Returns ``(xs, ys, ks, bounds, count)``: float64 (P,) coordinates, uint8
    (P,) index of the map that produced each point, float64 (4,) ``xmin, xmax,
    ymin, ymax`` of the stored points, and the number of points stored:
    ``count < num_points`` means the orbit diverged or became NaN and only
    ``xs[:count]`` are valid.
    """
    n = maps.shape[0]
    xs = np.empty(num_points, np.float64)
    ys = np.empty(num_points, np.float64)
    ks = np.empty(num_points, np.uint8)
    # bounds live in scalars: an array cell would put a store->load round trip
    # on the loop-carried path
    xlo, xhi, ylo, yhi = np.inf, -np.inf, np.inf, -np.inf
    state = seed
    x = 0.0
    y = 0.0
    for it in range(num_points + discard):
        state, z = splitmix64(state)
        u = unit_float(z)
        # branch-free map choice: a data-dependent while loop mispredicts on
        # almost every point
        k = 0
        for j in range(n - 1):
            k += u >= cum_probs[j]
        nx = maps[k, 0] * x + maps[k, 1] * y + maps[k, 4]
        y = maps[k, 2] * x + maps[k, 3] * y + maps[k, 5]
        x = nx
        # comparisons with NaN are False, so NaN orbits are caught too
        if not (abs(x) < _DIVERGED and abs(y) < _DIVERGED):
            return xs, ys, ks, np.array([xlo, xhi, ylo, yhi]), max(it - discard, 0)
        if it >= discard:
            j = it - discard
            xs[j] = x
            ys[j] = y
            ks[j] = k
            xlo = min(xlo, x)
            xhi = max(xhi, x)
            ylo = min(ylo, y)
            yhi = max(yhi, y)
    return xs, ys, ks, np.array([xlo, xhi, ylo, yhi]), num_points


@numba.njit(cache=True)
def _pixel_scale(lo, hi, size, pad):
    """Min-max map of [lo, hi] onto pixel indices [pad, size-1-pad] -> scale (0 if hi == lo)."""
    span = hi - lo
    return (size - 1 - 2 * pad) / span if span > 0 else 0.0


_BATCH = 512


@numba.njit(cache=True, nogil=True)
def mark_points(mark, size, xs, ys, ks, bounds, pad):
    """Mark the pixel of each point: ``mark[row * size + col] = ks[i] + 1``.

    mark: uint8 (size*size,) zero-initialised; points are rescaled min-max per
    axis into [pad, size-1-pad]; row 0 is the top (largest y).  A pixel hit
    by several points keeps the map of the last one.
    """
    x0 = bounds[0]
    y0 = bounds[2]
    sx = _pixel_scale(bounds[0], bounds[1], size, pad)
    sy = _pixel_scale(bounds[2], bounds[3], size, pad)
    # Addresses are computed for a batch first and stored after: with the
    # float->index arithmetic and the byte store in one loop, every store
    # waited on its address chain (measured 2x slower).
    buf = np.empty(_BATCH, np.int64)
    n = xs.shape[0]
    for start in range(0, n, _BATCH):
        stop = min(start + _BATCH, n)
        for i in range(start, stop):
            col = pad + int((xs[i] - x0) * sx + 0.5)
            row = size - 1 - pad - int((ys[i] - y0) * sy + 0.5)
            buf[i - start] = row * size + col
        for i in range(stop - start):
            mark[buf[i]] = ks[start + i] + 1


@numba.njit(cache=True, nogil=True)
def _stamp_marks(flat, mark, nch, offsets, lut):
    """Write the patch of every marked pixel, in raster order (see ``stamp_points``)."""
    for p in range(mark.shape[0]):
        k = mark[p]
        if k != 0:
            base = p * nch
            for m in range(offsets.shape[0]):
                for ch in range(nch):
                    flat[base + offsets[m] + ch] = lut[k - 1, m, ch]


def stamp_points(size, xs, ys, ks, bounds, patch, colours):
    """Render points as 3x3 patches: returns uint8 (size, size, C), C = colours.shape[1].

    Points (xs, ys float64 (P,), ks uint8 (P,) map indices, bounds from
    ``chaos_game``) are rescaled min-max per axis into [1, size-2] so the
    patch stays inside.  Each lit pixel stamps ``colours[k, ch] * patch[dy,
    dx] // 255`` (patch uint8 (3, 3), 0 = unlit; colours uint8 (N, C)) around
    itself, pixels in raster order, so overlapping patches resolve the same
    way on every run.  FractalDB draws each point's patch in orbit order;
    stamping each distinct pixel once (about 50k of 200k points at 362 px)
    is the same picture for a uniform patch and several times faster.
    Raises ValueError for size < 3.
    """
    if size < 3:
        raise ValueError(f"image size must be >= 3 for a 3x3 patch, got {size}")
    nch = colours.shape[1]
    mark = np.zeros(size * size, np.uint8)
    mark_points(mark, size, xs, ys, ks, bounds, 1)
    dy, dx = np.nonzero(patch)
    vals = patch[dy, dx].astype(np.int32)
    lut = (colours.astype(np.int32)[:, None, :] * vals[None, :, None]) // 255
    offsets = (((dy - 1) * size + (dx - 1)) * nch).astype(np.int64)
    img = np.zeros((size, size, nch), np.uint8)
    _stamp_marks(img.reshape(-1), mark, nch, offsets, lut.astype(np.uint8))
    return img


def point_coverage(xs, ys, bounds, size):
    """Filling rate of single-pixel points rescaled min-max into a (size, size) grid.

    Returns lit pixels / size**2 (float), or 0.0 when the orbit collapses to a
    line or a point (zero extent on an axis).
    """
    if not (bounds[1] > bounds[0] and bounds[3] > bounds[2]):
        return 0.0
    mark = np.zeros(size * size, np.uint8)
    mark_points(mark, size, xs, ys, np.zeros(len(xs), np.uint8), bounds, 0)
    return np.count_nonzero(mark) / (size * size)


def cumulative(probs):
    """Cumulative probabilities for ``chaos_game`` (last entry forced to 1)."""
    cum = np.cumsum(np.asarray(probs, dtype=np.float64))
    cum[-1] = 1.0
    return cum


def filling_rate(system, num_points, size, seed, discard=20):
    """Filling rate of ``system`` (IFSystem) on a ``size`` x ``size`` grid.

    ``num_points`` chaos-game points after ``discard`` dropped ones; ``seed``
    is the uint64 chaos-game seed.  Divergent or NaN orbits give 0.0.
    """
    xs, ys, _, bounds, count = chaos_game(system.maps, cumulative(system.probs), num_points,
                                          np.uint64(seed), discard)
    if count < num_points:
        return 0.0
    return float(point_coverage(xs, ys, bounds, size))


def accepted_system(maps, chaos_seed, params):
    """``IFSystem`` of ``maps`` if it passes the FractalDB search test, else None.

    Rejected: all determinants 0 (no probabilities), or a filling rate below
    ``params.threshold`` (``search_points`` points from ``chaos_seed`` on a
    ``search_size`` grid, ``discard`` dropped first; Kataoka et al. 2020, sec. 3.2).
    Shared by the FractalDB category search and the 1p-frac base search.
    """
    probs = IFSystem.det_probs(maps)
    if probs is None:
        return None
    system = IFSystem(maps, probs)
    if filling_rate(system, params.search_points, params.search_size, chaos_seed,
                    params.discard) < params.threshold:
        return None
    return system
