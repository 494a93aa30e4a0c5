"""VisualAtom: category ranges, determinism, per-instance variation, line rasteriser."""
import json

import numpy as np
import pytest

from minivit.synth import VisualAtomGenerator, make_generator
from minivit.synth.raster import draw_line, draw_line_reference
from minivit.synth.visualatom import draw_atom

SMALL = dict(vertices=(30, 60), orbits=(1, 6))


def test_category_parameters_in_published_ranges():
    gen = VisualAtomGenerator(60, 32, seed=3)
    zero_pairs = 0
    for c in range(60):
        cat = gen.category(c)
        assert 200 <= cat["vertices"] <= 1000 and 1 <= cat["orbits"] <= 200
        assert 0 <= cat["perlin"] <= 4 and 0 <= cat["line_width"] <= 0.1
        assert 10 <= cat["start_radius"] <= 60 and isinstance(cat["start_radius"], int)
        assert all(1 <= r <= 2 for r in cat["oval"])
        assert 0 <= min(cat["n1"], cat["n2"]) and max(cat["n1"], cat["n2"]) <= 20
        # the released rule: n2 != n1 unless n1 == 0
        assert cat["n1"] != cat["n2"] or cat["n1"] == 0
        zero_pairs += cat["n1"] == cat["n2"]
    assert zero_pairs <= 3


def test_category_depends_on_seed_and_class_only():
    a = VisualAtomGenerator(10, 32, seed=3).category(7)
    b = VisualAtomGenerator(1000, 64, seed=3).category(7)
    assert a == b
    assert VisualAtomGenerator(10, 32, seed=4).category(7) != a


def test_centre_is_anywhere_in_the_published_frame():
    gen = VisualAtomGenerator(2, 32, seed=0)
    centres = np.array([gen.centre(1, i) for i in range(300)])
    assert centres.min() >= 0 and centres.max() <= 512
    assert np.all(centres * 2 == np.round(centres * 2))     # (512 + integer) / 2
    assert centres.min() < 50 and centres.max() > 462


def test_render_deterministic_grey_and_instances_differ():
    gen = make_generator("visualatom", 3, 48, seed=1, **SMALL)
    img = gen.render(1, 5)
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8
    assert img.tobytes() == make_generator("visualatom", 3, 48, seed=1, **SMALL).render(1, 5).tobytes()
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])
    others = {gen.render(1, i).tobytes() for i in range(6)}
    assert len(others) == 6
    json.dumps(gen.metadata(1, 5))


def test_orbits_step_outward_by_the_published_rule():
    # c = 0 and n1 = n2 = 0 leave only the line-width term: every orbit moves
    # each vertex w pixels outward, so orbit k lies at radius r0 + (k + 1) w
    img = np.zeros((512, 512), np.uint8)
    greys = np.array([50, 100, 150], np.uint8)
    draw_atom(img, 256.0, 256.0, 100.0, 100.0, 0.0, 10.0, 0, 0, 400, greys, np.uint64(1), 1.0)
    rows, cols = np.nonzero(img)
    radius = np.hypot(cols - 256.0, rows - 256.0)
    for k, g in enumerate(greys):
        on = img[rows, cols] == g
        assert on.sum() > 500
        assert np.abs(radius[on] - (100 + 10 * (k + 1))).max() < 1.5


def test_render_size_scales_the_drawing():
    # the same atom at 256 and 512 px: the lit region of the small one is the
    # big one's, halved
    big = make_generator("visualatom", 2, 512, seed=2, render_size=512).draw(1, 3) > 0
    small = make_generator("visualatom", 2, 256, seed=2, render_size=256).draw(1, 3) > 0
    coarse = lambda m, f: m.reshape(32, f, 32, f).any(axis=(1, 3))
    a, b = coarse(big, 16), coarse(small, 8)
    assert (a & b).sum() / (a | b).sum() > 0.8


@pytest.mark.parametrize("seg", [(1.2, 3.7, 14.9, 9.1, 0), (20.0, 2.0, 3.0, 17.5, 1),
                                 (-5.0, 4.0, 8.0, 4.0, 0), (7.0, 7.0, 7.2, 7.1, 2),
                                 (3.0, 30.0, 3.0, -4.0, 1)])
def test_draw_line_matches_reference(seg):
    x0, y0, x1, y1, half = seg
    got = np.zeros((20, 24), np.uint8)
    ref = np.zeros((20, 24), np.uint8)
    draw_line(got, x0, y0, x1, y1, half, 200)
    draw_line_reference(ref, x0, y0, x1, y1, half, 200)
    np.testing.assert_array_equal(got, ref)
    assert got.any()


def test_horizontal_line_pixels():
    img = np.zeros((5, 10), np.uint8)
    draw_line(img, 1.0, 2.0, 6.0, 2.0, 0, 9)
    assert np.nonzero(img[2])[0].tolist() == [1, 2, 3, 4, 5]  # end point excluded
    assert img.sum() == 45


def test_bad_ranges():
    with pytest.raises(ValueError, match="frequency range must hold two distinct integers"):
        VisualAtomGenerator(2, 16, frequency=(3, 3))
    with pytest.raises(ValueError, match="orbits range must have lo <= hi"):
        VisualAtomGenerator(2, 16, orbits=(5, 2))
