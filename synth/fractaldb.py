"""FractalDB: fractal categories from random iterated function systems.

Kataoka et al., "Pre-training without Natural Images", ACCV 2020 (sec. 3) and
IJCV 2022.  A category is an IFS found by random search and accepted by its
filling rate; instances perturb its parameters, flip the image and draw each
chaos-game point with a random 3x3 "patch".
"""
from dataclasses import dataclass

import numpy as np

from .base import GeneratorBase, build_params
from .fractaldb_csv import import_categories
from .ifs import IFSystem, accepted_system, chaos_game, cumulative, filling_rate, stamp_points
from .patch_gray import PUBLISHED_GREY, PUBLISHED_PAD, draw_patch_gray, scaled_pad
from .resample import downsample
from .rng import KIND_TAGS, kernel_seed, numpy_rng

_TAG = KIND_TAGS["fractaldb"]
NUM_WEIGHTS = 25   # unchanged system + 6 parameters x 4 factors (sec. 3.2)
NUM_FLIPS = 4      # none, up-down, left-right, both
MODES = ("patch_gray", "gray_levels", "color")


def _flip(img, flip):
    """Flip ``img`` up-down (flip & 1) and/or left-right (flip & 2); contiguous copy."""
    if flip & 1:
        img = img[::-1]
    if flip & 2:
        img = img[:, ::-1]
    return np.ascontiguousarray(img)


class CategorySearchError(RuntimeError):
    """The random search found fewer accepting systems than requested.

    Attributes: ``found`` (int), ``requested`` (int), ``max_tries`` (per class).
    """

    def __init__(self, found, requested, max_tries, detail=""):
        self.found, self.requested, self.max_tries = found, requested, max_tries
        super().__init__(f"FractalDB category search found {found} of {requested} categories "
                         f"within max_tries={max_tries} candidate systems per class{detail}")


@dataclass(frozen=True)
class FractalDBParams:
    """FractalDB generation parameters (Kataoka et al., ACCV 2020, sec. 3.1-3.2).

    min_maps, max_maps: number of affine maps N, uniform in [min_maps, max_maps]
        (paper: 2..8).
    param_low, param_high: each of a..f is uniform in [param_low, param_high].
    threshold: minimum filling rate for acceptance (paper's FractalDB-1k: 0.2).
    search_points, search_size: chaos-game points and grid size (pixels) at
        which the filling rate is measured.  Fixed, so categories do not depend
        on the render size.
    max_tries: candidate systems tried per class before CategorySearchError.
    num_points: chaos-game points per rendered instance.
    weight_step: k of the perturbation factors {1-2k, 1-k, 1+k, 1+2k} (sec. 3.2).
    num_patches: patch draws per (category, weight): random 3x3 patterns in
        gray_levels/color, independent mask streams in patch_gray (the
        published renderer's ``--instance``, 10).
    mode: "patch_gray" (default): the published drawing (synth/patch_gray.py),
        a fresh random 9-bit 3x3 mask of constant grey ``grey`` per point,
        the orbit drawn from the origin; "gray_levels": minivit's earlier
        drawing, one random 3x3 patch of greys in [64, 255] per instance
        (centre always lit), each distinct pixel stamped once; "color": as
        gray_levels with one random colour per map.
    grey: the grey of lit cells in patch_gray (published: 127).
    pad: border in pixels at 362 px, scaled with the render size, in
        patch_gray (published make_fractaldb.py default: 6).
    discard: initial chaos-game iterates dropped (off the attractor) by the
        category search and the gray_levels/color drawings.
    """
    min_maps: int = 2
    max_maps: int = 8
    param_low: float = -1.0
    param_high: float = 1.0
    threshold: float = 0.2
    search_points: int = 50_000
    search_size: int = 256
    max_tries: int = 5_000
    num_points: int = 200_000
    weight_step: float = 0.4
    num_patches: int = 10
    mode: str = "patch_gray"
    grey: int = PUBLISHED_GREY
    pad: float = PUBLISHED_PAD
    discard: int = 20

    def __post_init__(self):
        if not 1 <= self.min_maps <= self.max_maps <= 255:
            raise ValueError(f"need 1 <= min_maps <= max_maps <= 255, got "
                             f"{self.min_maps}, {self.max_maps}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not 1 <= self.grey <= 255:
            raise ValueError(f"grey must be in [1, 255], got {self.grey}")
        if not 0 <= self.pad < 64:
            raise ValueError(f"pad must be in [0, 64) pixels at 362 px, got {self.pad}")
        for name in ("search_points", "search_size", "max_tries", "num_points", "num_patches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        reachable = self.search_points / self.search_size ** 2
        if reachable < self.threshold:
            raise ValueError(
                f"search_points={self.search_points} can light at most {reachable:.3f} of the "
                f"{self.search_size}x{self.search_size} search grid, below threshold "
                f"{self.threshold}: no system could be accepted")
        if not self.param_low < self.param_high:
            raise ValueError(f"need param_low < param_high, got {self.param_low}, {self.param_high}")

    def factors(self):
        """The four multiplicative perturbation factors, float64 (4,)."""
        k = self.weight_step
        return np.array([1 - 2 * k, 1 - k, 1 + k, 1 + 2 * k])


def search_category(seed, class_id, params):
    """Random search for one category; returns ``(IFSystem, tries)`` or ``(None, tries)``.

    Seeded from ``(seed, class_id)`` only, so class 7 never needs classes 0..6.
    A candidate is rejected if all determinants are 0, the orbit diverges or
    becomes NaN, or its filling rate is below ``params.threshold``.
    """
    rng = numpy_rng(seed, class_id, _TAG)
    for tries in range(1, params.max_tries + 1):
        n = int(rng.integers(params.min_maps, params.max_maps + 1))
        maps = rng.uniform(params.param_low, params.param_high, size=(n, 6))
        chaos_seed = rng.integers(0, 2**63, dtype=np.uint64)
        system = accepted_system(maps, chaos_seed, params)
        if system is not None:
            return system, tries
    return None, params.max_tries


class FractalDBGenerator(GeneratorBase):
    """FractalDB images: uint8 (size, size, 3), drawn at ``render_size``
    (published: 362 px, ``exe.sh``) and shrunk to ``size``.

    ``instance_id`` decomposes as ``weight + 25 * (flip + 4 * patch)`` where
    weight 0 is the unchanged system and weight ``1 + 4 j + m`` multiplies
    parameter j (a..f) of every map by factor m; flip in (none, up-down,
    left-right, both); patch indexes a random 3x3 pattern.  Default: 1000
    instances per class.

    categories: optional list/dict of IFSystem (e.g. from the published
    FractalDB CSVs, see ``categories_dir``) that replaces the search.
    """

    kind = "fractaldb"
    published_render_size = 362

    def __init__(self, num_classes, size, seed=0, params=None, categories=None,
                 categories_dir=None, render_size=None, resample="box", **overrides):
        super().__init__(num_classes, size, seed, render_size, resample)
        self.params = params = build_params(FractalDBParams, params, overrides)
        self.instances_per_class = NUM_WEIGHTS * NUM_FLIPS * params.num_patches
        if categories_dir is not None:
            if categories is not None:
                raise ValueError("give categories or categories_dir, not both")
            categories = import_categories(categories_dir)
        self._categories = {}
        self._status = {}  # (class, weight, patch) -> _orbit status, filled by render
        if categories is not None:
            items = categories.items() if isinstance(categories, dict) else enumerate(categories)
            self._categories = dict(items)
            missing = [c for c in range(self.num_classes) if c not in self._categories]
            if missing:
                raise ValueError(f"categories cover {self.num_classes - len(missing)} of "
                                 f"num_classes={self.num_classes}; missing class {missing[0]}")

    def category(self, class_id):
        """The IFSystem of ``class_id`` (searched once, then cached on the instance)."""
        if class_id not in self._categories:
            system, tries = search_category(self.seed, class_id, self.params)
            if system is None:
                raise CategorySearchError(0, 1, tries, f" (class {class_id}, threshold "
                                          f"{self.params.threshold})")
            self._categories[class_id] = system
        return self._categories[class_id]

    def set_category(self, class_id, system):
        """Install a category found elsewhere (e.g. by another MPI rank)."""
        self._categories[int(class_id)] = system

    def search(self, class_ids):
        """Search ``class_ids``; returns ``{class_id: IFSystem}`` for every class found.

        Unlike ``category`` this does not raise: callers count what was found.
        """
        found = {}
        for c in class_ids:
            if c in self._categories:
                found[c] = self._categories[c]
                continue
            system, _ = search_category(self.seed, c, self.params)
            if system is not None:
                self._categories[c] = found[c] = system
        return found

    def decompose(self, instance_id):
        """``instance_id -> (weight, flip, patch)``."""
        return (instance_id % NUM_WEIGHTS, (instance_id // NUM_WEIGHTS) % NUM_FLIPS,
                instance_id // (NUM_WEIGHTS * NUM_FLIPS))

    def perturbed(self, system, weight):
        """Maps of ``system`` with perturbation ``weight`` applied, float64 (N, 6)."""
        maps = system.maps.copy()
        if weight > 0:
            param, factor = divmod(weight - 1, 4)
            maps[:, param] *= self.params.factors()[factor]
        return maps

    def patch(self, class_id, patch_id):
        """gray_levels/color modes: random 3x3 patch, uint8 (3, 3): 0 = unlit,
        else a grey level in [64, 255].

        Each cell is lit with probability 1/2; the centre is always lit so every
        point leaves a mark.
        """
        rng = numpy_rng(self.seed, class_id, patch_id, _TAG, 2)
        lit = rng.random((3, 3)) < 0.5
        lit[1, 1] = True
        return np.where(lit, rng.integers(64, 256, (3, 3)), 0).astype(np.uint8)

    def colours(self, class_id, num_maps):
        """Per-map colours, uint8 (N, 3) in colour mode; (N, 1) of 255 in gray_levels."""
        if self.params.mode != "color":
            return np.full((num_maps, 1), 255, np.uint8)
        rng = numpy_rng(self.seed, class_id, _TAG, 3)
        return rng.integers(64, 256, (num_maps, 3)).astype(np.uint8)

    def _orbit(self, class_id, weight, patch_id):
        """Chaos-game points of one instance: ``(system, xs, ys, ks, bounds, status)``.

        In patch_gray the orbit depends on (class, weight) only; the patch
        instances differ by their masks.

        status: "ok"; "fallback" when the perturbed maps diverged and the
        unchanged maps were used (a factor of 1+2k can make a contractive
        system expand); "truncated" when those diverged too (possible for
        imported categories), and only the points before divergence are drawn.
        """
        system = self.category(class_id)
        cum = cumulative(system.probs)
        n, discard = self.params.num_points, self.params.discard
        orbit_key = patch_id
        if self.params.mode == "patch_gray":
            # the published renderer draws every patch instance of a weight
            # from one orbit (a fixed seed), started at the origin
            discard, orbit_key = 0, 0
        seed = kernel_seed(self.seed, class_id, weight, orbit_key, _TAG, 1)
        xs, ys, ks, bounds, count = chaos_game(self.perturbed(system, weight), cum, n, seed,
                                               discard)
        status = "ok"
        if count < n:
            xs, ys, ks, bounds, count = chaos_game(system.maps, cum, n, seed, discard)
            status = "fallback" if count == n else "truncated"
        if len(self._status) > 4096:  # bounded: only metadata() right after render() needs it
            self._status.clear()
        self._status[(class_id, weight, patch_id)] = status
        return system, xs[:count], ys[:count], ks[:count], bounds, status

    def draw(self, class_id, instance_id):
        """The image at render_size R: uint8 (R, R) in the grey modes, (R, R, 3)
        in colour mode (ids checked by the caller)."""
        return _flip(self._draw_unflipped(class_id, instance_id), self.decompose(instance_id)[1])

    def render_native(self, class_id, instance_id):
        """uint8 (size, size) in the grey modes, (size, size, 3) in colour mode.

        Flipped after downsampling, so the four flips of an instance are exact
        flips of each other (a fractional-factor resize is not exactly
        mirror-symmetric) and the flip touches the small image.
        """
        class_id, instance_id = self._check_ids(class_id, instance_id)
        img = downsample(self._draw_unflipped(class_id, instance_id), self.size, self.resample)
        return _flip(img, self.decompose(instance_id)[1])

    def _draw_unflipped(self, class_id, instance_id):
        weight, _, patch_id = self.decompose(instance_id)
        system, xs, ys, ks, bounds, _ = self._orbit(class_id, weight, patch_id)
        size = self.render_size
        if self.params.mode == "patch_gray":
            mask_seed = kernel_seed(self.seed, class_id, weight, patch_id, _TAG, 4)
            img = draw_patch_gray(size, xs, ys, bounds, scaled_pad(self.params.pad, size),
                                  mask_seed, np.uint8(self.params.grey))
        else:
            colours = self.colours(class_id, system.num_maps)
            img = stamp_points(size, xs, ys, ks, bounds, self.patch(class_id, patch_id), colours)
            img = img[..., 0] if img.shape[2] == 1 else img
        return img

    def metadata(self, class_id, instance_id):
        """JSON-serialisable generation parameters of one instance."""
        class_id, instance_id = self._check_ids(class_id, instance_id)
        weight, flip, patch_id = self.decompose(instance_id)
        system = self.category(class_id)
        factor = None if weight == 0 else float(self.params.factors()[(weight - 1) % 4])
        # render() normally left the status here; another thread may have
        # cleared the dict meanwhile, then it is recomputed
        status = self._status.get((class_id, weight, patch_id)) or self._orbit(
            class_id, weight, patch_id)[5]
        return {
            "kind": self.kind, "seed": self.seed, "class_id": class_id,
            "instance_id": instance_id, **self.sizes(),
            "maps": system.maps.tolist(), "probs": system.probs.tolist(),
            "weight": weight, "perturbed_param": None if weight == 0 else "abcdef"[(weight - 1) // 4],
            "factor": factor, "flip": ["none", "up-down", "left-right", "both"][flip],
            "patch": patch_id, "num_points": self.params.num_points, "mode": self.params.mode,
            "grey": self.params.grey, "pad": self.params.pad, "orbit": status,
        }
