"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747) read from its IDX files.

The dataset is 70,000 grey 28x28 images of 10 clothing classes, in the
official split of 60,000 training and 10,000 test images.  The files are the
four IDX files of the original distribution, gzipped or not:

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz

The Debian package ``dataset-fashion-mnist`` installs them under
``/usr/share/datasets/fashion-mnist/`` (``DEFAULT_DIR``); any folder holding
them works (``--data fashion-mnist:DIR``).

IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a big-endian
header ``0x00 0x00 type ndim`` (type 0x08 = unsigned byte), then ``ndim``
big-endian uint32 sizes, then the values in C order.

Nothing here imports the model or MPI (DESIGN.md section 1).
"""
import gzip
import os

import numpy as np

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
APT_PACKAGE = "dataset-fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
UBYTE = 0x08


def read_idx(path):
    """The array stored in the IDX file ``path`` (``.gz`` is decompressed).

    Returns uint8 of the stored shape, e.g. (N, 28, 28) images or (N,) labels.
    Raises ValueError naming the file for a bad magic number, a value type
    other than unsigned byte, or a size that does not match the header.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (expected the magic bytes 00 00 TYPE NDIM)")
    if raw[2] != UBYTE:
        raise ValueError(f"{path}: IDX value type 0x{raw[2]:02x}, expected 0x08 (unsigned byte)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim < 1 or len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions)")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise ValueError(f"{path}: {len(raw)} bytes, the header {shape} implies {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path, array):
    """Write uint8 ``array`` as an IDX file (gzipped when ``path`` ends in .gz); for tests
    and tools.  Raises ValueError for a dtype other than uint8 or a 0-d array."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim < 1:
        raise ValueError(f"IDX writer: expected a uint8 array with >= 1 dimension, got "
                         f"{array.dtype} of shape {array.shape}")
    header = bytes([0, 0, UBYTE, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array).tobytes())


def find_files(root, split):
    """``(images path, labels path)`` of ``split`` ("train" or "test") in folder ``root``.

    Each file may be gzipped (``NAME.gz``) or not (``NAME``).  Raises
    FileNotFoundError naming the folder, the apt package and the expected file
    names when one is missing.
    """
    found = []
    for name in FILES[split]:
        for candidate in (name + ".gz", name):
            if os.path.isfile(os.path.join(root, candidate)):
                found.append(os.path.join(root, candidate))
                break
        else:
            raise FileNotFoundError(missing_message(root))
    return tuple(found)


def missing_message(root):
    """The error text for a folder without the Fashion-MNIST files."""
    names = ", ".join(n + ".gz" for pair in FILES.values() for n in pair)
    return (f"Fashion-MNIST not found in {root!r}: expected the four IDX files {names} "
            f"(gzipped or not). Install them with `apt-get install {APT_PACKAGE}` (into "
            f"{DEFAULT_DIR}) or pass --data fashion-mnist:DIR with a folder holding them")


class FashionMNIST:
    """One official split of Fashion-MNIST: ``ds[i] -> (uint8 (28, 28, 3), int label)``.

    root : folder of the IDX files (default ``DEFAULT_DIR``).
    split : "train" (60,000 images) or "test" (10,000).
    The grey image is repeated into 3 channels; the ``Loader`` resizes it to the
    model's input.  ``labels`` is int64 (N,).  Raises FileNotFoundError (see
    ``find_files``) or ValueError (bad IDX file; image and label counts differ).
    """

    on_error = "raise"
    num_classes = 10

    def __init__(self, root=DEFAULT_DIR, split="train"):
        if split not in FILES:
            raise ValueError(f"split {split!r}: expected 'train' or 'test'")
        images_path, labels_path = find_files(root, split)
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{root}: {split} images {images.shape} and labels {labels.shape}"
                             ": expected (N, H, W) and (N,) with the same N")
        if labels.size and int(labels.max()) >= self.num_classes:
            raise ValueError(f"{labels_path}: label {int(labels.max())} outside 0..9")
        self.root, self.split = root, split
        self.images = images
        self.labels = labels.astype(np.int64)
        self.image_size = int(images.shape[1])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        grey = self.images[i]
        return np.repeat(grey[:, :, None], 3, axis=2), int(self.labels[i])


def labels_per_class_subset(labels, per_class, seed):
    """int64 indices (sorted) of ``per_class`` samples of every class, seeded and stratified.

    labels : int (N,).  A class with fewer samples than ``per_class`` raises
    ValueError naming it and the counts.  The draw for ``per_class = n`` is a
    prefix of a seeded permutation per class, so smaller subsets are nested in
    larger ones for the same seed.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) \
            or per_class < 1:
        raise ValueError(f"--labels-per-class {per_class!r}: expected a positive integer")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise ValueError(f"--labels-per-class {per_class}: class {int(c)} has only "
                             f"{len(idx)} training samples")
        chosen.append(idx[rng.permutation(len(idx))[:per_class]])
    return np.sort(np.concatenate(chosen))
