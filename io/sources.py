"""Training data from a ``--data`` spec: shard folders, on-the-fly synthetic, built-ins.

``open_data(spec, ...)`` turns the string a user passes to ``run/pretrain.py``
or ``run/finetune.py`` into a ``DataSplits(train, eval, num_classes,
image_size, description)`` of datasets with the ``ShardDataset`` interface
(``len(ds)``, ``ds[i] -> (uint8 (H, W, 3), int)``):

* ``DIR`` (or ``index.json`` / one ``.tar``): tar shards read by
  ``ShardDataset``.  The held-out split is ``--eval-data`` when given, else
  the last ``holdout`` fraction of each class in dataset order.  For shards
  written by ``run/make_dataset.py`` (class-major, instance ids ascending)
  those are the highest instance ids of every class: a disjoint instance range.
* ``synthetic:KIND`` (fractaldb, visualatom, newton, onepfrac): ``SyntheticSource``
  rendering on the fly; the held-out split is a disjoint instance-id range at
  the top of ``range(instances)``.
* ``digits``: scikit-learn's bundled handwritten digits (1797 grey 8x8),
  stratified 80/20 split with a fixed seed (``DigitsSource``).
* ``random``: random images with fixed labels (``RandomImages``), a smoke-test
  source; no held-out split.
* ``fashion-mnist`` or ``fashion-mnist:DIR``: Fashion-MNIST's official 60k/10k
  split (``FashionMNIST``, IDX files of the Debian package
  ``dataset-fashion-mnist`` or of DIR).  The held-out (validation) split is a
  seeded stratified ``holdout`` fraction of the 60k training images; the 10k
  test images are ``DataSplits.test``, to be evaluated once at the end and
  never used to choose anything.

``labels_per_class=N`` keeps a seeded, stratified N images per class of the
training split (low-label regimes), drawn after the held-out split is taken
out.  ``test_spec`` names shards holding a test set for sources without one.

Nothing here imports the model or MPI (DESIGN.md section 1).  Every
function raises ``ValueError`` / ``FileNotFoundError`` naming the bad value
before any rendering or decoding.
"""
import math
import os
from dataclasses import dataclass

import numpy as np

from .dataset import ShardDataset
from .fashion_mnist import DEFAULT_DIR as FASHION_DIR
from .fashion_mnist import FashionMNIST, find_files, labels_per_class_subset
from .random_images import RandomImages
from .synthetic import SyntheticSource

SYNTHETIC_KINDS = ("fractaldb", "visualatom", "newton", "onepfrac")
BUILTINS = ("digits", "random", "fashion-mnist")
FASHION = "fashion-mnist"


@dataclass
class DataSplits:
    """Train and held-out datasets of one ``--data`` spec.

    ``eval`` may be None (no held-out split).  ``image_size`` is the stored
    side in pixels, or None when the samples have to be probed.  ``test`` is
    the test set (Fashion-MNIST's official 10k, or ``test_spec`` shards), or None.
    """
    train: object
    eval: object
    num_classes: int
    image_size: object
    description: str
    test: object = None


class Subset:
    """The samples ``indices`` (int64 (n,)) of ``dataset``, renumbered 0..n-1."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.ndim != 1 or len(self.indices) == 0:
            raise ValueError(f"subset indices must be a non-empty 1-D array, "
                             f"got shape {self.indices.shape}")
        self.on_error = getattr(dataset, "on_error", "raise")
        self.image_size = getattr(dataset, "image_size", None)
        self.num_classes = getattr(dataset, "num_classes", None)
        labels = getattr(dataset, "labels", None)
        self.labels = None if labels is None else np.asarray(labels)[self.indices]

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[int(self.indices[i])]


def stratified_split(labels, fraction, seed=None):
    """``(train_idx, heldout_idx)`` int64 arrays: per class, ``ceil(fraction * n_c)`` held out.

    seed None: the *last* samples of each class (in index order) are held out;
    an int: a seeded permutation within each class picks them.  Classes with
    one sample stay in train.  Raises ValueError for a fraction outside (0, 1).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"held-out fraction {fraction!r}: expected 0 < fraction < 1")
    labels = np.asarray(labels)
    rng = None if seed is None else np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if rng is not None:
            idx = idx[rng.permutation(len(idx))]
        k = min(len(idx) - 1, math.ceil(fraction * len(idx)))
        train.append(idx[:len(idx) - k])
        held.append(idx[len(idx) - k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


class DigitsSource:
    """scikit-learn ``load_digits`` as a dataset: ``ds[i] -> (uint8 (8, 8, 3), label)``.

    Values 0..16 are scaled to 0..255 (as ``run/pack.py digits``); the
    ``Loader`` upsamples them to the model's image size.  Requires scikit-learn.
    """

    on_error = "raise"
    image_size = 8
    num_classes = 10

    def __init__(self):
        from sklearn.datasets import load_digits   # optional dependency, imported on use
        bunch = load_digits()
        grey = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
        self.images = np.repeat(grey[..., None], 3, axis=3)
        self.labels = bunch.target.astype(np.int64)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def parse_spec(spec):
    """``(kind, value)``: ("synthetic", KIND), ("builtin", NAME) or ("shards", PATH).

    ``synthetic:KIND:NAME=VALUE,...`` passes generator parameters (see
    :func:`synthetic_params`).  Raises ValueError for an unknown synthetic kind,
    a malformed parameter list or an empty spec.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"--data {spec!r}: expected DIR, synthetic:KIND or one of {BUILTINS}")
    if spec.startswith("synthetic:"):
        kind = spec.split(":", 2)[1]
        if kind not in SYNTHETIC_KINDS:
            raise ValueError(f"--data {spec!r}: unknown generator {kind!r}, expected "
                             f"synthetic:KIND with KIND in {SYNTHETIC_KINDS}")
        synthetic_params(spec)
        return "synthetic", kind
    if spec in BUILTINS:
        return "builtin", spec
    if spec.startswith(FASHION + ":"):
        root = spec.split(":", 1)[1]
        if not root:
            raise ValueError(f"--data {spec!r}: expected fashion-mnist:DIR with a folder")
        return "fashion-mnist", root
    return "shards", spec


def synthetic_params(spec):
    """Generator parameters of ``synthetic:KIND:NAME=VALUE,...`` as a dict (``{}`` without).

    Values are read as int, then float, then ``true``/``false``, else kept as
    strings: ``synthetic:onepfrac:delta=0.05,num_maps=3``.  The names are checked
    by the generator (``minivit.synth.make_generator``).  Raises ValueError for an
    entry without ``=`` or with an empty name.
    """
    parts = spec.split(":", 2)
    if len(parts) < 3 or not parts[2]:
        return {}
    params = {}
    for entry in parts[2].split(","):
        name, sep, text = entry.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--data {spec!r}: generator parameter {entry!r} is not "
                             "NAME=VALUE; expected synthetic:KIND:NAME=VALUE,NAME=VALUE")
        params[name.strip()] = _parse_value(text.strip())
    return params


def _parse_value(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def check_source(spec):
    """Cheap existence check of a ``--data`` spec (no indexing, no rendering).

    Meant to run on every MPI rank before any collective, so a bad path gives
    one clear message everywhere.  Raises ValueError / FileNotFoundError.
    """
    kind, value = parse_spec(spec)
    if spec == FASHION or kind == FASHION:
        root = FASHION_DIR if spec == FASHION else value
        find_files(root, "train")   # FileNotFoundError naming the apt package and the files
        find_files(root, "test")
        return
    if kind != "shards":
        return
    if not os.path.exists(value):
        raise FileNotFoundError(f"--data {value!r}: no such file or directory; expected a "
                                f"folder of .tar shards (or its index.json), synthetic:KIND "
                                f"with KIND in {SYNTHETIC_KINDS}, or one of {BUILTINS}")
    if os.path.isdir(value) and not (os.path.isfile(os.path.join(value, "index.json")) or
                                     any(f.endswith(".tar") for f in os.listdir(value))):
        raise FileNotFoundError(f"--data {value!r}: the folder holds no index.json and no "
                                f".tar shards")


def open_data(spec, *, classes=None, image_size=32, seed=0, instances=None, holdout=0.1,
              eval_spec=None, split_seed=0, random_samples=1024, random_seed=0,
              labels_per_class=None, test_spec=None):
    """Resolve ``spec`` into ``DataSplits``; see the module docstring.

    classes: number of classes for ``synthetic:KIND`` (required there); for
        shards and built-ins it is read from the data and, when given, checked
        (labels must lie in ``[0, classes)``).
    image_size: render size for synthetic data (pixels).
    seed: dataset seed of the synthetic generator.
    instances: synthetic instances per class used in total (train + held-out);
        default: what the generator has (1000 for FractalDB).
    holdout: held-out fraction (of instances for synthetic, of each class for
        shards); 0 disables the held-out split.
    eval_spec: explicit held-out shards (overrides ``holdout`` for shards).
    split_seed: seed of the stratified ``digits`` and ``fashion-mnist`` held-out
        splits and of the ``labels_per_class`` draw.
    random_samples, random_seed: size and seed of ``random`` (``classes`` labels,
        ``image_size`` pixels; no held-out split).
    labels_per_class: keep this many training images per class (seeded by
        ``split_seed``, stratified); None keeps all.
    test_spec: shards of a test set (``DataSplits.test``); not with fashion-mnist,
        which has its own.
    """
    splits = _open(spec, classes, image_size, seed, instances, holdout, eval_spec,
                   split_seed, random_samples, random_seed)
    if test_spec is not None:
        if splits.test is not None:
            raise ValueError(f"--test-data {test_spec!r}: --data {spec!r} has its own test "
                             "set; expected no --test-data")
        check_source(test_spec)
        splits.test = ShardDataset(test_spec)
        splits.description += f"; test {test_spec}: {len(splits.test)} images"
    if labels_per_class is not None:
        _limit_labels(splits, spec, labels_per_class, split_seed)
    return splits


def _limit_labels(splits, spec, per_class, seed):
    labels = getattr(splits.train, "labels", None)
    if labels is None:
        raise ValueError(f"--labels-per-class with --data {spec!r}: its training split "
                         "has no label list to stratify by")
    keep = labels_per_class_subset(labels, per_class, seed)
    splits.train = Subset(splits.train, keep)
    splits.description += (f"; {per_class} labelled images per class ({len(keep)}, "
                           f"stratified, seed {seed})")


def _fashion(root, holdout, split_seed, classes):
    train = FashionMNIST(root, "train")
    test = FashionMNIST(root, "test")
    _check_classes(FASHION, train.num_classes, classes)
    if holdout == 0:
        return DataSplits(train, None, train.num_classes, train.image_size,
                          f"Fashion-MNIST {root}: {len(train)} train, no validation, "
                          f"{len(test)} test", test)
    tr, ev = stratified_split(train.labels, holdout, seed=split_seed)
    return DataSplits(Subset(train, tr), Subset(train, ev), train.num_classes,
                      train.image_size,
                      f"Fashion-MNIST {root}: {len(tr)} train / {len(ev)} validation "
                      f"(stratified, seed {split_seed}) of the official 60,000; "
                      f"{len(test)} test", test)


def _open(spec, classes, image_size, seed, instances, holdout, eval_spec, split_seed,
          random_samples, random_seed):
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout {holdout!r}: expected 0 <= fraction < 1")
    kind, value = parse_spec(spec)
    if spec == FASHION or kind == FASHION:
        if eval_spec is not None:
            raise ValueError(f"--eval-data {eval_spec!r} with --data {spec!r}: Fashion-MNIST's "
                             "validation split is carved from its training set (--holdout)")
        check_source(spec)
        return _fashion(FASHION_DIR if spec == FASHION else value, holdout, split_seed,
                        classes)
    if kind == "synthetic":
        return _synthetic(value, classes, image_size, seed, instances, holdout,
                          synthetic_params(spec))
    if spec == "random":
        data = RandomImages(random_samples, image_size, classes or 10, seed=random_seed)
        return DataSplits(data, None, data.num_classes, image_size,
                          f"random ({random_samples} images)")
    if kind == "builtin":
        full = DigitsSource()
        tr, ev = stratified_split(full.labels, holdout or 0.2, seed=split_seed)
        _check_classes(spec, full.num_classes, classes)
        return DataSplits(Subset(full, tr), Subset(full, ev), full.num_classes, full.image_size,
                          f"digits (scikit-learn), stratified split seed {split_seed}: "
                          f"{len(tr)} train / {len(ev)} held-out")
    check_source(value)
    full = ShardDataset(value)
    num_classes = _shard_classes(value, full)
    _check_classes(spec, num_classes, classes)
    if eval_spec is not None:
        check_source(eval_spec)
        ev = ShardDataset(eval_spec)
        return DataSplits(full, ev, num_classes, None,
                          f"{value}: {len(full)} train, {eval_spec}: {len(ev)} held-out")
    if holdout == 0:
        return DataSplits(full, None, num_classes, None, f"{value}: {len(full)} samples")
    tr, ev = stratified_split(full.labels, holdout)
    return DataSplits(Subset(full, tr), Subset(full, ev), num_classes, None,
                      f"{value}: {len(tr)} train / {len(ev)} held-out (last "
                      f"{holdout:.0%} of each class)")


def _synthetic(kind, classes, image_size, seed, instances, holdout, params):
    if classes is None or classes < 1:
        raise ValueError(f"--data synthetic:{kind} needs --classes >= 1, got {classes!r}")
    probe = SyntheticSource(kind, classes, image_size, seed=seed, instances=1, **params)
    available = probe.generator.instances_per_class
    total = instances if instances is not None else available
    if total is None:
        raise ValueError(f"synthetic:{kind} has unbounded instances per class: give the "
                         "number of instances per class to use")
    if available is not None and total > available:
        raise ValueError(f"instances {total} exceeds the {available} instances per class "
                         f"of synthetic:{kind}")
    n_eval = math.ceil(holdout * total) if holdout else 0
    if n_eval >= total:
        raise ValueError(f"holdout {holdout} of {total} instances leaves none to train on")
    train = SyntheticSource(kind, classes, image_size, seed=seed, instances=range(total - n_eval),
                            generator=probe.generator)
    ev = (SyntheticSource(kind, classes, image_size, seed=seed,
                          instances=range(total - n_eval, total), generator=probe.generator)
          if n_eval else None)
    shown = "".join(f", {k}={v}" for k, v in params.items())
    return DataSplits(train, ev, classes, image_size,
                      f"synthetic:{kind} on the fly{shown}, {classes} classes, {image_size} px, "
                      f"instances 0..{total - n_eval - 1} train"
                      + (f", {total - n_eval}..{total - 1} held-out" if n_eval else ""))


def _shard_classes(path, dataset):
    if dataset.num_classes is None:
        raise ValueError(f"--data {path!r}: the shards carry no class labels (.cls members)")
    return int(dataset.num_classes)


def _check_classes(spec, found, requested):
    if requested is not None and requested != found:
        raise ValueError(f"--classes {requested} but --data {spec!r} has {found} classes: "
                         "expected them to match (or leave --classes out)")


class LoaderSteps:
    """Per optimizer step, ``(epoch, [(x, y), ...])`` with ``accum`` micro-batches from a Loader.

    Per-step micro-batches over ``minivit.io.Loader``:
    a Loader built with ``batch_size = micro-batch`` and ``world_size = dp``
    covers ``micro x dp`` images per call, so one optimizer step is ``accum``
    consecutive calls and the global batch is ``micro x accum x dp``.
    x: ``(b, 3, S, S)`` of ``dtype``; y: int64 ``(b,)``.  The epoch reported is
    the loader's epoch at the step's first micro-batch.
    """

    def __init__(self, loader, accum, dtype="float32"):
        if isinstance(accum, bool) or not isinstance(accum, (int, np.integer)) or accum < 1:
            raise ValueError(f"accum={accum!r}: expected a positive integer")
        self.loader, self.accum, self.dtype = loader, int(accum), np.dtype(dtype)

    def __iter__(self):
        return self

    def __next__(self):
        epoch = self.loader.epoch
        micro = []
        for _ in range(self.accum):
            x, y = self.loader.next_batch()
            micro.append((x.astype(self.dtype, copy=False), y))
        return epoch, micro


def spread_subset(dataset, n):
    """At most ``n`` samples of ``dataset`` at evenly spaced indices (all if it has fewer).

    Held-out sets here are class-major with equal counts per class, so the
    spread keeps every class about equally represented.  Raises ValueError for n < 1.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n={n!r}: expected a positive number of samples")
    if len(dataset) <= n:
        return dataset
    return Subset(dataset, np.linspace(0, len(dataset) - 1, n).round().astype(np.int64))
