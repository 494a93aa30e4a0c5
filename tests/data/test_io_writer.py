"""ShardWriter: byte-exact against ``tarfile`` (the test reference), naming,
rotation, key validation and the index files."""
import io
import json
import os
import tarfile

import pytest

from minivit.io import ShardWriter, read_dataset_index, read_shard_index
from minivit.io import tarformat as tf


def _sample(i, label=None, payload=None, meta=True):
    s = {"__key__": f"{i:06d}", "png": payload or bytes([i % 251]) * (100 + 37 * i),
         "cls": i % 3 if label is None else label}
    if meta:
        s["json"] = {"i": i, "name": "x"}
    return s


def _tarfile_reference(samples):
    """The same members written by Python's tarfile with our fixed metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            for ext in ("png", "cls", "json"):
                if ext not in s:
                    continue
                data = s[ext]
                if ext == "cls":
                    data = str(data).encode()
                elif ext == "json":
                    data = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
                ti = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                ti.size, ti.mtime, ti.mode = len(data), tf.FIXED_MTIME, tf.FIXED_MODE
                ti.uid, ti.gid = tf.FIXED_UID, tf.FIXED_GID
                ti.uname, ti.gname = tf.FIXED_UNAME, tf.FIXED_GNAME
                tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_bytes_equal_tarfile_reference(tmp_path):
    samples = [_sample(i, meta=i % 2 == 0) for i in range(7)]
    with ShardWriter(str(tmp_path / "d-%06d.tar")) as w:
        for s in samples:
            w.write(s)
    data = (tmp_path / "d-000000.tar").read_bytes()
    assert data == _tarfile_reference(samples)
    assert len(data) % tf.RECORD == 0


def test_deterministic_and_rotation(tmp_path):
    for run in ("a", "b"):
        with ShardWriter(str(tmp_path / run / "s-%06d.tar"), max_count=3) as w:
            for i in range(8):
                w.write(_sample(i))
    names = sorted(os.listdir(tmp_path / "a"))
    assert [n for n in names if n.endswith(".tar")] == [
        "s-000000.tar", "s-000001.tar", "s-000002.tar"]
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes()
    idx, paths = read_dataset_index(str(tmp_path / "a" / "index.json"))
    assert [s["samples"] for s in idx["shards"]] == [3, 3, 2]
    assert idx["num_samples"] == 8 and idx["num_classes"] == 3
    assert idx["class_counts"] == [3, 3, 2]
    assert paths[0] == str(tmp_path / "a" / "s-000000.tar")


def test_sidecar_offsets_point_at_members(tmp_path):
    samples = [_sample(i) for i in range(4)]
    with ShardWriter(str(tmp_path / "s-%06d.tar")) as w:
        for s in samples:
            w.write(s)
    shard = tmp_path / "s-000000.tar"
    idx = read_shard_index(str(shard) + ".idx")
    data = shard.read_bytes()
    assert idx["shard_bytes"] == len(data) and idx["labels"] == [0, 1, 2, 0]
    with tarfile.open(shard) as tar:
        ref = {m.name: (m.offset_data, m.size) for m in tar.getmembers()}
    for s, entry in zip(samples, idx["samples"]):
        for ext, (off, size) in entry["members"].items():
            assert ref[f"{s['__key__']}.{ext}"] == (off, size)
        off, size = entry["members"]["png"]
        assert data[off:off + size] == s["png"]


def test_max_bytes_rotation(tmp_path):
    with ShardWriter(str(tmp_path / "s-%06d.tar"), max_bytes=3 * tf.RECORD) as w:
        for i in range(6):
            w.write(_sample(i, payload=b"z" * 9000, meta=False))
    for shard in w.shards:
        assert os.path.getsize(shard) <= 3 * tf.RECORD


@pytest.mark.parametrize("key", ["", "../x", "/abs", "a/b", "a.b", "a b", "a\\b", "k\n", 5])
def test_bad_keys_rejected(tmp_path, key):
    with ShardWriter(str(tmp_path / "s-%06d.tar")) as w:
        with pytest.raises(ValueError, match="key"):
            w.write({"__key__": key, "png": b"x", "cls": 1})


@pytest.mark.parametrize("sample, match", [
    ({"__key__": "a", "cls": 1}, "image"),
    ({"__key__": "a", "png": b"x"}, "cls"),
    ({"__key__": "a", "png": b"x", "cls": -1}, "cls"),
    ({"__key__": "a", "png": b"x", "cls": 1, "txt": b"t"}, "unknown"),
    ({"__key__": "a", "png": b"x", "jpg": b"y", "cls": 1}, "exactly one image"),
    ({"__key__": "a", "png": 3, "cls": 1}, "bytes"),
])
def test_bad_samples_rejected(tmp_path, sample, match):
    with ShardWriter(str(tmp_path / "s-%06d.tar")) as w:
        with pytest.raises(ValueError, match=match):
            w.write(sample)


def test_duplicate_key_and_bad_pattern(tmp_path):
    with pytest.raises(ValueError, match="placeholder"):
        ShardWriter(str(tmp_path / "plain.tar"))
    with ShardWriter(str(tmp_path / "s-%06d.tar")) as w:
        w.write(_sample(1))
        with pytest.raises(ValueError, match="duplicate"):
            w.write(_sample(1))


def test_failed_run_publishes_no_index(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(str(tmp_path / "s-%06d.tar")) as w:
            w.write(_sample(0))
            raise RuntimeError("boom")
    assert not (tmp_path / "index.json").exists()
    assert not (tmp_path / "s-000000.tar").exists()


def test_inline_index_alone_gives_random_access(tmp_path):
    from minivit.io import ShardDataset
    with ShardWriter(str(tmp_path / "s-%06d.tar"), max_count=2, sidecars=False) as w:
        for i in range(5):
            w.write(_sample(i))
    assert sorted(os.listdir(tmp_path)) == ["index.json", "s-000000.tar", "s-000001.tar",
                                            "s-000002.tar"]
    idx, _ = read_dataset_index(str(tmp_path / "index.json"))
    assert idx["shards"][2]["index"]["labels"] == [4 % 3]
    with open(tmp_path / "s-000001.tar", "r+b") as f:
        f.write(b"garbage")   # headers are never read when the table is inline
    ds = ShardDataset(tmp_path)
    assert ds.problems == [] and ds.read_sample(3)["png"] == _sample(3)["png"]


def test_merge_shards_written_by_separate_writers(tmp_path):
    from minivit.io import write_dataset_index
    for rank in range(2):   # e.g. two MPI ranks, each writing its own shard numbers
        with ShardWriter(str(tmp_path / "s-%06d.tar"), max_count=2, index=False,
                         start_shard=rank * 10) as w:
            for i in range(rank * 3, rank * 3 + 3):
                w.write(_sample(i))
    assert not (tmp_path / "index.json").exists()
    shards = sorted(str(p) for p in tmp_path.glob("*.tar"))
    assert [os.path.basename(s) for s in shards] == [
        "s-000000.tar", "s-000001.tar", "s-000010.tar", "s-000011.tar"]
    obj = write_dataset_index(str(tmp_path / "index.json"), shards, class_names="abc")
    assert obj["num_samples"] == 6 and obj["class_counts"] == [2, 2, 2]
    assert obj["class_names"] == ["a", "b", "c"]
    os.remove(shards[1] + ".idx")
    with pytest.raises(ValueError, match="no sidecar"):
        write_dataset_index(str(tmp_path / "index.json"), shards)
