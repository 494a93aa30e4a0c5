"""``run/bench.py io`` runs end to end on a tiny size and reports every field
(a smoke test of the benchmark's plumbing; no speed is asserted here)."""
import json

from minivit.io import bench


def test_bench_io_json(capsys, tmp_path):
    assert bench.main(["--n", "40", "--size", "16", "--per-shard", "10", "--batch", "8",
                       "--repeat", "1", "--dir", str(tmp_path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("minivit_images_per_s", "webdataset_images_per_s", "loose_files_images_per_s"):
        assert res[key] > 0
    assert res["shard_files"] == 4 + 1          # 4 shards + index.json, no sidecars
    assert res["loose_files"] == 40 and res["file_count_ratio"] == 8.0


def test_make_images_are_valid_distinct_pngs():
    from minivit.io.decode import decode_image
    pngs = bench.make_images(3, 16)
    arrays = [decode_image(p) for p in pngs]
    assert all(a.shape == (16, 16, 3) for a in arrays)
    assert not (arrays[0] == arrays[1]).all()
