"""Batch-level mixup and cutmix with soft targets, defined on the global batch.

Mixup (Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018,
eq. 1): ``x = lam x_i + (1 - lam) x_j``, ``t = lam e_{y_i} + (1 - lam) e_{y_j}``,
``lam ~ Beta(alpha, alpha)``.  Cutmix (Yun et al., ICCV 2019, eq. 1-2): a box
of area ``(1 - lam) H W`` of ``x_i`` is replaced by the same box of ``x_j``;
the box centre is uniform, its sides ``H sqrt(1 - lam)``, ``W sqrt(1 - lam)``,
clipped to the image, and ``lam`` is then corrected to the pixel fraction kept.
The choice between them follows timm's ``Mixup`` in ``mode="batch"`` (timm
``data/mixup.py``): with probability ``prob`` a step is mixed at all; when
both alphas are positive, cutmix is chosen with probability ``switch_prob``.
DeiT (Touvron et al., ICML 2021, table 9) uses mixup 0.8, cutmix 1.0,
switch 0.5, which are the defaults here.

What makes it layout-independent (DESIGN.md section 4):

* One draw per optimizer step, from ``(seed, epoch, step)`` only, where
  ``step = position // global_batch`` and ``position`` is a sample's place in
  the epoch's order (``Loader.batch_positions``).  ``global_batch`` is the
  images per optimizer step over all ranks (micro x accumulation x dp), so
  every micro-batch of a step, on every rank, uses the same ``lam`` and box.
* Partners are positions ``2k`` and ``2k + 1``.  timm pairs sample ``i`` with
  ``B - 1 - i`` of its batch; on the global batch that partner lives on
  another rank, and fetching it would need communication or decoding every
  image twice.  Adjacent positions stay on one rank whenever the per-rank
  micro-batch is even, and since the epoch order is a random permutation the
  partner is a random sample, as with timm's flip.  So a rank's output is
  exactly its slice of the one-process result, for any rank count and any
  accumulation.

Nothing here imports the model or MPI.
"""
import math
from dataclasses import dataclass

import numpy as np

# Mixed into the seed so these draws never coincide with the loader's
# per-sample streams, default_rng([seed, epoch, position]).
_TAG = 0x4D495855  # "MIXU"


@dataclass(frozen=True)
class Mixup:
    """Mixup/cutmix settings (timm ``Mixup`` names; DeiT defaults).

    mixup_alpha, cutmix_alpha: Beta parameters, >= 0; 0 disables that kind.
    prob: probability that a step is mixed at all, in [0, 1].
    switch_prob: probability of cutmix rather than mixup when both are on.
    correct_lam: set cutmix's lam to the pixel fraction actually kept after
        the box is clipped to the image (timm's ``correct_lam``).
    Raises ValueError for values outside those ranges or both alphas 0.
    """
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    correct_lam: bool = True

    def __post_init__(self):
        for name in ("mixup_alpha", "cutmix_alpha"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"Mixup.{name} must be a finite number >= 0, got {v!r}")
        if self.mixup_alpha == 0 and self.cutmix_alpha == 0:
            raise ValueError("Mixup needs mixup_alpha > 0 or cutmix_alpha > 0 (both are 0)")
        for name in ("prob", "switch_prob"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise ValueError(f"Mixup.{name} must be a probability in [0, 1], got {v!r}")


@dataclass(frozen=True)
class MixDraw:
    """The mixing of one optimizer step.

    kind: "none", "mixup" or "cutmix"; lam: weight of a sample's own image and
    label (1.0 for "none"; the corrected pixel fraction for cutmix); box:
    ``(top, bottom, left, right)`` pixel bounds of the pasted region (cutmix),
    else None.
    """
    kind: str
    lam: float
    box: tuple = None


def draw_mix(mixup, seed, epoch, step, height, width):
    """``MixDraw`` of optimizer step ``step`` of ``epoch``: a pure function of its arguments.

    Order of draws as in timm ``Mixup._params_per_batch`` and ``rand_bbox``.
    Raises ValueError for a negative seed, epoch or step.
    """
    for name, v in (("seed", seed), ("epoch", epoch), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    rng = np.random.default_rng([int(seed), int(epoch), int(step), _TAG])
    if not rng.random() < mixup.prob:
        return MixDraw("none", 1.0)
    if mixup.mixup_alpha > 0 and mixup.cutmix_alpha > 0:
        cut = bool(rng.random() < mixup.switch_prob)
    else:
        cut = mixup.cutmix_alpha > 0
    alpha = mixup.cutmix_alpha if cut else mixup.mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    if not cut:
        return MixDraw("mixup", lam)
    # Yun et al. (2019) eq. 2: side ratio sqrt(1 - lam), centre uniform, clipped
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height)
    left, right = min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width)
    if mixup.correct_lam:
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    return MixDraw("cutmix", lam, (top, bottom, left, right))


def _partners(positions):
    """Local index of each sample's partner (position ``p ^ 1``); ValueError if one is missing."""
    order = np.argsort(positions, kind="stable")
    ranked = positions[order]
    if len(ranked) > 1 and np.any(ranked[1:] == ranked[:-1]):
        raise ValueError("positions must be distinct")
    want = positions ^ 1
    at = np.minimum(np.searchsorted(ranked, want), len(ranked) - 1)
    missing = ranked[at] != want
    if missing.any():
        p = int(positions[np.argmax(missing)])
        raise ValueError(f"position {p} is mixed with position {p ^ 1}, which is not in this "
                         f"batch: a rank's positions must hold whole pairs (2k, 2k+1), so the "
                         f"per-rank micro-batch must be even")
    return order[at]


def mix_batch(images, labels, positions, *, mixup, num_classes, seed, epoch, global_batch):
    """Mix a rank's slice of the global batch; returns ``(images, targets)``.

    images: float (b, C, H, W) (the loader's normalised batch; not modified);
    labels: integer (b,) in [0, num_classes); positions: int (b,) places of
    these samples in the epoch's order (``Loader.batch_positions(step)`` for
    the loader step they came from), holding whole pairs ``(2k, 2k+1)``;
    mixup: a ``Mixup``; seed: the run's data seed; epoch: the loader epoch;
    global_batch: images per optimizer step over all ranks (even).
    Returns new arrays: images of the same dtype and shape, and float64
    targets (b, num_classes) with rows ``lam e_y + (1 - lam) e_y_partner``
    (label smoothing is applied by the loss, ``minivit.loss``).  The result
    for any split of the global batch over ranks or micro-batches equals the
    matching slice of the one-process result, bit for bit.
    Raises ValueError for mismatched shapes, labels out of range, an odd
    global batch or positions without their partners.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    positions = np.asarray(positions)
    if images.ndim != 4 or not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be float (b, C, H, W), got {images.dtype} {images.shape}")
    b = images.shape[0]
    if labels.shape != (b,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer ({b},), got {labels.dtype} {labels.shape}")
    if positions.shape != (b,) or not np.issubdtype(positions.dtype, np.integer):
        raise ValueError(f"positions must be integer ({b},), got {positions.dtype} "
                         f"{positions.shape}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if ((labels < 0) | (labels >= num_classes)).any():
        raise ValueError(f"labels must lie in [0, {num_classes})")
    if isinstance(global_batch, bool) or not isinstance(global_batch, (int, np.integer)) \
            or global_batch < 2 or global_batch % 2:
        raise ValueError(f"global_batch must be an even int >= 2 (samples are mixed in "
                         f"pairs), got {global_batch!r}")
    if (positions < 0).any():
        raise ValueError("positions must be >= 0")
    positions = positions.astype(np.int64)
    partner = _partners(positions)
    out = images.copy()
    targets = np.zeros((b, int(num_classes)))
    rows = np.arange(b)
    h, w = images.shape[2:]
    steps = positions // int(global_batch)
    for step in np.unique(steps):   # one step per call in training; several are allowed
        mine = rows[steps == step]
        draw = draw_mix(mixup, seed, epoch, int(step), h, w)
        other = partner[mine]
        if draw.kind == "mixup":
            lam = images.dtype.type(draw.lam)
            out[mine] = images[mine] * lam + images[other] * (images.dtype.type(1) - lam)
        elif draw.kind == "cutmix":
            top, bottom, left, right = draw.box
            out[mine, :, top:bottom, left:right] = images[other, :, top:bottom, left:right]
        # np.add.at: a sample mixed with a partner of the same class gets weight 1 there
        np.add.at(targets, (mine, labels[mine]), draw.lam)
        np.add.at(targets, (mine, labels[other]), 1.0 - draw.lam)
    return out, targets


class MixedSteps:
    """``LoaderSteps`` with mixing: per optimizer step ``(epoch, [(x, targets), ...])``.

    loader: a ``minivit.io.Loader`` built with ``batch_size = micro-batch`` and
    ``world_size = dp`` (as for ``minivit.io.sources.LoaderSteps``); accum:
    micro-batches per optimizer step, int >= 1; mixup: a ``Mixup``;
    num_classes: K; dtype: of x.  The global batch is ``micro x dp x accum``.
    x: ``(b, 3, S, S)`` of ``dtype``; targets: float64 ``(b, K)`` soft targets
    for ``minivit.loss.cross_entropy_forward``.  Training accuracy must then
    compare predictions with ``targets.argmax(1)``, not with the targets.
    Raises ValueError for a bad ``accum`` or an odd micro-batch.
    """

    def __init__(self, loader, accum, mixup, num_classes, dtype="float32"):
        if isinstance(accum, bool) or not isinstance(accum, (int, np.integer)) or accum < 1:
            raise ValueError(f"accum={accum!r}: expected a positive integer")
        if loader.batch_size % 2:
            raise ValueError(f"mixup/cutmix pair positions (2k, 2k+1) on one rank: the "
                             f"micro-batch must be even, got {loader.batch_size}")
        if not isinstance(mixup, Mixup):
            raise ValueError(f"mixup must be a Mixup, got {mixup!r}")
        self.loader, self.accum, self.mixup = loader, int(accum), mixup
        self.num_classes, self.dtype = int(num_classes), np.dtype(dtype)
        self.global_batch = loader.global_batch * self.accum

    def __iter__(self):
        return self

    def __next__(self):
        first_epoch = self.loader.epoch
        micro = []
        for _ in range(self.accum):
            epoch, step = self.loader.epoch, self.loader.step   # before next_batch advances
            x, y = self.loader.next_batch()
            x, t = mix_batch(x, y, self.loader.batch_positions(step), mixup=self.mixup,
                             num_classes=self.num_classes, seed=self.loader.seed, epoch=epoch,
                             global_batch=self.global_batch)
            micro.append((x.astype(self.dtype, copy=False), t))
        return first_epoch, micro
