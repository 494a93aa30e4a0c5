"""ShardDataset: round trip, header-walk index, webdataset interop, sources."""
import json
import os
import shutil

import numpy as np
import pytest
import webdataset as wds

from minivit.io import ShardDataset, read_shard_index
from minivit.io.walk import walk_shard
from io_support import image, png, write_shards


@pytest.fixture
def shards(tmp_path):
    write_shards(str(tmp_path / "s-%06d.tar"), 27, 10)
    return tmp_path


def test_round_trip_byte_exact(shards):
    ds = ShardDataset(shards)
    assert len(ds) == 27 and ds.num_classes == 3
    for j in range(27):
        raw = ds.read_sample(j)
        assert raw["__key__"] == f"{j:06d}"
        assert raw["png"] == png(image(j)) and raw["cls"] == b"%d" % (j % 3)
        assert json.loads(raw["json"]) == {"j": j}
        img, label = ds[j]
        assert img.dtype == np.uint8 and img.shape == (8, 8, 3)
        np.testing.assert_array_equal(img, image(j))
        assert label == j % 3
    np.testing.assert_array_equal(ds.labels, np.arange(27) % 3)


def test_header_walk_equals_written_index(shards):
    for k in range(3):
        path = str(shards / f"s-{k:06d}.tar")
        samples, problems, size = walk_shard(path)
        written = read_shard_index(path + ".idx")
        assert problems == [] and size == written["shard_bytes"]
        assert samples == written["samples"]


def test_without_sidecars_same_samples(shards, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for k in range(3):
        shutil.copy(shards / f"s-{k:06d}.tar", bare)
    a, b = ShardDataset(shards), ShardDataset(bare)
    assert len(a) == len(b) == 27 and b.num_classes is None
    for j in (0, 9, 10, 26):
        assert a.read_sample(j)["png"] == b.read_sample(j)["png"]
        assert a[j][1] == b[j][1]


def test_reads_webdataset_written_shards(tmp_path):
    # webdataset writes members sorted (cls, json, png) with pax headers for
    # its float mtimes; both must be handled.
    with wds.ShardWriter(str(tmp_path / "w-%06d.tar"), maxcount=4, verbose=0) as sink:
        for j in range(9):
            sink.write({"__key__": f"k{j}", "png": png(image(j)), "cls": str(j % 5),
                        "json": json.dumps({"j": j})})
    ds = ShardDataset(str(tmp_path))
    assert len(ds) == 9 and ds.problems == []
    for j in range(9):
        img, label = ds[j]
        np.testing.assert_array_equal(img, image(j))
        assert label == j % 5 and ds.read_sample(j)["__key__"] == f"k{j}"


def test_webdataset_reads_our_shards(shards):
    urls = [str(shards / f"s-{k:06d}.tar") for k in range(3)]
    got = list(wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("png", "cls", "json"))
    assert len(got) == 27
    for j, (img, label, meta) in enumerate(got):
        np.testing.assert_array_equal(img, image(j))
        assert int(label) == j % 3 and meta == {"j": j}


def test_same_base_name_in_different_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_shards(str(a / "x-%06d.tar"), 3, 10)
    write_shards(str(b / "x-%06d.tar"), 5, 10, num_classes=5)
    ds = ShardDataset([a / "x-000000.tar", b / "x-000000.tar"])
    assert len(ds) == 8 and ds.labels.tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
    assert ds.locate(0)[0] != ds.locate(3)[0]
    assert ds.locate(3) == (str(b / "x-000000.tar"), 0)


def test_source_forms_and_errors(shards):
    assert len(ShardDataset(str(shards / "index.json"))) == 27
    assert len(ShardDataset(str(shards / "s-000002.tar"))) == 7
    with pytest.raises(FileNotFoundError, match="nope"):
        ShardDataset(str(shards / "nope.tar"))
    with pytest.raises(ValueError, match="on_error"):
        ShardDataset(shards, on_error="ignore")
    with pytest.raises(ValueError, match="max_pixels"):
        ShardDataset(shards, max_pixels=0)
    ds = ShardDataset(shards)
    with pytest.raises(IndexError, match="27"):
        ds[27]
    with pytest.raises(TypeError):
        ds[1.5]


def test_missing_shard_in_index_fails_at_startup(shards):
    os.remove(shards / "s-000001.tar")
    with pytest.raises(FileNotFoundError, match="s-000001.tar"):
        ShardDataset(shards)


def test_header_walk_never_reads_member_data(shards, monkeypatch):
    from minivit.io import walk
    reads = []
    real = walk._read

    def spy(fd, size, offset):
        reads.append((offset, size))
        return real(fd, size, offset)

    monkeypatch.setattr(walk, "_read", spy)
    path = str(shards / "s-000000.tar")
    samples, _, _ = walk_shard(path)
    data = [(off, off + size) for s in samples for off, size in s["members"].values()]
    assert len(reads) >= 30
    for off, size in reads:
        assert not any(off < end and start < off + size for start, end in data), (off, size)
