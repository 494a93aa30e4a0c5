"""run/make_dataset.py: rank-count independence (1 vs 2 ranks), shard content,
categories and preview, and bad input rejected before any work."""
import importlib.util
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from minivit.synth import decode_png, make_generator
from minivit.synth.fractaldb_csv import import_categories

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "run" / "make_dataset.py"
FAST = ["--param", "num_points=2000", "--param", "search_points=2000",
        "--param", "search_size=64"]


def tree_bytes(folder):
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def args(out, kind="fractaldb", classes=5, per_class=3, size=24, shard=4, extra=FAST):
    return [SCRIPT, "--kind", kind, "--classes", classes, "--per-class", per_class,
            "--size", size, "--out", out, "--shard-size", shard, "--seed", 3, *extra]


def load_script():
    spec = importlib.util.spec_from_file_location("make_dataset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_in_process(argv, capsys):
    """Exit code and stderr of ``main(argv)`` when it stops at argument checks."""
    with pytest.raises(SystemExit) as info:
        load_script().main([str(a) for a in argv[1:]])
    return info.value.code, capsys.readouterr().err


def run_plain(argv):
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_same_bytes_for_one_and_two_ranks(run_mpi, tmp_path):
    one, two = tmp_path / "n1", tmp_path / "n2"
    run_mpi(1, args(one), timeout=240)
    run_mpi(2, args(two), timeout=240)
    files_one, files_two = tree_bytes(one), tree_bytes(two)
    assert files_one == files_two
    shards = sorted(n for n in files_one if n.endswith(".tar"))
    assert shards == [f"fractaldb-00000{i}.tar" for i in range(4)]  # 15 samples / 4
    # the comparison is not vacuous: shards hold different images
    assert len({files_one[s] for s in shards}) == 4
    assert {"index.json", "preview.png", "synth.json", "categories/00004.csv"} <= set(files_one)


@pytest.fixture(scope="module")
def newton_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("newton")
    proc = run_plain(args(out, kind="newton", classes=3, per_class=2, size=16, shard=10, extra=[]))
    assert proc.returncode == 0, proc.stderr
    return out


def test_shard_members_match_generator(newton_dir):
    gen = make_generator("newton", 3, 16, seed=3)
    with tarfile.open(newton_dir / "newton-000000.tar") as tar:
        names = tar.getnames()
        assert names[:3] == ["c00000_i000000.png", "c00000_i000000.cls", "c00000_i000000.json"]
        assert len(names) == 3 * 6
        for c, i in ((0, 0), (2, 1)):
            key = f"c{c:05d}_i{i:06d}"
            img = decode_png(tar.extractfile(key + ".png").read())
            np.testing.assert_array_equal(img, gen.render(c, i))
            assert tar.extractfile(key + ".cls").read() == str(c).encode()
            assert json.loads(tar.extractfile(key + ".json").read()) == json.loads(
                json.dumps(gen.metadata(c, i)))
    index = json.loads((newton_dir / "index.json").read_text())
    assert index["num_samples"] == 6 and index["class_counts"] == [2, 2, 2]
    settings = json.loads((newton_dir / "synth.json").read_text())
    assert settings["kind"] == "newton" and settings["num_shards"] == 1


def test_preview_grid(newton_dir):
    preview = decode_png((newton_dir / "preview.png").read_bytes())
    gen = make_generator("newton", 3, 16, seed=3)
    assert preview.shape == (2 * 16 + 2, 2 * 16 + 2, 3)  # 3 classes -> 2x2 grid, 2 px gaps
    np.testing.assert_array_equal(preview[:16, 18:34], gen.render(1, 0))


def test_categories_round_trip_through_cli(tmp_path):
    first = tmp_path / "a"
    assert run_plain(args(first, classes=3, per_class=2, shard=6)).returncode == 0
    again = tmp_path / "b"
    proc = run_plain(args(again, classes=3, per_class=2, shard=6) + ["--categories",
                                                                     first / "categories"])
    assert proc.returncode == 0, proc.stderr
    assert len(import_categories(first / "categories")) == 3
    assert ((first / "fractaldb-000000.tar").read_bytes()
            == (again / "fractaldb-000000.tar").read_bytes())


@pytest.mark.parametrize("change, message", [
    (dict(classes=0), "classes must be >= 1, got 0"),
    (dict(size=4), "size must be >= 8, got 4"),
    (dict(kind="mandelbrot"), "invalid choice: 'mandelbrot'"),
    (dict(per_class=1001), "--per-class 1001 exceeds the 1000 distinct instances"),
    (dict(shard=0), "shard_size must be >= 1, got 0"),
    (dict(extra=FAST + ["--param", "threshold=0.9"]), "below threshold 0.9"),
    (dict(extra=["--param", "points=5"]), "unknown FractalDBParams field(s) ['points']"),
])
def test_bad_input_rejected_before_work(tmp_path, capsys, change, message):
    out = tmp_path / "out"
    kw = dict(kind="fractaldb", classes=2, per_class=2, size=16, shard=4)
    kw.update(change)
    code, err = run_in_process(args(out, **kw), capsys)
    assert code == 2
    assert message in err
    assert not list(out.glob("*.tar")) and not (out / "categories").exists()


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, err = run_in_process(args(blocker / "out", kind="newton", classes=2, per_class=1,
                                    size=8, extra=[]), capsys)
    assert code == 2
    assert "is not writable" in err and "a_file/out" in err


def test_search_failure_names_count_found(tmp_path):
    out = tmp_path / "out"
    # 2000 points on 64x64 cells light about 1 - e^(-2000/4096) = 39% even when uniform
    proc = run_plain(args(out, classes=3, per_class=1, size=16)
                     + ["--param", "threshold=0.45", "--param", "max_tries=2"])
    assert proc.returncode == 1
    assert "found 0 of 3 categories within max_tries=2" in proc.stderr
    assert not list(out.glob("*.tar"))
