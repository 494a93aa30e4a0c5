"""Bad and hostile input: truncation, bad checksums, undecodable images,
interleaved/duplicate keys, CRC mismatches and pixel limits."""
import io
import os
import tarfile
import warnings

import numpy as np
import pytest

from minivit.io import CorruptSampleError, ShardDataset, ShardError, ShardWarning
from minivit.io import read_shard_index
from io_support import image, png, write_shards


@pytest.fixture
def shard(tmp_path):
    write_shards(str(tmp_path / "s-%06d.tar"), 6, 10)
    path = str(tmp_path / "s-000000.tar")
    return path, read_shard_index(path + ".idx")


def _cut(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def _load(path, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ShardDataset(path, **kw)
    return ds, [str(w.message) for w in caught if issubclass(w.category, ShardWarning)]


def test_truncated_mid_member(shard):
    path, idx = shard
    png_off, png_size = idx["samples"][4]["members"]["png"]
    _cut(path, png_off + png_size // 2)
    ds, msgs = _load(path)
    assert len(ds) == 4   # samples 0..3 intact, 4 cut, 5 gone: reported, not silent
    assert any("stale" in m or "describes" in m for m in msgs)
    assert any(path in m and f"byte {idx['samples'][4]['members']['png'][0] - 512}" in m
               and "truncated" in m for m in msgs)
    np.testing.assert_array_equal(ds[3][0], image(3))
    with pytest.raises(ShardError, match="s-000000.tar"):
        ShardDataset(path, on_error="raise")


def test_truncated_at_block_boundary(shard):
    path, idx = shard
    end = idx["samples"][2]["end"]   # a 512-multiple right after sample 2
    assert end % 512 == 0
    _cut(path, end)
    os.remove(path + ".idx")
    ds, msgs = _load(path)
    assert len(ds) == 3
    assert msgs == [f"{path}: byte {end}: truncated: no end-of-archive marker at end "
                    f"of file ({end} bytes)"]
    with pytest.raises(ShardError, match=f"byte {end}"):
        ShardDataset(path, on_error="raise")


def test_truncated_between_members_of_a_sample(shard):
    path, idx = shard
    cls_off = idx["samples"][1]["members"]["cls"][0]
    _cut(path, cls_off - 512)          # sample 1 keeps its png, loses cls and json
    os.remove(path + ".idx")
    ds, msgs = _load(path)
    assert len(ds) == 1
    assert any("sample '000001' is incomplete" in m for m in msgs)


def test_corrupt_header_checksum_resyncs(shard):
    path, idx = shard
    os.remove(path + ".idx")
    hdr = idx["samples"][2]["members"]["cls"][0] - 512
    with open(path, "r+b") as f:
        f.seek(hdr + 3)
        f.write(b"Z")                 # inside the name field: checksum now wrong
    ds, msgs = _load(path)
    assert [ds.read_sample(i)["__key__"] for i in range(len(ds))] == [
        "000000", "000001", "000003", "000004", "000005"]
    assert any(f"byte {hdr}: bad header (header checksum mismatch)" in m for m in msgs)
    assert any("'000002' is incomplete" in m for m in msgs)
    with pytest.raises(ShardError, match=f"{path}: byte {hdr}"):
        ShardDataset(path, on_error="raise")


def test_crc_mismatch_detected(shard):
    path, idx = shard
    off, size = idx["samples"][3]["members"]["png"]
    with open(path, "r+b") as f:
        f.seek(off + size - 5)          # inside the IEND chunk: still decodable
        f.write(b"\xff")
    ds = ShardDataset(path)
    with pytest.raises(CorruptSampleError, match=f"{path}: byte {off}: .*CRC-32"):
        ds[3]
    ds[2]
    assert ShardDataset(path, verify_crc=False).read_sample(3)["__key__"] == "000003"


def test_undecodable_image_names_shard_and_offset(tmp_path):
    from minivit.io import ShardWriter
    with ShardWriter(str(tmp_path / "s-%06d.tar")) as w:
        w.write({"__key__": "good", "png": png(image(0)), "cls": 1})
        w.write({"__key__": "bad", "png": b"\x89PNG\r\n\x1a\nnot really", "cls": 2})
    ds = ShardDataset(tmp_path)
    path, off = ds.locate(1)
    with pytest.raises(CorruptSampleError, match=f"{path}: byte {off}: sample 'bad': undecodable"):
        ds[1]
    assert ds[0][1] == 1


def test_pixel_limit_rejects_before_decoding(tmp_path):
    from minivit.io import ShardWriter
    big = png(np.zeros((64, 64, 3), np.uint8))
    with ShardWriter(str(tmp_path / "s-%06d.tar")) as w:
        w.write({"__key__": "big", "png": big, "cls": 0})
    with pytest.raises(CorruptSampleError, match="64x64 = 4096 pixels, above max_pixels=4095"):
        ShardDataset(tmp_path, max_pixels=4095)[0]
    assert ShardDataset(tmp_path, max_pixels=4096)[0][0].shape == (64, 64, 3)


def _tar(path, names):
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name in names:
            data = b"1" if name.endswith(".cls") else png(image(0))
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))


@pytest.mark.parametrize("names, match", [
    (["0.png", "1.png", "0.cls", "1.cls"], "key '0' at byte .* appears again"),
    (["0.png", "0.cls", "1.png", "1.cls", "0.png", "0.cls"], "key .0. at byte 4096 .*interleaved or duplicate"),
    (["0.png", "0.png", "0.cls"], "duplicate member '0.png'"),
])
def test_interleaved_or_duplicate_keys(tmp_path, names, match):
    path = str(tmp_path / "bad.tar")
    _tar(path, names)
    for policy in ("skip", "raise"):
        with pytest.raises(ValueError, match=f"{path}: {match}"):
            ShardDataset(path, on_error=policy)


def test_zeroed_header_does_not_end_the_shard_silently(shard):
    path, idx = shard
    os.remove(path + ".idx")
    hdr = idx["samples"][2]["offset"]      # the png header of sample 2
    with open(path, "r+b") as f:
        f.seek(hdr)
        f.write(bytes(512))
    ds, msgs = _load(path)
    assert [ds.read_sample(i)["__key__"] for i in range(len(ds))] == [
        "000000", "000001", "000003", "000004", "000005"]
    assert any(f"byte {hdr}: zero block(s) before more data" in m for m in msgs)


def test_compressed_shard_is_a_clear_error(shard, tmp_path):
    import gzip
    path, _ = shard
    gz = str(tmp_path / "c.tar")
    with open(path, "rb") as src, gzip.open(gz, "wb") as dst:
        dst.write(src.read())
    with pytest.raises(ValueError, match="c.tar: gzip-compressed"):
        ShardDataset(gz)
