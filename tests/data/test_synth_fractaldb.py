"""FractalDB: chaos game vs a pure-Python reference, filling-rate acceptance,
instances (determinism, perturbations, exact flips), CSV round trip, search errors."""
import numpy as np
import pytest

from minivit.synth import CategorySearchError, FractalDBGenerator, FractalDBParams, make_generator
from minivit.synth.fractaldb import search_category
from minivit.synth.fractaldb_csv import export_categories, import_categories, read_category
from minivit.synth.ifs import (IFSystem, chaos_game, cumulative, filling_rate, point_coverage,
                               stamp_points)

# small, fast settings for every test
FAST = dict(num_points=3000, search_points=3000, search_size=64, num_patches=2)
M64 = (1 << 64) - 1


def splitmix_reference(state):
    """Pure-Python SplitMix64 (Steele et al. 2014) -> (state, uint64)."""
    state = (state + 0x9E3779B97F4A7C15) & M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return state, z ^ (z >> 31)


def chaos_reference(maps, probs, n, seed, discard):
    cum = np.cumsum(probs)
    state, x, y, out = seed, 0.0, 0.0, []
    for it in range(n + discard):
        state, z = splitmix_reference(state)
        u = (z >> 11) * 2.0 ** -53
        k = int(np.searchsorted(cum[:-1], u, side="right"))
        a, b, c, d, e, f = maps[k]
        x, y = a * x + b * y + e, c * x + d * y + f
        if it >= discard:
            out.append((x, y, k))
    return np.array(out)


SIERPINSKI = IFSystem(np.array([[0.5, 0, 0, 0.5, 0, 0], [0.5, 0, 0, 0.5, 0.5, 0],
                                [0.5, 0, 0, 0.5, 0.25, 0.5]]), np.full(3, 1 / 3))
SQUARE = IFSystem(np.array([[0.5, 0, 0, 0.5, ex, fy] for ex in (0, 0.5) for fy in (0, 0.5)]),
                  np.full(4, 0.25))


def test_chaos_game_matches_pure_python_reference():
    xs, ys, ks, bounds, count = chaos_game(SIERPINSKI.maps, cumulative(SIERPINSKI.probs), 500,
                                           np.uint64(12345), 7)
    ref = chaos_reference(SIERPINSKI.maps, SIERPINSKI.probs, 500, 12345, 7)
    assert count == 500
    np.testing.assert_array_equal(xs, ref[:, 0])
    np.testing.assert_array_equal(ys, ref[:, 1])
    np.testing.assert_array_equal(ks, ref[:, 2])
    np.testing.assert_array_equal(bounds, [xs.min(), xs.max(), ys.min(), ys.max()])
    assert set(np.unique(ks)) == {0, 1, 2}


def test_chaos_game_flags_divergent_and_nan_orbits():
    expanding = np.array([[2.0, 0, 0, 2.0, 1, 1]])
    xs, _, _, bounds, count = chaos_game(expanding, np.ones(1), 1000, np.uint64(1), 0)
    assert 0 < count < 1000  # 2^27 > 1e8: stops after ~27 points
    assert np.isfinite(bounds).all() and bounds[1] == xs[:count].max()
    nan_map = np.array([[np.nan, 0, 0, 0.5, 0, 0]])
    assert chaos_game(nan_map, np.ones(1), 10, np.uint64(1), 0)[4] == 0


def coverage_reference(xs, ys, size):
    cols = np.floor((xs - xs.min()) * (size - 1) / np.ptp(xs) + 0.5).astype(int)
    rows = np.floor((ys - ys.min()) * (size - 1) / np.ptp(ys) + 0.5).astype(int)
    return len(set(zip(rows.tolist(), cols.tolist()))) / size ** 2


CANTOR_DUST = IFSystem(np.array([[1 / 3, 0, 0, 1 / 3, ex, fy] for ex in (0, 2 / 3)
                                 for fy in (0, 2 / 3)]), np.full(4, 0.25))


def test_filling_rate_accepts_square_and_rejects_cantor_dust_and_line():
    # the square attractor fills its box; Cantor dust (dimension 1.26) keeps
    # 64 cells of 2.4 px at level 3 on a 64-px grid (~11 px each with
    # rounding: ~17%); a line covers ~1/64
    fill_square = filling_rate(SQUARE, 20000, 64, 3)
    fill_dust = filling_rate(CANTOR_DUST, 20000, 64, 3)
    line = IFSystem(np.array([[0.5, 0, 0.5, 0, 0, 0], [0.5, 0, 0.5, 0, 0.5, 0.5]]), np.full(2, 0.5))
    fill_line = filling_rate(line, 20000, 64, 3)
    assert fill_square > 0.95
    assert 0.1 < fill_dust < 0.2
    assert fill_line < 0.02
    threshold = FractalDBParams().threshold
    assert fill_square >= threshold > max(fill_dust, fill_line)


def test_point_coverage_matches_reference():
    xs, ys, ks, bounds, _ = chaos_game(SIERPINSKI.maps, cumulative(SIERPINSKI.probs), 5000,
                                       np.uint64(9), 20)
    assert point_coverage(xs, ys, bounds, 50) == pytest.approx(coverage_reference(xs, ys, 50))
    flat = np.zeros(4)
    assert point_coverage(flat, np.arange(4.0), np.array([0, 0, 0, 3.0]), 8) == 0.0


def test_degenerate_system_has_no_probabilities():
    assert IFSystem.det_probs(np.array([[1.0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]])) is None


def stamp_reference(size, xs, ys, ks, patch, colours):
    cols = 1 + np.floor((xs - xs.min()) * (size - 3) / np.ptp(xs) + 0.5).astype(int)
    rows = size - 2 - np.floor((ys - ys.min()) * (size - 3) / np.ptp(ys) + 0.5).astype(int)
    mark = np.zeros((size, size), int)
    for r, c, k in zip(rows, cols, ks):
        mark[r, c] = k + 1
    img = np.zeros((size, size, colours.shape[1]), np.uint8)
    for r, c in zip(*np.nonzero(mark)):  # raster order
        for dy in range(3):
            for dx in range(3):
                if patch[dy, dx]:
                    img[r + dy - 1, c + dx - 1] = (colours[mark[r, c] - 1].astype(int)
                                                   * int(patch[dy, dx])) // 255
    return img


@pytest.mark.parametrize("nch", [1, 3])
def test_stamp_points_matches_reference(nch):
    rng = np.random.default_rng(0)
    xs, ys = rng.normal(size=300), rng.normal(size=300)
    ks = rng.integers(0, 3, 300).astype(np.uint8)
    bounds = np.array([xs.min(), xs.max(), ys.min(), ys.max()])
    patch = np.array([[0, 200, 0], [90, 255, 0], [0, 0, 130]], np.uint8)
    colours = rng.integers(0, 256, (3, nch)).astype(np.uint8)
    got = stamp_points(24, xs, ys, ks, bounds, patch, colours)
    np.testing.assert_array_equal(got, stamp_reference(24, xs, ys, ks, patch, colours))


@pytest.fixture(scope="module")
def gen():
    return FractalDBGenerator(4, 32, seed=5, **FAST)


def test_render_is_deterministic_and_pure(gen):
    again = FractalDBGenerator(4, 32, seed=5, **FAST)
    img = gen.render(2, 7)
    assert img.dtype == np.uint8 and img.shape == (32, 32, 3)
    assert img.tobytes() == gen.render(2, 7).tobytes() == again.render(2, 7).tobytes()
    assert img.max() > 0


def test_instances_differ(gen):
    images = [gen.render(1, i).tobytes() for i in range(gen.instances_per_class)]
    assert gen.instances_per_class == 25 * 4 * 2
    assert len(set(images)) == len(images)


def test_flips_are_exact_flips(gen):
    for weight, patch in ((0, 0), (13, 1)):
        base = gen.render(3, weight + 25 * (0 + 4 * patch))
        ud, lr, both = (gen.render(3, weight + 25 * (f + 4 * patch)) for f in (1, 2, 3))
        np.testing.assert_array_equal(ud, base[::-1])
        np.testing.assert_array_equal(lr, base[:, ::-1])
        np.testing.assert_array_equal(both, base[::-1, ::-1])
        assert not np.array_equal(ud, base)


def test_perturbation_scales_one_parameter_of_every_map(gen):
    system = gen.category(0)
    k = 0.4  # default weight_step: factors {1-2k, 1-k, 1+k, 1+2k}
    factors = [1 - 2 * k, 1 - k, 1 + k, 1 + 2 * k]
    for weight in range(1, 25):
        param, factor = divmod(weight - 1, 4)
        maps = gen.perturbed(system, weight)
        expected = system.maps.copy()
        expected[:, param] *= factors[factor]
        np.testing.assert_array_equal(maps, expected)
        meta = gen.metadata(0, weight)
        assert meta["perturbed_param"] == "abcdef"[param]
        assert meta["factor"] == pytest.approx([0.2, 0.6, 1.4, 1.8][factor])
    np.testing.assert_array_equal(gen.perturbed(system, 0), system.maps)


def test_search_is_per_class_and_meets_threshold():
    params = FractalDBParams(**FAST)
    found, _ = search_category(5, 3, params)
    # class 3 alone, without classes 0..2, gives the same system as the generator
    gen = FractalDBGenerator(4, 32, seed=5, **FAST)
    np.testing.assert_array_equal(gen.category(3).maps, found.maps)
    state_seed = 1
    assert 2 <= found.num_maps <= 8 and np.all(np.abs(found.maps) <= 1)
    np.testing.assert_allclose(found.probs, IFSystem.det_probs(found.maps))
    assert filling_rate(found, 20000, 64, state_seed) > 0.1  # re-measured, other stream
    other, _ = search_category(6, 3, params)
    assert not np.array_equal(other.maps, found.maps)


def test_search_exhausting_max_tries_names_count_found():
    # 3000 points on 64x64 cells: even a perfectly uniform attractor lights
    # about 1 - e^(-3000/4096) = 52% of them, so 0.6 is not reached in practice
    gen = FractalDBGenerator(2, 16, threshold=0.6, max_tries=3, **FAST)
    with pytest.raises(CategorySearchError, match=r"found 0 of 1 .*max_tries=3"):
        gen.render(0, 0)
    assert gen.search([0, 1]) == {}


def test_csv_round_trip_and_render_from_csv(tmp_path, gen):
    cats = {c: gen.category(c) for c in range(4)}
    paths = export_categories(tmp_path / "categories", cats)
    assert [p.name for p in paths] == ["00000.csv", "00001.csv", "00002.csv", "00003.csv"]
    rows = paths[1].read_text().strip().splitlines()
    assert len(rows) == cats[1].num_maps and all(len(r.split(",")) == 7 for r in rows)
    loaded = import_categories(tmp_path / "categories")
    for c in range(4):
        np.testing.assert_array_equal(loaded[c].maps, cats[c].maps)
        np.testing.assert_array_equal(loaded[c].probs, cats[c].probs)
    from_csv = FractalDBGenerator(4, 32, seed=5, categories_dir=tmp_path / "categories", **FAST)
    assert from_csv.render(2, 9).tobytes() == gen.render(2, 9).tobytes()


def test_published_layout_is_read(tmp_path):
    # FractalDB-1k style file: rounded probabilities, trailing blank line
    (tmp_path / "00000.csv").write_text("0.5,0,0,0.5,0,0,0.33\n0.5,0,0,0.5,0.5,0,0.33\n"
                                        "0.5,0,0,0.5,0.25,0.5,0.34\n\n")
    system = read_category(tmp_path / "00000.csv")
    np.testing.assert_allclose(system.probs, [0.33, 0.33, 0.34])
    (tmp_path / "bad.csv").write_text("1,2,3\n")
    with pytest.raises(ValueError, match="bad.csv:1: expected 7 values"):
        read_category(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="missing class 1"):
        FractalDBGenerator(2, 16, categories=[system])


def test_colour_mode_uses_one_colour_per_map():
    gen = make_generator("fractaldb", 2, 32, seed=1, mode="color", **FAST)
    img = gen.render(0, 0)
    colours = {tuple(p) for p in img.reshape(-1, 3) if p.any()}
    assert len(colours) > 1 and any(len(set(c)) > 1 for c in colours)


@pytest.mark.parametrize("kwargs, match", [
    (dict(instance=1000), "instance_id must be < instances_per_class=1000"),
    (dict(cls=2), "class_id must be < num_classes=2"),
])
def test_ids_out_of_range(kwargs, match):
    gen = FractalDBGenerator(2, 16)
    with pytest.raises(ValueError, match=match):
        gen.render(kwargs.get("cls", 0), kwargs.get("instance", 0))


def test_bad_params():
    with pytest.raises(ValueError, match=r"search_points=1000 can light at most 0.015 of the "
                                         r"256x256 search grid, below threshold 0.2"):
        FractalDBGenerator(2, 16, search_points=1000)
    with pytest.raises(ValueError, match=r"mode must be one of \('patch_gray', 'gray_levels', "
                                         r"'color'\), got 'rgb'"):
        FractalDBGenerator(2, 16, mode="rgb")
    with pytest.raises(ValueError, match=r"unknown FractalDBParams field\(s\) \['points'\]"):
        FractalDBGenerator(2, 16, points=5)


def test_divergent_instances_fall_back_deterministically():
    # one map with a = 0.7: weight 4 scales a by 1 + 2k = 1.8 -> 1.26, expanding
    contractive = IFSystem(np.array([[0.7, 0.1, 0, 0.5, 0.2, 0.1]]), np.ones(1))
    gen = FractalDBGenerator(1, 16, categories=[contractive], num_points=500)
    assert gen.metadata(0, 0)["orbit"] == "ok"
    assert gen.metadata(0, 4)["orbit"] == "fallback"
    # an imported category that diverges even unperturbed is drawn from the
    # points before divergence, the same way every time
    expanding = IFSystem(np.array([[1.5, 0, 0, 1.2, 0.3, 0.1]]), np.ones(1))
    bad = FractalDBGenerator(1, 16, categories=[expanding], num_points=500)
    first = bad.render(0, 0)
    assert bad.metadata(0, 0)["orbit"] == "truncated"
    assert first.any() and first.tobytes() == FractalDBGenerator(
        1, 16, categories=[expanding], num_points=500).render(0, 0).tobytes()
