"""Fidelity benchmark pieces that need no published code: the metrics, the
parser of the VisualAtom call log and the fetch of a local clone."""
import subprocess

import numpy as np
import pytest

from minivit.synth.fidelity import (coarse_iou, coarse_mask, compare, grey_histogram,
                                    lit_fraction, mean_lit_grey, summarise,
                                    train_size_distance)
from minivit.synth.fidelity_ref import fetch, parse_visualatom_log


def test_lit_fraction_and_greys():
    img = np.zeros((4, 4), np.uint8)
    img[0, :2] = 127
    img[3, 3] = 255
    assert lit_fraction(img) == 3 / 16
    assert mean_lit_grey(img) == (127 * 2 + 255) / 3
    hist = grey_histogram(img)
    assert hist.tolist() == [0, 0, 0, 2 / 3, 0, 0, 0, 1 / 3]
    assert grey_histogram(np.zeros((4, 4), np.uint8)).sum() == 0
    assert np.isnan(mean_lit_grey(np.zeros((2, 2), np.uint8)))


def test_coarse_iou_counts_blocks_with_any_lit_pixel():
    a = np.zeros((9, 9), np.uint8)       # 9 -> 8 cropped, 2x2 cells of 4x4
    b = np.zeros((9, 9), np.uint8)
    a[0, 0] = a[5, 5] = 1                # cells (0, 0) and (1, 1)
    b[3, 3] = b[4, 0] = 1                # cells (0, 0) and (1, 0)
    a[8, 8] = 1                          # cropped away
    assert coarse_mask(a).tolist() == [[True, False], [False, True]]
    assert coarse_iou(a, b) == 1 / 3
    assert coarse_iou(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)) == 1.0
    with pytest.raises(ValueError, match="images differ in shape"):
        coarse_iou(a, np.zeros((8, 8), np.uint8))


def test_distance_at_the_training_size():
    a = np.zeros((64, 64), np.uint8)
    b = np.full((64, 64), 40, np.uint8)
    assert train_size_distance(a, b) == 40.0
    assert train_size_distance(b, b) == 0.0


def test_summary_uses_ratio_of_means():
    a = np.zeros((32, 32), np.uint8)
    a[:8] = 127
    b = np.zeros((32, 32), np.uint8)
    b[:16] = 127
    rows = [compare(a, b, b), compare(b, b, a)]
    s = summarise(rows)
    assert s["lit_ratio"] == pytest.approx((0.25 + 0.5) / (0.5 + 0.5))
    assert (s["lit_ratio_min"], s["lit_ratio_max"]) == (0.5, 1.0)
    assert s["grey_ours"] == 127 and s["iou"] == pytest.approx((0.5 + 1) / 2)
    assert s["dist"] == pytest.approx((127 / 4 + 0) / 2)


def test_parse_visualatom_log():
    # category 0: V, O=2, c, w, r0, n1=3, n2 drawn twice (3 again, then 5),
    # ovals; per instance a centre pair then O greys; one trailing centre pair
    log = [["randint", 200, 1000, 300], ["randint", 1, 200, 2], ["uniform", 0, 4, 1.5],
           ["uniform", 0.0, 0.1, 0.05], ["randint", 10, 60, 20], ["randint", 0, 20, 3],
           ["randint", 0, 20, 3], ["randint", 0, 20, 5], ["uniform", 1, 2, 1.2],
           ["uniform", 1, 2, 1.7], ["randint", -512, 512, 10], ["randint", -512, 512, -20],
           ["randint", 0, 255, 9], ["randint", 0, 255, 99],
           ["randint", -512, 512, 0], ["randint", -512, 512, 0],
           # category 1: n1 = 0 allows n2 = 0
           ["randint", 200, 1000, 250], ["randint", 1, 200, 1], ["uniform", 0, 4, 2.0],
           ["uniform", 0.0, 0.1, 0.0], ["randint", 10, 60, 10], ["randint", 0, 20, 0],
           ["randint", 0, 20, 0], ["uniform", 1, 2, 1.0], ["uniform", 1, 2, 2.0],
           ["randint", -512, 512, -512], ["randint", -512, 512, 512],
           ["randint", 0, 255, 7], ["randint", -512, 512, 1], ["randint", -512, 512, 1]]
    out = parse_visualatom_log(log, instances=1)
    cat0, centres0 = out[0]
    assert cat0 == {"vertices": 300, "orbits": 2, "perlin": 1.5, "line_width": 0.05,
                    "start_radius": 20, "oval": [1.2, 1.7], "n1": 3, "n2": 5}
    assert centres0 == [[(512 - 20) / 2, (512 + 10) / 2]]     # [x, y]; y was drawn first
    cat1, centres1 = out[1]
    assert (cat1["n1"], cat1["n2"]) == (0, 0) and centres1 == [[512.0, 0.0]]
    with pytest.raises(ValueError, match="expected randint\\(200, 1000\\)"):
        parse_visualatom_log([["uniform", 0, 4, 1.0]], 1)


def test_fetch_from_a_local_clone(tmp_path):
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    (repo / "sub" / "a.txt").write_text("A")
    (repo / "other.txt").write_text("B")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    dest = fetch(str(repo), tmp_path / "out", ["sub"])
    assert (dest / "sub" / "a.txt").read_text() == "A" and not (dest / "other.txt").exists()
    plain = fetch(str(repo / "sub"), tmp_path / "out2", ["a.txt"])
    assert (plain / "a.txt").read_text() == "A"
