"""VisualAtom: categories of sinusoidal-wave "atoms" (Takashima et al., CVPR 2023).

Takashima, Hayamizu, Inoue, Kataoka, Yokota, "Visual Atoms: Pre-training
Vision Transformers with Sinusoidal Waves", CVPR 2023, sec. 3.  A category
fixes the wave frequencies and shape parameters; an atom is a set of
concentric closed orbits, each displaced radially by

    d(theta) = c * perlin(u) - c - 0.5 sin(n1 theta) - 0.5 sin(n2 theta)

and drawn as a polyline in a random grey on black.  Interpretation choices
where the paper leaves units open (documented in docs/data.md):
- orbit k has base radius ``r0 + k`` (orbit spacing 1 in atom units);
- the atom is scaled so its largest possible radius ``(r0 + O + 1) * max(oval)``
  is ``fill`` x image size, then centred at a random point;
- perlin(u) has ``noise_period`` lattice cells around each orbit, with new
  gradients per orbit and instance;
- line width w in [0, 0.1] draws strokes ``1 + floor(w * 0.04 * size)`` pixels
  wide (1..3 px at 512 px).
"""
from dataclasses import dataclass

import numba
import numpy as np

from .base import GeneratorBase, build_params, grey_to_rgb
from .perlin import perlin1d, random_gradients
from .raster import draw_line
from .rng import KIND_TAGS, numpy_rng

_TAG = KIND_TAGS["visualatom"]


@dataclass(frozen=True)
class VisualAtomParams:
    """Ranges of VisualAtom category parameters (Takashima et al., CVPR 2023, sec. 3.2).

    vertices: polyline vertices per orbit, uniform integer in [lo, hi] (200..1000).
    orbits: orbits per atom, uniform integer in [lo, hi] (1..200).
    perlin: Perlin-noise coefficient c, uniform in [lo, hi] ([0, 4]).
    line_width: w, uniform in [lo, hi] ([0, 0.1]).
    start_radius: r0, uniform in [lo, hi] ([0, 50]).
    oval: x and y oval rates, each uniform in [lo, hi] ([1, 2]).
    frequency: n1 != n2, distinct integers uniform in [lo, hi] (0..20).
    noise_period: Perlin lattice cells around one orbit.
    fill: the atom's largest radius as a fraction of the image size.
    centre_jitter: the centre is uniform in size * (0.5 +- centre_jitter).
    grey: orbit grey levels, uniform integers in [lo, hi].
    """
    vertices: tuple = (200, 1000)
    orbits: tuple = (1, 200)
    perlin: tuple = (0.0, 4.0)
    line_width: tuple = (0.0, 0.1)
    start_radius: tuple = (0.0, 50.0)
    oval: tuple = (1.0, 2.0)
    frequency: tuple = (0, 20)
    noise_period: int = 8
    fill: float = 0.45
    centre_jitter: float = 0.1
    grey: tuple = (64, 255)

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
        if self.noise_period < 1:
            raise ValueError(f"noise_period must be >= 1, got {self.noise_period}")
        if not (0 <= self.grey[0] and self.grey[1] <= 255):
            raise ValueError(f"grey range must lie in [0, 255], got {self.grey}")


@numba.njit(cache=True, nogil=True)
def draw_atom(img, cx, cy, sx, sy, radii, greys, grads, cos_t, sin_t, wave, coef, half):
    """Draw all orbits of one atom into uint8 (S, S) ``img``.

    cx, cy: centre (pixels); sx, sy: pixels per atom unit along x and y (scale
    times oval rate); radii float64 (O,); greys uint8 (O,); grads float64
    (O, P) Perlin gradients; cos_t, sin_t, wave float64 (V,) per-vertex
    cos(theta), sin(theta) and ``-0.5 sin(n1 theta) - 0.5 sin(n2 theta)``;
    coef: Perlin coefficient c; half: stroke half-width in pixels.
    """
    nv = cos_t.shape[0]
    period = grads.shape[1]
    for k in range(radii.shape[0]):
        g = grads[k]
        px = 0.0
        py = 0.0
        for j in range(nv + 1):
            jj = j % nv          # vertex nv closes the orbit onto vertex 0
            u = period * jj / nv
            r = radii[k] + coef * perlin1d(u, g) - coef + wave[jj]
            if r < 0.0:
                r = 0.0
            x = cx + sx * r * cos_t[jj]
            y = cy - sy * r * sin_t[jj]
            if j > 0:
                draw_line(img, px, py, x, y, half, greys[k])
            px = x
            py = y


class VisualAtomGenerator(GeneratorBase):
    """VisualAtom images: uint8 (size, size, 3), grey on black; unbounded instances."""

    kind = "visualatom"

    def __init__(self, num_classes, size, seed=0, params=None, **overrides):
        super().__init__(num_classes, size, seed)
        self.params = build_params(VisualAtomParams, params, overrides)
        self._categories = {}

    def category(self, class_id):
        """Category parameters of ``class_id`` (dict), drawn from ``(seed, class_id)`` only."""
        if class_id not in self._categories:
            p = self.params
            rng = numpy_rng(self.seed, class_id, _TAG)
            n1, n2 = rng.choice(np.arange(p.frequency[0], p.frequency[1] + 1), 2, replace=False)
            self._categories[class_id] = {
                "vertices": int(rng.integers(p.vertices[0], p.vertices[1] + 1)),
                "orbits": int(rng.integers(p.orbits[0], p.orbits[1] + 1)),
                "perlin": float(rng.uniform(*p.perlin)),
                "line_width": float(rng.uniform(*p.line_width)),
                "start_radius": float(rng.uniform(*p.start_radius)),
                "oval": [float(rng.uniform(*p.oval)), float(rng.uniform(*p.oval))],
                "n1": int(n1), "n2": int(n2),
            }
        return self._categories[class_id]

    def _instance(self, class_id, instance_id):
        """Per-instance randomness: centre (pixels), greys uint8 (O,), gradients (O, P)."""
        cat = self.category(class_id)
        p = self.params
        rng = numpy_rng(self.seed, class_id, instance_id, _TAG, 1)
        centre = self.size * (0.5 + rng.uniform(-p.centre_jitter, p.centre_jitter, 2))
        greys = rng.integers(p.grey[0], p.grey[1] + 1, cat["orbits"]).astype(np.uint8)
        grads = random_gradients(rng, (cat["orbits"], p.noise_period))
        return centre, greys, grads

    def render_native(self, class_id, instance_id):
        """The image as uint8 (size, size): VisualAtom is grey."""
        class_id, instance_id = self._check_ids(class_id, instance_id)
        cat = self.category(class_id)
        centre, greys, grads = self._instance(class_id, instance_id)
        theta = 2.0 * np.pi * np.arange(cat["vertices"]) / cat["vertices"]
        wave = -0.5 * np.sin(cat["n1"] * theta) - 0.5 * np.sin(cat["n2"] * theta)
        radii = cat["start_radius"] + np.arange(cat["orbits"], dtype=np.float64)
        ox, oy = cat["oval"]
        scale = self.params.fill * self.size / ((radii[-1] + 1.0) * max(ox, oy))
        half = int(cat["line_width"] * 0.04 * self.size) // 2
        img = np.zeros((self.size, self.size), np.uint8)
        draw_atom(img, centre[0], centre[1], scale * ox, scale * oy, radii, greys, grads,
                  np.cos(theta), np.sin(theta), wave, cat["perlin"], half)
        return img

    def render(self, class_id, instance_id):
        """Image of ``(class_id, instance_id)``: uint8 (size, size, 3)."""
        return grey_to_rgb(self.render_native(class_id, instance_id))

    def metadata(self, class_id, instance_id):
        """JSON-serialisable generation parameters of one instance."""
        class_id, instance_id = self._check_ids(class_id, instance_id)
        centre, _, _ = self._instance(class_id, instance_id)
        return {"kind": self.kind, "seed": self.seed, "class_id": class_id,
                "instance_id": instance_id, "size": self.size, **self.category(class_id),
                "centre": centre.tolist(), "noise_period": self.params.noise_period}
