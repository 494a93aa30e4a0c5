"""VisualAtom: categories of sinusoidal-wave "atoms" (Takashima et al., CVPR 2023).

Takashima, Hayamizu, Inoue, Kataoka, Yokota, "Visual Atoms: Pre-training
Vision Transformers with Sinusoidal Waves", CVPR 2023, sec. 3, with the
parameters of the released ``visual_atomic_renderer/make_VisualAtom.sh``.  The
drawing follows the released ``render_VisualAtom.py`` (our code, same
construction; lengths are pixels at 512 px and scale with the render size):

- the V vertices start on an oval ``(cx + r0 ox cos t, cy + r0 oy sin t)``,
  ``t = 2 pi v / V``;
- each of the O orbits moves every vertex outward from where the previous
  orbit left it: ``x -= cos t (nx - w)``, ``y -= sin t (ny - w)`` with
  ``n = c pnoise1(u) - c - 0.5 sin(n1 t) - 0.5 sin(n2 t)``, a fresh
  ``u ~ U[0, 10000)`` per vertex, axis and orbit (``pnoise1``: synth/perlin.py,
  the ``noise`` package's function) and w the line-width parameter;
- the orbit is drawn as a closed 1-px polyline in a grey uniform in 0..255
  (0 is invisible but still moves the vertices).

The orbits therefore step out by about c px each, and the sinusoidal terms
accumulate into the waves of the category.  The centre is uniform over the
image, so atoms are often cut by the border, as in the published images.
"""
from dataclasses import dataclass

import numba
import numpy as np

from .base import GeneratorBase, build_params
from .perlin import pnoise1
from .raster import draw_line
from .rng import KIND_TAGS, kernel_seed, numpy_rng, splitmix64, unit_float

_TAG = KIND_TAGS["visualatom"]
PUBLISHED_SIZE = 512   # render_VisualAtom.py --image_size


@dataclass(frozen=True)
class VisualAtomParams:
    """Ranges of VisualAtom parameters, as ``make_VisualAtom.sh`` sets them.

    vertices: polyline vertices V, uniform integer in [lo, hi] (200..1000).
    orbits: orbits O per atom, uniform integer in [lo, hi] (1..200).
    perlin: Perlin coefficient c, uniform in [lo, hi] (0..4).
    line_width: w, uniform in [lo, hi] (0..0.1; an outward offset per orbit).
    start_radius: r0 in pixels at 512 px, uniform integer in [lo, hi] (10..60).
    oval: x and y oval rates, each uniform in [lo, hi] (1..2).
    frequency: n1, n2 uniform integers in [lo, hi] (0..20); n2 != n1 unless
        n1 = 0 (the released script's rule).
    grey: orbit grey levels, uniform integers in [lo, hi] (0..255).
    start_pos: the centre is ``(512 + U{-start_pos..start_pos}) / 2`` pixels at
        512 px on each axis (512: anywhere in the image).
    Raises ValueError for an empty range, V < 3, O < 1, greys outside
    0..255 or start_pos < 0.
    """
    vertices: tuple = (200, 1000)
    orbits: tuple = (1, 200)
    perlin: tuple = (0.0, 4.0)
    line_width: tuple = (0.0, 0.1)
    start_radius: tuple = (10, 60)
    oval: tuple = (1.0, 2.0)
    frequency: tuple = (0, 20)
    grey: tuple = (0, 255)
    start_pos: int = 512

    def __post_init__(self):
        for name in ("vertices", "orbits", "perlin", "line_width", "start_radius", "oval",
                     "frequency", "grey"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(f"{name} range must have lo <= hi, got {(lo, hi)}")
        if self.vertices[0] < 3 or self.orbits[0] < 1:
            raise ValueError(f"need >= 3 vertices and >= 1 orbit, got {self.vertices}, {self.orbits}")
        if self.frequency[1] - self.frequency[0] < 1:
            raise ValueError(f"frequency range must hold two distinct integers, got {self.frequency}")
        if not (0 <= self.grey[0] and self.grey[1] <= 255):
            raise ValueError(f"grey range must lie in [0, 255], got {self.grey}")
        if self.start_pos < 0:
            raise ValueError(f"start_pos must be >= 0, got {self.start_pos}")


@numba.njit(cache=True, nogil=True)
def draw_atom(img, cx, cy, r0x, r0y, coef, width, n1, n2, nv, greys, seed, scale):
    """Draw one atom into uint8 (S, S) ``img`` (construction in the module docstring).

    cx, cy: centre; r0x, r0y: start radii r0*ox, r0*oy (pixels at 512 px);
    coef: c; width: w; n1, n2: frequencies; nv: vertices V; greys: uint8
    (O,) one per orbit; seed: uint64 SplitMix64 seed of the noise inputs;
    scale: S / 512 (pixels per published pixel).
    """
    size = img.shape[0]
    theta = 2.0 * np.pi * np.arange(nv) / nv
    cos_t = np.cos(theta)
    sin_t = np.sin(theta)
    wave = -0.5 * np.sin(theta * n1) - 0.5 * np.sin(theta * n2)
    vx = cos_t * r0x + cx
    vy = sin_t * r0y + cy
    px = np.empty(nv)
    py = np.empty(nv)
    state = seed
    lo = -1.0
    hi = size + 1.0
    for k in range(greys.shape[0]):
        for v in range(nv):
            state, z = splitmix64(state)
            nx = pnoise1(unit_float(z) * 10000.0) * coef - coef + wave[v]
            state, z = splitmix64(state)
            ny = pnoise1(unit_float(z) * 10000.0) * coef - coef + wave[v]
            vx[v] -= cos_t[v] * (nx - width)
            vy[v] -= sin_t[v] * (ny - width)
            px[v] = vx[v] * scale
            py[v] = vy[v] * scale
        g = greys[k]
        if g == 0:
            continue
        for v in range(nv):
            w = v + 1 if v + 1 < nv else 0   # the last segment closes the orbit
            x0, y0, x1, y1 = px[v], py[v], px[w], py[w]
            # both ends beyond one border: nothing to draw (most of a large atom)
            if (x0 < lo and x1 < lo) or (x0 > hi and x1 > hi) or \
                    (y0 < lo and y1 < lo) or (y0 > hi and y1 > hi):
                continue
            draw_line(img, x0, y0, x1, y1, 0, g)


class VisualAtomGenerator(GeneratorBase):
    """VisualAtom images: uint8 (size, size, 3), grey on black, drawn at
    ``render_size`` (published: 512 px) and shrunk to ``size``; unbounded
    instances."""

    kind = "visualatom"
    published_render_size = PUBLISHED_SIZE

    def __init__(self, num_classes, size, seed=0, params=None, render_size=None,
                 resample="box", **overrides):
        super().__init__(num_classes, size, seed, render_size, resample)
        self.params = build_params(VisualAtomParams, params, overrides)
        self._categories = {}

    def category(self, class_id):
        """Category parameters of ``class_id`` (dict), drawn from ``(seed, class_id)`` only."""
        if class_id not in self._categories:
            p = self.params
            rng = numpy_rng(self.seed, class_id, _TAG)
            lo, hi = p.frequency
            n1 = int(rng.integers(lo, hi + 1))
            n2 = int(rng.integers(lo, hi + 1))
            while n2 == n1 and n1 != 0:
                n2 = int(rng.integers(lo, hi + 1))
            self._categories[class_id] = {
                "vertices": int(rng.integers(p.vertices[0], p.vertices[1] + 1)),
                "orbits": int(rng.integers(p.orbits[0], p.orbits[1] + 1)),
                "perlin": float(rng.uniform(*p.perlin)),
                "line_width": float(rng.uniform(*p.line_width)),
                "start_radius": int(rng.integers(p.start_radius[0], p.start_radius[1] + 1)),
                "oval": [float(rng.uniform(*p.oval)), float(rng.uniform(*p.oval))],
                "n1": n1, "n2": n2,
            }
        return self._categories[class_id]

    def centre(self, class_id, instance_id):
        """Atom centre ``[x, y]`` in pixels at 512 px (floats, multiples of 0.5)."""
        rng = numpy_rng(self.seed, class_id, instance_id, _TAG, 1)
        s = self.params.start_pos
        return ((PUBLISHED_SIZE + rng.integers(-s, s + 1, 2)) / 2.0).tolist()

    def draw_custom(self, category, centre, class_id, instance_id):
        """Draw ``category`` (dict as from ``category``) at ``centre`` ([x, y],
        pixels at 512 px) with the orbit greys and noise of ``(class_id,
        instance_id)``: uint8 (R, R) at render_size.  The fidelity benchmark
        uses it to draw published categories at published centres."""
        rng = numpy_rng(self.seed, class_id, instance_id, _TAG, 2)
        greys = rng.integers(self.params.grey[0], self.params.grey[1] + 1,
                             int(category["orbits"])).astype(np.uint8)
        seed = kernel_seed(self.seed, class_id, instance_id, _TAG, 3)
        r = self.render_size
        img = np.zeros((r, r), np.uint8)
        ox, oy = category["oval"]
        r0 = float(category["start_radius"])
        draw_atom(img, float(centre[0]), float(centre[1]), r0 * ox, r0 * oy,
                  float(category["perlin"]), float(category["line_width"]), int(category["n1"]),
                  int(category["n2"]), int(category["vertices"]), greys, seed,
                  r / PUBLISHED_SIZE)
        return img

    def draw(self, class_id, instance_id):
        """The image at render_size: uint8 (R, R) (ids checked by the caller)."""
        return self.draw_custom(self.category(class_id), self.centre(class_id, instance_id),
                                class_id, instance_id)

    def metadata(self, class_id, instance_id):
        """JSON-serialisable generation parameters of one instance."""
        class_id, instance_id = self._check_ids(class_id, instance_id)
        return {"kind": self.kind, "seed": self.seed, "class_id": class_id,
                "instance_id": instance_id, **self.sizes(), **self.category(class_id),
                "centre": self.centre(class_id, instance_id)}
