"""VisualAtom: category ranges, determinism, per-instance variation, line rasteriser."""
import json

import numpy as np
import pytest

from minivit.synth import VisualAtomGenerator, make_generator
from minivit.synth.raster import draw_line, draw_line_reference

SMALL = dict(vertices=(30, 60), orbits=(1, 6))


def test_category_parameters_in_paper_ranges():
    gen = VisualAtomGenerator(40, 32, seed=3)
    for c in range(40):
        cat = gen.category(c)
        assert 200 <= cat["vertices"] <= 1000 and 1 <= cat["orbits"] <= 200
        assert 0 <= cat["perlin"] <= 4 and 0 <= cat["line_width"] <= 0.1
        assert 0 <= cat["start_radius"] <= 50
        assert all(1 <= r <= 2 for r in cat["oval"])
        assert cat["n1"] != cat["n2"] and 0 <= min(cat["n1"], cat["n2"])
        assert max(cat["n1"], cat["n2"]) <= 20


def test_category_depends_on_seed_and_class_only():
    a = VisualAtomGenerator(10, 32, seed=3).category(7)
    b = VisualAtomGenerator(1000, 64, seed=3).category(7)
    assert a == b
    assert VisualAtomGenerator(10, 32, seed=4).category(7) != a


def test_render_deterministic_grey_and_instances_differ():
    gen = make_generator("visualatom", 3, 48, seed=1, **SMALL)
    img = gen.render(1, 5)
    assert img.shape == (48, 48, 3) and img.dtype == np.uint8
    assert img.tobytes() == make_generator("visualatom", 3, 48, seed=1, **SMALL).render(1, 5).tobytes()
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])
    assert (img > 0).mean() > 0.01
    others = {gen.render(1, i).tobytes() for i in range(6)}
    assert len(others) == 6
    json.dumps(gen.metadata(1, 5))


def test_orbit_count_changes_the_drawing():
    one = make_generator("visualatom", 1, 64, seed=0, vertices=(50, 50), orbits=(1, 1),
                         start_radius=(20, 20), perlin=(0, 0)).render(0, 0)
    many = make_generator("visualatom", 1, 64, seed=0, vertices=(50, 50), orbits=(20, 20),
                          start_radius=(20, 20), perlin=(0, 0)).render(0, 0)
    assert (many > 0).sum() > 3 * (one > 0).sum()


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
