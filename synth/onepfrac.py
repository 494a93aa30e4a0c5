"""1p-frac: every class is a small perturbation of one fractal.

Nakamura et al., "Scaling Backwards: Minimal Synthetic Pre-training?", ECCV
2024 (arXiv 2408.00677), section 3: one IFS with N = 2 maps is drawn with the
sigma-factor sampler (Anderson & Farrell, WACV 2022; ``synth.sigma_factor``),
and class ``c`` is that system with its parameters perturbed by a random
``eps`` of size ``Delta``.  The Delta sweep (their table on Delta: 0.01 ->
19.9, 0.05 -> 83.0, 0.1 -> 84.2, 0.2 -> 83.4 CIFAR-100 fine-tuning top-1)
shows that Delta sets how hard the classes are to tell apart.

The perturbation has two published forms, and they differ:

* the paper: additive, ``theta' = theta + eps`` with every one of a..f of
  every map perturbed by ``eps ~ U[-Delta/2, Delta/2]``
  (``perturbation="additive"``, **the default here**);
* the released code (SUPER-TADORY/1p-frac, ``render_from_oneparam_mp.py``):
  multiplicative, each of a..f of each map times ``U(1 - Delta, 1 + Delta)``
  (``perturbation="multiplicative"``).  For the same Delta its changes are
  ``|theta| * 2 Delta`` wide instead of ``Delta``: larger for parameters
  above 1/2 in magnitude, smaller below, and zero for a zero parameter.

Choices the code makes and the paper leaves open, each following the
released code unless said otherwise:

* sigma-factor within ``sigma_margin`` (0.1) of ``sigma`` (released
  ``generate.sh``: sigma = 4.0; its argparse default is 3.5);
* map probabilities ``|det A_i| / sum_j |det A_j|`` of the *unperturbed*
  system, shared by all classes (as the released ``calc_p``), so classes
  differ only in their maps;
* a class whose perturbed system diverges or covers less than
  ``threshold`` of the grid is redrawn (the released code redraws below a
  filling rate of 0.05); here the filling rate is FractalDB's point coverage
  (``synth.ifs.filling_rate``), and the base system must pass it too;
* rendering: 100,000 chaos-game points at ``render_size`` (362 px, the
  FractalDB render size used elsewhere in minivit; the released code uses
  512), each point stamped as a 3x3 patch, then downsampled to ``size`` with
  Pillow's antialiasing Lanczos filter.  The released code draws a new random
  3x3 mask per point; here an instance has one random mask (FractalDB's
  patch rule), and ``instance_id`` selects the chaos-game stream and the
  mask.  The paper has one image per class (1,000 images); instances are
  re-renderings of the same class system, so any number exists
  (``instances_per_class = None``) and held-out instances test whether the
  classes, not the renderings, are learnt.
"""
from dataclasses import dataclass

import numpy as np

from .base import GeneratorBase, build_params
from .ifs import IFSystem, accepted_system, chaos_game, cumulative, filling_rate, stamp_points
from .rng import KIND_TAGS, kernel_seed, numpy_rng
from .sigma_factor import sample_system, sigma_factor

_TAG = KIND_TAGS["onepfrac"]
PERTURBATIONS = ("additive", "multiplicative")


class BaseSystemError(RuntimeError):
    """No base system (or no accepted perturbation of a class) within ``max_tries``."""


@dataclass(frozen=True)
class OnePFracParams:
    """1p-frac parameters (Nakamura et al., ECCV 2024, sec. 3; see the module docstring).

    delta: perturbation size Delta >= 0 (paper's best: 0.1).
    perturbation: "additive" (paper, default) or "multiplicative" (released code).
    sigma: sigma-factor target, in (0, 3 num_maps); sigma_margin: the drawn
        sigma is uniform in [sigma - margin, sigma + margin] (kept inside).
    num_maps: N affine maps of the one fractal (paper: 2).
    translation: e, f uniform in [-translation, translation].
    threshold: minimum filling rate (point coverage on a search_size grid with
        search_points points) of the base system and of every class.
    max_tries: candidate base systems, and perturbation draws per class,
        before BaseSystemError.
    num_points: chaos-game points per image; discard: iterates dropped first.
    The render size is the generator's (``GeneratorBase``: default 362 px, the
    FractalDB size the paper renders at, then downsampled to ``size``).
    """
    delta: float = 0.1
    perturbation: str = "additive"
    sigma: float = 4.0
    sigma_margin: float = 0.1
    num_maps: int = 2
    translation: float = 1.0
    threshold: float = 0.05
    search_points: int = 50_000
    search_size: int = 256
    max_tries: int = 1000
    num_points: int = 100_000
    discard: int = 20

    def __post_init__(self):
        if self.perturbation not in PERTURBATIONS:
            raise ValueError(f"perturbation must be one of {PERTURBATIONS}, "
                             f"got {self.perturbation!r}")
        if not (np.isfinite(self.delta) and self.delta >= 0):
            raise ValueError(f"delta must be a finite number >= 0, got {self.delta!r}")
        if self.perturbation == "multiplicative" and self.delta >= 1:
            raise ValueError(f"multiplicative delta must be < 1 (factors in (1 - delta, "
                             f"1 + delta) would change signs), got {self.delta}")
        if isinstance(self.num_maps, bool) or not 1 <= self.num_maps <= 255:
            raise ValueError(f"num_maps must be in [1, 255], got {self.num_maps!r}")
        if not (0 <= self.sigma_margin and 0 < self.sigma - self.sigma_margin
                and self.sigma + self.sigma_margin < 3 * self.num_maps):
            raise ValueError(f"need 0 < sigma - sigma_margin and sigma + sigma_margin < "
                             f"3 * num_maps = {3 * self.num_maps}, got sigma={self.sigma}, "
                             f"sigma_margin={self.sigma_margin}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        for name in ("search_points", "search_size", "max_tries", "num_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.discard < 0:
            raise ValueError(f"discard must be >= 0, got {self.discard}")
        if not (np.isfinite(self.translation) and self.translation > 0):
            raise ValueError(f"translation must be a finite number > 0, got {self.translation!r}")


def search_base(seed, params):
    """The one fractal: ``(IFSystem, drawn sigma, tries)``; pure function of ``(seed, params)``.

    Candidates from ``sample_system`` with sigma uniform in ``sigma +- margin``
    are accepted by their filling rate.  Raises BaseSystemError after
    ``max_tries`` rejections.
    """
    rng = numpy_rng(seed, _TAG)
    lo, hi = params.sigma - params.sigma_margin, params.sigma + params.sigma_margin
    for tries in range(1, params.max_tries + 1):
        sigma = float(rng.uniform(lo, hi))
        maps = sample_system(params.num_maps, sigma, rng, params.translation)
        chaos_seed = rng.integers(0, 2**63, dtype=np.uint64)
        system = accepted_system(maps, chaos_seed, params)
        if system is not None:
            return system, sigma, tries
    raise BaseSystemError(f"no base system with filling rate >= {params.threshold} in "
                          f"{params.max_tries} tries (sigma={params.sigma}, "
                          f"num_maps={params.num_maps}); lower threshold or raise max_tries")


def perturb(maps, delta, perturbation, rng):
    """Perturbed copy of ``maps`` float64 (N, 6) (Nakamura et al., ECCV 2024, sec. 3).

    additive: ``maps + U[-delta/2, delta/2]`` elementwise (the paper);
    multiplicative: ``maps * U(1 - delta, 1 + delta)`` elementwise (released code).
    """
    if perturbation == "additive":
        return maps + rng.uniform(-delta / 2, delta / 2, maps.shape)
    if perturbation == "multiplicative":
        return maps * rng.uniform(1 - delta, 1 + delta, maps.shape)
    raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {perturbation!r}")


class OnePFracGenerator(GeneratorBase):
    """1p-frac images: uint8 (size, size, 3), grey (three equal channels).

    Class ``c`` is the base system perturbed by a draw seeded from
    ``(seed, c)``; ``instance_id`` (any int >= 0) picks the chaos-game stream
    and the 3x3 patch.  Pure function of ``(seed, class_id, instance_id)``:
    the base system and each class are found from their own seeds, so class
    7 never needs classes 0..6 and no rank count enters.
    params: an ``OnePFracParams`` and/or its fields as keywords.
    Raises ValueError for bad parameters, BaseSystemError if no base system
    or class perturbation is accepted within ``max_tries``.
    """

    kind = "onepfrac"
    published_render_size = 362

    def __init__(self, num_classes=1000, size=224, seed=0, params=None, render_size=None,
                 resample="box", **overrides):
        super().__init__(num_classes, size, seed, render_size, resample)
        self.params = build_params(OnePFracParams, params, overrides)
        self._base = None
        self._classes = {}   # class_id -> (maps (N, 6), accepted chaos seed)

    def base(self):
        """``(IFSystem, drawn sigma)`` of the one fractal (searched once, then cached)."""
        if self._base is None:
            system, sigma, _ = search_base(self.seed, self.params)
            self._base = (system, sigma)
        return self._base

    def class_maps(self, class_id):
        """float64 (N, 6) maps of ``class_id``: the accepted perturbation of the base."""
        if class_id not in self._classes:
            p = self.params
            base, _ = self.base()
            rng = numpy_rng(self.seed, class_id, _TAG, 1)
            cum = cumulative(base.probs)
            for _ in range(p.max_tries):
                maps = perturb(base.maps, p.delta, p.perturbation, rng)
                chaos_seed = rng.integers(0, 2**63, dtype=np.uint64)
                candidate = IFSystem(maps, base.probs)
                if filling_rate(candidate, p.search_points, p.search_size, chaos_seed,
                                p.discard) >= p.threshold:
                    self._classes[class_id] = (maps, np.uint64(chaos_seed), cum)
                    break
            else:
                raise BaseSystemError(f"class {class_id}: no perturbation with filling rate >= "
                                      f"{p.threshold} in {p.max_tries} draws (delta={p.delta})")
        return self._classes[class_id][0]

    def patch(self, class_id, instance_id):
        """uint8 (3, 3) mask of an instance: centre lit, each other cell lit with p = 1/2."""
        rng = numpy_rng(self.seed, class_id, instance_id, _TAG, 3)
        lit = rng.random((3, 3)) < 0.5
        lit[1, 1] = True
        return np.where(lit, 255, 0).astype(np.uint8)

    def _orbit(self, class_id, instance_id):
        """Chaos-game points of an instance and a status, "ok" or "fallback".

        "fallback": the instance's own stream diverged (a perturbed map may
        expand a little), and the stream that accepted the class is used.
        """
        maps = self.class_maps(class_id)
        _, accepted_seed, cum = self._classes[class_id]
        p = self.params
        seed = kernel_seed(self.seed, class_id, instance_id, _TAG, 2)
        xs, ys, ks, bounds, count = chaos_game(maps, cum, p.num_points, seed, p.discard)
        if count == p.num_points:
            return xs, ys, ks, bounds, "ok"
        xs, ys, ks, bounds, count = chaos_game(maps, cum, p.num_points, accepted_seed, p.discard)
        return xs[:count], ys[:count], ks[:count], bounds, "fallback"

    def draw(self, class_id, instance_id):
        """uint8 (render_size, render_size) grey image (ids not checked: use ``render``)."""
        xs, ys, ks, bounds, _ = self._orbit(class_id, instance_id)
        colours = np.full((self.params.num_maps, 1), 255, np.uint8)
        return stamp_points(self.render_size, xs, ys, ks, bounds,
                            self.patch(class_id, instance_id), colours)[..., 0]

    def metadata(self, class_id, instance_id):
        """JSON-serialisable generation parameters of one instance."""
        class_id, instance_id = self._check_ids(class_id, instance_id)
        base, sigma = self.base()
        maps = self.class_maps(class_id)
        status = self._orbit(class_id, instance_id)[4]
        p = self.params
        return {
            "kind": self.kind, "seed": self.seed, "class_id": class_id,
            "instance_id": instance_id, **self.sizes(),
            "delta": p.delta, "perturbation": p.perturbation, "sigma_target": p.sigma,
            "base_sigma": sigma, "class_sigma": sigma_factor(maps),
            "base_maps": base.maps.tolist(), "maps": maps.tolist(), "probs": base.probs.tolist(),
            "patch": self.patch(class_id, instance_id).tolist(),
            "num_points": p.num_points, "orbit": status,
        }
