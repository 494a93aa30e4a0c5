"""Real datasets as streams of writer samples: ImageFolder, CIFAR binary, digits.

Each ``*_source`` function checks its input, then returns
``(class_names, count, samples)`` where ``samples`` is an iterator of
``ShardWriter`` sample dicts.  Keys are zero-padded running numbers, so they
are valid and unique whatever the original file names are; the original
path or record number goes into the ``json`` member.
"""
import io as _pyio
import os

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp"}
CIFAR_PIXELS = 32 * 32 * 3


def encode_png(array):
    """uint8 ``(H, W)`` or ``(H, W, 3)`` -> PNG bytes (Pillow, deterministic)."""
    buf = _pyio.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def image_folder_source(root, shuffle_seed=None, verify=True):
    """``root/CLASS_NAME/*.png|jpg|jpeg|webp``; classes sorted by name.

    Files are stored as they are (no re-encoding).  Other files are ignored,
    as torchvision's ``ImageFolder`` does.  ``shuffle_seed`` permutes the
    sample order (class-sorted shards suit streaming readers badly);
    ``verify`` opens every image with Pillow first.  Raises ``ValueError``
    for no classes, no images, or an unreadable image (naming the file).
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(f"image folder {root!r} is not a directory")
    classes = sorted(d for d in os.listdir(root)
                     if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(f"{root}: no class sub-folders (expected root/class_name/*.png)")
    files = []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name)):
            dirnames.sort()
            for f in sorted(filenames):
                ext = IMAGE_SUFFIXES.get(os.path.splitext(f)[1].lower())
                if ext and not f.startswith("."):
                    files.append((os.path.join(dirpath, f), ext, label))
    if not files:
        raise ValueError(f"{root}: no images with suffixes {sorted(IMAGE_SUFFIXES)}")
    if verify:
        for path, _, _ in files:
            try:
                with Image.open(path) as img:
                    img.verify()
            except Exception as e:
                raise ValueError(f"{path}: not a readable image ({e})") from None
    if shuffle_seed is not None:
        files = [files[i] for i in np.random.default_rng(shuffle_seed).permutation(len(files))]

    def samples():
        for n, (path, ext, label) in enumerate(files):
            with open(path, "rb") as f:
                data = f.read()
            yield {"__key__": f"{n:08d}", ext: data, "cls": label,
                   "json": {"path": os.path.relpath(path, root), "class_name": classes[label]}}
    return classes, len(files), samples()


def _read_lines(path):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def cifar_source(root, split="train", label="fine"):
    """CIFAR-10 or CIFAR-100 *binary version* batches in ``root``.

    CIFAR-10: ``data_batch_1..5.bin`` / ``test_batch.bin``, records of
    1 label byte + 3072 pixel bytes (R, G, B planes of 32x32, row-major).
    CIFAR-100: ``train.bin`` / ``test.bin``, records of coarse and fine label
    bytes + 3072 pixel bytes; ``label`` picks ``"fine"`` or ``"coarse"``.
    (Krizhevsky 2009, and the format notes on the CIFAR web page.)
    Images are stored as PNG.  Raises ``ValueError`` for a bad layout.
    """
    root = os.fspath(root)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if label not in ("fine", "coarse"):
        raise ValueError(f"label must be 'fine' or 'coarse', got {label!r}")
    for sub in ("", "cifar-10-batches-bin", "cifar-100-binary"):
        d = os.path.join(root, sub)
        if os.path.isfile(os.path.join(d, "test_batch.bin")):
            files = ([f"data_batch_{k}.bin" for k in range(1, 6)] if split == "train"
                     else ["test_batch.bin"])
            names, header, pick = _read_lines(os.path.join(d, "batches.meta.txt")), 1, 0
            break
        if os.path.isfile(os.path.join(d, "test.bin")):
            files = [f"{split}.bin"]
            names = _read_lines(os.path.join(d, f"{label}_label_names.txt"))
            header, pick = 2, (1 if label == "fine" else 0)
            break
    else:
        raise ValueError(f"{root}: no CIFAR binary batches (test_batch.bin or test.bin)")
    records = []
    for f in files:
        path = os.path.join(d, f)
        if not os.path.isfile(path):
            raise ValueError(f"{path}: missing CIFAR batch file")
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size % (header + CIFAR_PIXELS):
            raise ValueError(f"{path}: {raw.size} bytes is not a multiple of the "
                             f"{header + CIFAR_PIXELS}-byte record")
        records.append(raw.reshape(-1, header + CIFAR_PIXELS))
    records = np.concatenate(records)

    def samples():
        for n, rec in enumerate(records):
            img = rec[header:].reshape(3, 32, 32).transpose(1, 2, 0)
            yield {"__key__": f"{n:06d}", "png": encode_png(np.ascontiguousarray(img)),
                   "cls": int(rec[pick]), "json": {"record": n}}
    return names, len(records), samples()


def digits_source(split="train", test_fraction=0.2, seed=0):
    """scikit-learn's bundled ``load_digits`` (1797 8x8 greys, 10 classes).

    Values 0..16 are scaled to 0..255 and stored as 8x8 grey PNGs.  The split
    is a seeded permutation: its first ``round(N * test_fraction)`` samples
    are ``test``; ``split="all"`` keeps everything.  Requires scikit-learn.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    from sklearn.datasets import load_digits   # optional dependency, imported on use
    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    n_test = int(round(len(images) * test_fraction))
    perm = np.random.default_rng(seed).permutation(len(images))
    chosen = {"all": np.arange(len(images)), "test": np.sort(perm[:n_test]),
              "train": np.sort(perm[n_test:])}[split]

    def samples():
        for i in chosen:
            yield {"__key__": f"{i:06d}", "png": encode_png(images[i]),
                   "cls": int(bunch.target[i]), "json": {"index": int(i)}}
    return [str(c) for c in bunch.target_names], len(chosen), samples()


def fashion_mnist_source(root=None, split="train"):
    """Fashion-MNIST's official ``split`` ("train" 60,000 or "test" 10,000) from its IDX
    files in ``root`` (default: the Debian package's folder), as 28x28 grey PNGs.

    Raises FileNotFoundError naming the apt package and the files when they are
    missing, ValueError for a bad IDX file (``minivit.io.fashion_mnist``).
    """
    from .fashion_mnist import CLASS_NAMES, DEFAULT_DIR, FashionMNIST
    data = FashionMNIST(root or DEFAULT_DIR, split)

    def samples():
        for i in range(len(data)):
            yield {"__key__": f"{i:06d}", "png": encode_png(data.images[i]),
                   "cls": int(data.labels[i]), "json": {"index": i, "split": split}}
    return list(CLASS_NAMES), len(data), samples()
