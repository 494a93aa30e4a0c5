"""Newton fractals: basins of attraction of Newton's method on random polynomials.

No public formula-supervised generator exists; the design is ours (the seed
report names the family) and is documented in docs/data.md.
- A category is a monic complex polynomial of degree d (uniform in
  [degree_lo, degree_hi]) with roots uniform in the unit disk, plus one
  colour per root (hues evenly spaced from a random offset).
- An instance moves each root by up to ``root_jitter`` x its modulus (a
  relative perturbation), zooms by a factor uniform in [zoom_lo, zoom_hi] and
  shifts the view centre uniformly within +-``centre_shift``.
- Pixel colour: the colour of the root that Newton's iteration
  ``z <- z - p(z) / p'(z)`` reaches, times a shade ``(1 - n / max_iter)^gamma``
  where n counts the iterations before the first step shorter than ``tol``; pixels that
  reach no root within ``max_iter`` iterations are black.
"""
import colorsys
from dataclasses import dataclass

import numba
import numpy as np

from .base import GeneratorBase, build_params
from .rng import KIND_TAGS, numpy_rng

_TAG = KIND_TAGS["newton"]


@dataclass(frozen=True)
class NewtonParams:
    """Newton-fractal parameters (ours; see module docstring and docs/data.md).

    degree_lo, degree_hi: polynomial degree range (3..8).
    root_jitter: relative root perturbation per instance (0.05 = 5%).
    zoom_lo, zoom_hi: zoom factor range; the view half-width is half_width / zoom.
    half_width: view half-width at zoom 1 (complex-plane units).
    centre_shift: the view centre is uniform in [-centre_shift, centre_shift]^2.
    max_iter: Newton iterations per pixel.
    tol: a step shorter than this counts as converged.
    gamma: shading exponent.
    """
    degree_lo: int = 3
    degree_hi: int = 8
    root_jitter: float = 0.05
    zoom_lo: float = 0.5
    zoom_hi: float = 2.0
    half_width: float = 1.5
    centre_shift: float = 0.5
    max_iter: int = 32
    tol: float = 1e-3
    gamma: float = 1.5

    def __post_init__(self):
        if not 2 <= self.degree_lo <= self.degree_hi <= 64:
            raise ValueError(f"need 2 <= degree_lo <= degree_hi <= 64, got "
                             f"{self.degree_lo}, {self.degree_hi}")
        if not 0 < self.zoom_lo <= self.zoom_hi:
            raise ValueError(f"need 0 < zoom_lo <= zoom_hi, got {self.zoom_lo}, {self.zoom_hi}")
        if self.max_iter < 1 or not self.tol > 0 or not self.half_width > 0:
            raise ValueError("max_iter, tol and half_width must be positive")


_BLOCK = 4096  # pixels iterated together (whole rows): the work arrays stay in L2


@numba.njit(cache=True, fastmath=True, nogil=True)
def newton_counts(size, x0, y0, step, cr, ci, max_iter, tol):
    """Newton's method for the polynomial with complex coefficients ``cr + i ci``
    (float32 (d+1,), highest power first) from every pixel of a (size, size) grid
    whose top-left pixel is ``x0 + i y0`` with spacing ``step`` (the imaginary
    part decreases down the rows).

    Returns ``(zr, zi, count)``: float32 (size, size) final iterates and int32
    (size, size) number of iterations before the first step shorter than
    ``tol`` (``max_iter`` if none was).
    """
    deg = cr.shape[0] - 1
    if deg < 1:
        raise ValueError("newton_counts needs a polynomial of degree >= 1")
    npix = size * size
    zr_out = np.empty(npix, np.float32)
    zi_out = np.empty(npix, np.float32)
    cnt_out = np.empty(npix, np.int32)
    tol2 = np.float32(tol * tol)
    tiny = np.float32(1e-30)
    cap = max(_BLOCK, size)
    idx = np.empty(cap, np.int64)
    zr = np.empty(cap, np.float32)
    zi = np.empty(cap, np.float32)
    pr = np.empty(cap, np.float32)
    pi = np.empty(cap, np.float32)
    dr = np.empty(cap, np.float32)
    di = np.empty(cap, np.float32)
    first = np.empty(cap, np.float32)  # iteration of the first step < tol (fmax: none yet)
    fmax = np.float32(max_iter)
    rows_per_block = max(1, _BLOCK // size)
    for row0 in range(0, size, rows_per_block):
        n = 0
        # whole rows per block: no integer division to find a pixel's row
        for row in range(row0, min(row0 + rows_per_block, size)):
            y = np.float32(y0 - row * step)
            for col in range(size):
                idx[n] = row * size + col
                first[n] = fmax
                zr[n] = np.float32(x0 + col * step)
                zi[n] = y
                n += 1
        for it in range(max_iter):
            fit = np.float32(it)
            # Only unfinished pixels are iterated (most converge in < 10
            # steps, a fractal boundary never does); the loops over them are
            # branch-free so LLVM vectorises them.
            # Horner for p and p' together: p' <- p' z + p, p <- p z + c_k,
            # starting after the first step (p = c0 z + c1, p' = c0)
            c0r = cr[0]
            c0i = ci[0]
            c1r = cr[1]
            c1i = ci[1]
            for j in range(n):
                pr[j] = c0r * zr[j] - c0i * zi[j] + c1r
                pi[j] = c0r * zi[j] + c0i * zr[j] + c1i
                dr[j] = c0r
                di[j] = c0i
            for k in range(2, deg + 1):
                ckr = cr[k]
                cki = ci[k]
                for j in range(n):
                    a = zr[j]
                    b = zi[j]
                    tr = dr[j] * a - di[j] * b + pr[j]
                    di[j] = dr[j] * b + di[j] * a + pi[j]
                    dr[j] = tr
                    tr = pr[j] * a - pi[j] * b + ckr
                    pi[j] = pr[j] * b + pi[j] * a + cki
                    pr[j] = tr
            done = np.float32(0.0)
            for j in range(n):
                # p'(z) == 0 (a critical point) gives p * conj(p') = 0: no move
                den = max(dr[j] * dr[j] + di[j] * di[j], tiny)
                inv = np.float32(1.0) / den
                sr = (pr[j] * dr[j] + pi[j] * di[j]) * inv
                si = (pi[j] * dr[j] - pr[j] * di[j]) * inv
                zr[j] -= sr
                zi[j] -= si
                # float32 bookkeeping keeps the loop in one vector type
                # (int/bool mixing here made it 2.7x slower)
                f = first[j]
                f = fit if (sr * sr + si * si < tol2) and (f == fmax) else f
                first[j] = f
                done += np.float32(1.0) if f != fmax else np.float32(0.0)
            # Compact (drop converged pixels) only once 1/8 of the active ones
            # have converged: compaction per iteration cost more than the
            # extra Newton steps of a few finished pixels (which only move
            # them closer to their root; their count is already fixed).
            if 8 * done >= n or it == max_iter - 1:
                w = 0
                for j in range(n):  # branch-free: w advances for unfinished pixels
                    p = idx[j]
                    zr_out[p] = zr[j]
                    zi_out[p] = zi[j]
                    cnt_out[p] = np.int32(first[j])
                    idx[w] = p
                    zr[w] = zr[j]
                    zi[w] = zi[j]
                    first[w] = first[j]
                    w += first[j] == fmax
                n = w
                if n == 0:
                    break
    return zr_out.reshape(size, size), zi_out.reshape(size, size), cnt_out.reshape(size, size)


def shade_table(palette, max_iter, gamma):
    """uint8 (d, max_iter + 1, 3): colour of root k after n iterations,
    ``palette[k] * (1 - n / max_iter) ** gamma`` (palette float32 (d, 3) in [0, 255])."""
    v = (1.0 - np.arange(max_iter + 1) / max_iter) ** gamma
    return np.round(palette[:, None, :] * v[None, :, None]).astype(np.uint8)


@numba.njit(cache=True, nogil=True)
def shade(zr, zi, cnt, roots_r, roots_i, table, radius):
    """Colour pixels by nearest root: uint8 (S, S, 3) with ``table[root, count]``.

    A pixel whose final iterate is farther than ``radius`` from every root
    (not converged) is black.  zr, zi float32 (S, S); cnt int32 (S, S);
    roots_r, roots_i float32 (d,); table from ``shade_table``.
    """
    size = zr.shape[0]
    out = np.zeros((size, size, 3), np.uint8)
    r2max = radius * radius
    for r in range(size):
        for c in range(size):
            best = 0
            bestd = np.inf
            for k in range(roots_r.shape[0]):
                dx = zr[r, c] - roots_r[k]
                dy = zi[r, c] - roots_i[k]
                d2 = dx * dx + dy * dy
                if d2 < bestd:
                    bestd = d2
                    best = k
            if bestd <= r2max:
                n = cnt[r, c]
                out[r, c, 0] = table[best, n, 0]
                out[r, c, 1] = table[best, n, 1]
                out[r, c, 2] = table[best, n, 2]
    return out


class NewtonGenerator(GeneratorBase):
    """Newton-fractal images: uint8 (size, size, 3); unbounded instances.

    No published dataset fixes a size, so the render size is ours: 256 px, the
    size of every Newton speed figure in docs/performance.md.  Basin
    boundaries are fractal, so a 32 px image sampled straight aliases them;
    256 -> 32 averages 8x8 samples per pixel, and every training size up to
    256 px sees the same drawing.
    """

    kind = "newton"
    published_render_size = 256

    def __init__(self, num_classes, size, seed=0, params=None, render_size=None,
                 resample="box", **overrides):
        super().__init__(num_classes, size, seed, render_size, resample)
        self.params = build_params(NewtonParams, params, overrides)
        self._categories = {}

    def category(self, class_id):
        """``(roots complex128 (d,), palette float32 (d, 3))`` from ``(seed, class_id)`` only."""
        if class_id not in self._categories:
            p = self.params
            rng = numpy_rng(self.seed, class_id, _TAG)
            d = int(rng.integers(p.degree_lo, p.degree_hi + 1))
            # uniform in the disk: radius sqrt(U), angle uniform
            roots = np.sqrt(rng.random(d)) * np.exp(2j * np.pi * rng.random(d))
            h0 = rng.random()
            sat = rng.uniform(0.5, 0.9, d)
            palette = np.array([colorsys.hsv_to_rgb((h0 + i / d) % 1.0, sat[i], 1.0)
                                for i in range(d)], np.float32) * 255.0
            self._categories[class_id] = (roots, palette)
        return self._categories[class_id]

    def instance(self, class_id, instance_id):
        """``(roots complex128 (d,), zoom, centre complex)`` of one instance."""
        p = self.params
        roots, _ = self.category(class_id)
        rng = numpy_rng(self.seed, class_id, instance_id, _TAG, 1)
        d = len(roots)
        jitter = p.root_jitter * np.abs(roots) * np.sqrt(rng.random(d)) * np.exp(
            2j * np.pi * rng.random(d))
        zoom = float(rng.uniform(p.zoom_lo, p.zoom_hi))
        centre = complex(*rng.uniform(-p.centre_shift, p.centre_shift, 2))
        return roots + jitter, zoom, centre

    def draw(self, class_id, instance_id):
        """The image at render_size: uint8 (R, R, 3) (ids checked by the caller)."""
        p = self.params
        _, palette = self.category(class_id)
        roots, zoom, centre = self.instance(class_id, instance_id)
        coeffs = np.poly(roots)
        half = p.half_width / zoom
        step = 2.0 * half / (self.render_size - 1)
        zr, zi, cnt = newton_counts(self.render_size, centre.real - half, centre.imag + half, step,
                                    coeffs.real.astype(np.float32),
                                    coeffs.imag.astype(np.float32), p.max_iter, p.tol)
        # converged iterates sit within ~tol of a root; 10x is slack for float32
        return shade(zr, zi, cnt, roots.real.astype(np.float32), roots.imag.astype(np.float32),
                     shade_table(palette, p.max_iter, p.gamma), np.float32(10 * p.tol + 1e-3))

    def metadata(self, class_id, instance_id):
        """JSON-serialisable generation parameters of one instance."""
        class_id, instance_id = self._check_ids(class_id, instance_id)
        roots, zoom, centre = self.instance(class_id, instance_id)
        _, palette = self.category(class_id)
        return {"kind": self.kind, "seed": self.seed, "class_id": class_id,
                "instance_id": instance_id, **self.sizes(), "degree": len(roots),
                "roots": [[float(r.real), float(r.imag)] for r in roots],
                "zoom": zoom, "centre": [centre.real, centre.imag],
                "palette": palette.round(3).tolist(), "max_iter": self.params.max_iter}
