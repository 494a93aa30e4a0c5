"""run/pack.py sources: ImageFolder, CIFAR-10/100 binary batches, digits."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from minivit.io import ShardDataset
from minivit.io.pack import main, pack
from minivit.io.pack_sources import cifar_source, digits_source, image_folder_source
from io_support import image, png

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _jpeg(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    for name, files in {"cat": ["b.png", "a.jpg"], "dog": ["x.png"]}.items():
        (root / name).mkdir(parents=True)
        for k, f in enumerate(files):
            arr = image(k + 10 * len(name))
            (root / name / f).write_bytes(png(arr) if f.endswith(".png") else _jpeg(arr))
    (root / "dog" / "notes.txt").write_text("ignored")
    return root


def test_image_folder_stores_original_bytes(folder, tmp_path):
    assert main(["imagefolder", str(folder), "--out", str(tmp_path / "out")]) == 0
    ds = ShardDataset(tmp_path / "out")
    assert len(ds) == 3 and ds.class_names == ["cat", "dog"]
    raws = [ds.read_sample(i) for i in range(3)]
    assert [json.loads(r["json"])["path"] for r in raws] == ["cat/a.jpg", "cat/b.png", "dog/x.png"]
    assert raws[0]["jpg"] == (folder / "cat" / "a.jpg").read_bytes()
    assert raws[2]["png"] == (folder / "dog" / "x.png").read_bytes()
    assert ds.labels.tolist() == [0, 0, 1]
    np.testing.assert_array_equal(ds[2][0], image(30))


def test_image_folder_errors(folder, tmp_path):
    (folder / "cat" / "broken.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match="broken.png"):
        image_folder_source(folder)
    with pytest.raises(ValueError, match="no class sub-folders"):
        image_folder_source(tmp_path / "imgs" / "dog")
    assert main(["imagefolder", str(folder), "--out", str(tmp_path / "o"), "--no-verify"]) == 0
    assert main(["imagefolder", str(folder), "--out", str(tmp_path / "o"), "--no-verify"]) == 2


def test_shuffle_seed_permutes_deterministically(folder):
    keys = lambda seed: [s["json"]["path"] for s in image_folder_source(folder, seed)[2]]
    assert keys(1) == keys(1) and sorted(keys(1)) == sorted(keys(None))


def _cifar_records(n, header, rng):
    labels = rng.integers(0, 10, (n, header), dtype=np.uint8)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return np.concatenate([labels, pixels], axis=1)


def test_cifar10_binary(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    recs = [_cifar_records(3, 1, rng) for _ in range(5)]
    for k, r in enumerate(recs, 1):
        r.tofile(d / f"data_batch_{k}.bin")
    _cifar_records(2, 1, rng).tofile(d / "test_batch.bin")
    (d / "batches.meta.txt").write_text("\n".join(f"c{k}" for k in range(10)) + "\n\n")
    names, n, samples = cifar_source(tmp_path, "train")
    assert names == [f"c{k}" for k in range(10)] and n == 15
    pack(samples, str(tmp_path / "out"), class_names=names)
    ds = ShardDataset(tmp_path / "out")
    allr = np.concatenate(recs)
    for i in (0, 7, 14):
        img, label = ds[i]
        assert label == allr[i, 0]
        np.testing.assert_array_equal(img, allr[i, 1:].reshape(3, 32, 32).transpose(1, 2, 0))


def test_cifar100_binary_fine_and_coarse(tmp_path):
    rng = np.random.default_rng(1)
    recs = _cifar_records(4, 2, rng)
    recs.tofile(tmp_path / "test.bin")
    _cifar_records(1, 2, rng).tofile(tmp_path / "train.bin")
    fine = [s["cls"] for s in cifar_source(tmp_path, "test", "fine")[2]]
    coarse = [s["cls"] for s in cifar_source(tmp_path, "test", "coarse")[2]]
    assert fine == recs[:, 1].tolist() and coarse == recs[:, 0].tolist()
    (tmp_path / "test.bin").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="not a multiple of the 3074-byte record"):
        cifar_source(tmp_path, "test")
    with pytest.raises(ValueError, match="no CIFAR binary"):
        cifar_source(tmp_path / "nowhere")


def test_digits_split_is_a_partition():
    names, n_train, train = digits_source("train")
    _, n_test, test = digits_source("test")
    tr, te = [s["json"]["index"] for s in train], [s["json"]["index"] for s in test]
    assert n_train + n_test == 1797 and n_test == 359 and not set(tr) & set(te)
    assert names == [str(k) for k in range(10)]
    s = next(digits_source("all")[2])
    img = np.asarray(Image.open(io.BytesIO(s["png"])))
    from sklearn.datasets import load_digits
    want = np.rint(load_digits().images[0] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(img, want)     # 0..16 scaled to 0..255
    assert s["cls"] == 0


def test_cli_runs(tmp_path, folder):
    out = subprocess.run([sys.executable, "run/pack.py", "imagefolder", str(folder),
                          "--out", str(tmp_path / "cli")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "packed 3 samples into 1 shard(s)" in out.stdout
