"""Fashion-MNIST from IDX files (minivit.io.fashion_mnist) and its --data wiring:
official train/test, seeded validation split, --labels-per-class, clear errors."""
import gzip

import numpy as np
import pytest

from minivit.io.fashion_mnist import (APT_PACKAGE, FashionMNIST, labels_per_class_subset,
                                      read_idx, write_idx)
from minivit.io.sources import check_source, open_data, parse_spec
from tests.support.fashion_support import write_fashion


def test_idx_round_trip_gz_and_plain(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.idx", "a.idx.gz"):
        write_idx(tmp_path / name, a)
        b = read_idx(tmp_path / name)
        assert b.dtype == np.uint8 and b.shape == (2, 3, 4) and np.array_equal(a, b)
    # header: 00 00 08 ndim, then big-endian sizes (the MNIST page's layout)
    raw = (tmp_path / "a.idx").read_bytes()
    assert raw[:4] == bytes([0, 0, 8, 3]) and raw[4:8] == (2).to_bytes(4, "big")


def test_idx_errors_name_the_file(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="bad: not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "float").write_bytes(bytes([0, 0, 0x0D, 1]) + (1).to_bytes(4, "big") + b"0000")
    with pytest.raises(ValueError, match="value type 0x0d"):
        read_idx(tmp_path / "float")
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + b"abc")
    with pytest.raises(ValueError, match="11 bytes, the header \\(5,\\) implies 13"):
        read_idx(tmp_path / "short.gz")
    with pytest.raises(ValueError, match="expected a uint8 array"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.float32))


def test_dataset_reads_the_official_splits(tmp_path):
    labels = write_fashion(tmp_path, per_class_train=4, per_class_test=2, gz=False)
    train, test = FashionMNIST(tmp_path, "train"), FashionMNIST(tmp_path, "test")
    assert len(train) == 40 and len(test) == 20 and train.image_size == 28
    image, label = train[5]
    assert image.shape == (28, 28, 3) and image.dtype == np.uint8
    assert label == labels["train"][5] and np.array_equal(image[..., 0], image[..., 2])
    assert image[2 * label + 1, 0, 0] == 250    # the band of its class
    assert np.array_equal(test.labels, labels["test"])


def test_missing_files_name_the_package_and_the_files(tmp_path):
    for call in (lambda: FashionMNIST(tmp_path), lambda: check_source(f"fashion-mnist:{tmp_path}"),
                 lambda: open_data(f"fashion-mnist:{tmp_path}")):
        with pytest.raises(FileNotFoundError) as info:
            call()
        text = str(info.value)
        assert APT_PACKAGE in text and str(tmp_path) in text
        for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                     "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
            assert name in text
    assert parse_spec(f"fashion-mnist:{tmp_path}") == ("fashion-mnist", str(tmp_path))
    with pytest.raises(ValueError, match="expected fashion-mnist:DIR"):
        parse_spec("fashion-mnist:")


def test_validation_is_carved_from_train_and_test_is_apart(tmp_path):
    labels = write_fashion(tmp_path, per_class_train=10, per_class_test=3)
    s = open_data(f"fashion-mnist:{tmp_path}", holdout=0.2, split_seed=1)
    assert s.num_classes == 10 and len(s.train) == 80 and len(s.eval) == 20
    assert len(s.test) == 30 and s.test.split == "test"
    train_idx, val_idx = set(s.train.indices), set(s.eval.indices)
    assert not train_idx & val_idx and len(train_idx | val_idx) == 100
    # stratified: 2 validation images per class; seeded: another seed, another split
    assert np.bincount(labels["train"][s.eval.indices], minlength=10).tolist() == [2] * 10
    again = open_data(f"fashion-mnist:{tmp_path}", holdout=0.2, split_seed=1)
    other = open_data(f"fashion-mnist:{tmp_path}", holdout=0.2, split_seed=2)
    assert np.array_equal(again.eval.indices, s.eval.indices)
    assert not np.array_equal(other.eval.indices, s.eval.indices)
    with pytest.raises(ValueError, match="carved from its training set"):
        open_data(f"fashion-mnist:{tmp_path}", eval_spec=str(tmp_path))
    with pytest.raises(ValueError, match="has its own test set"):
        open_data(f"fashion-mnist:{tmp_path}", test_spec=str(tmp_path))


def test_labels_per_class_is_stratified_seeded_and_outside_validation(tmp_path):
    labels = write_fashion(tmp_path, per_class_train=10, per_class_test=1)
    s = open_data(f"fashion-mnist:{tmp_path}", holdout=0.2, split_seed=0, labels_per_class=3)
    assert len(s.train) == 30 and "3 labelled images per class" in s.description
    picked = s.train.dataset.indices[s.train.indices]      # indices into the 100 images
    assert not set(picked) & set(s.eval.indices)
    assert np.bincount(labels["train"][picked], minlength=10).tolist() == [3] * 10
    assert [s.train[i][1] for i in range(30)] == labels["train"][picked].tolist()
    # nested: the first 2 of a class are among its first 3 for the same seed
    small = labels_per_class_subset(labels["train"], 2, seed=5)
    large = labels_per_class_subset(labels["train"], 3, seed=5)
    assert set(small) < set(large)
    with pytest.raises(ValueError, match="class 0 has only 8 training samples"):
        open_data(f"fashion-mnist:{tmp_path}", holdout=0.2, labels_per_class=9)
    with pytest.raises(ValueError, match="--labels-per-class 0: expected a positive"):
        labels_per_class_subset(labels["train"], 0, seed=0)
    digits = open_data("digits", labels_per_class=5, split_seed=0)
    assert len(digits.train) == 50 and digits.test is None


def test_pack_fashion_mnist_writes_the_official_split(tmp_path):
    from minivit.io import ShardDataset
    from minivit.io.pack import main
    labels = write_fashion(tmp_path / "fm", per_class_train=3, per_class_test=2)
    assert main(["fashion-mnist", str(tmp_path / "fm"), "--out", str(tmp_path / "te"),
                 "--split", "test"]) == 0
    shards = ShardDataset(str(tmp_path / "te"))
    assert len(shards) == 20 and shards.num_classes == 10
    image, label = shards[3]
    assert image.shape[:2] == (28, 28) and label == labels["test"][3]
    assert main(["fashion-mnist", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
