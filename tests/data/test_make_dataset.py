"""run/make_dataset.py: rank-count independence (1 vs 2 ranks), shard content,
categories and preview, and bad input rejected before any work."""
import importlib.util
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from minivit.synth import decode_png, make_generator
from minivit.synth.fractaldb_csv import export_categories

ROOT = Path(__file__).resolve().parents[2]
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
    """Exit code and stderr of ``main(argv)`` in this process (one MPI rank).

    Child processes cost seconds of interpreter and Numba start-up each; only
    the multi-rank test needs them.
    """
    try:
        code = load_script().main([str(a) for a in argv[1:]])
    except SystemExit as exc:   # argparse errors
        code = exc.code
    return code, capsys.readouterr().err


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


@pytest.fixture
def newton_dir(tmp_path, capsys):
    out = tmp_path / "newton"
    code, err = run_in_process(args(out, kind="newton", classes=3, per_class=2, size=16,
                                    shard=10, extra=[]), capsys)
    assert code == 0, err
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


def test_categories_folder_is_read_by_cli(tmp_path, capsys):
    # categories exported through the API, rendered by the CLI from the CSVs
    params = dict(num_points=2000, search_points=2000, search_size=64)
    gen = make_generator("fractaldb", 3, 24, seed=3, **params)
    export_categories(tmp_path / "cats", {c: gen.category(c) for c in range(3)})
    out = tmp_path / "out"
    code, err = run_in_process(args(out, classes=3, per_class=2, shard=6)
                               + ["--categories", tmp_path / "cats"], capsys)
    assert code == 0, err
    for c in range(3):
        assert ((out / "categories" / f"{c:05d}.csv").read_bytes()
                == (tmp_path / "cats" / f"{c:05d}.csv").read_bytes())
    with tarfile.open(out / "fractaldb-000000.tar") as tar:
        img = decode_png(tar.extractfile("c00002_i000001.png").read())
    np.testing.assert_array_equal(img, gen.render(2, 1))


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


def test_search_failure_names_count_found(tmp_path, capsys):
    out = tmp_path / "out"
    # 2000 points on 64x64 cells light about 1 - e^(-2000/4096) = 39% even when uniform
    code, err = run_in_process(args(out, classes=3, per_class=1, size=16)
                               + ["--param", "threshold=0.45", "--param", "max_tries=2"], capsys)
    assert code == 1
    assert "found 0 of 3 categories within max_tries=2" in err
    assert not list(out.glob("*.tar"))


def test_shards_read_back_with_minivit_io_and_webdataset(newton_dir):
    from minivit.io import ShardDataset
    gen = make_generator("newton", 3, 16, seed=3)
    with ShardDataset(newton_dir) as ds:
        assert len(ds) == 6 and ds.problems == []
        for g in range(6):
            img, label = ds[g]
            assert label == g % 3  # classes interleaved: sample g is class g % 3
            np.testing.assert_array_equal(img, gen.render(g % 3, g // 3))
    import webdataset as wds  # in the [test] extra
    samples = list(wds.WebDataset(str(newton_dir / "newton-000000.tar"), shardshuffle=False)
                   .decode("rgb8").to_tuple("__key__", "png", "cls", "json"))
    assert [s[0] for s in samples][:2] == ["c00000_i000000", "c00001_i000000"]
    key, img, label, meta = samples[4]
    assert (label, meta["instance_id"]) == (1, 1)
    np.testing.assert_array_equal(img, gen.render(1, 1))


@pytest.mark.parametrize("flag, render_size", [([], 256), (["--direct"], 16),
                                               (["--render-size", "48"], 48)])
def test_render_size_flags(tmp_path, capsys, flag, render_size):
    out = tmp_path / "n"
    code, err = run_in_process(args(out, kind="newton", classes=2, per_class=1, size=16,
                                    shard=10, extra=["--param", "max_iter=4", *flag]), capsys)
    assert code == 0, err
    settings = json.loads((out / "synth.json").read_text())
    assert settings["render_size"] == render_size and settings["resample"] == "box"
    gen = make_generator("newton", 2, 16, seed=3, max_iter=4, render_size=render_size)
    with tarfile.open(out / "newton-000000.tar") as tar:
        img = decode_png(tar.extractfile("c00001_i000000.png").read())
        meta = json.loads(tar.extractfile("c00001_i000000.json").read())
    np.testing.assert_array_equal(img, gen.render(1, 0))
    assert meta["render_size"] == render_size


def test_direct_and_render_size_are_exclusive(tmp_path, capsys):
    code, err = run_in_process(args(tmp_path / "x", kind="newton", classes=2, per_class=1,
                                    size=16, extra=["--direct", "--render-size", "32"]), capsys)
    assert code == 2 and "not allowed with argument" in err
