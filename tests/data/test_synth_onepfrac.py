"""The sigma-factor sampler and the 1p-frac generator: constraints, the two
perturbation forms, purity, render-then-downsample, and the registry paths."""
import json

import numpy as np
import pytest
from PIL import Image

from minivit.io.sources import open_data
from minivit.synth import OnePFracParams, make_generator
from minivit.synth.onepfrac import OnePFracGenerator, perturb
from minivit.synth.sigma_factor import sample_singular_values, sample_system, sigma_factor

FAST = dict(num_points=3000, search_points=3000, search_size=64, render_size=64)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_singular_values_meet_the_constraints(n):
    rng = np.random.default_rng(n)
    for sigma in np.linspace(0.05, 3 * n - 0.05, 25):
        s = sample_singular_values(n, sigma, rng)
        assert s.shape == (n, 2)
        assert np.all(s[:, 1] >= 0) and np.all(s[:, 0] >= s[:, 1]) and np.all(s[:, 0] <= 1)
        assert abs((s[:, 0] + 2 * s[:, 1]).sum() - sigma) <= 1e-12 * max(1.0, sigma)


def test_system_has_the_drawn_sigma_factor():
    rng = np.random.default_rng(0)
    for n, sigma in [(2, 4.0), (2, 3.5), (4, 6.0), (7, 10.0)]:
        maps = sample_system(n, sigma, rng, translation=0.5)
        assert maps.shape == (n, 6)
        assert abs(sigma_factor(maps) - sigma) <= 1e-10
        assert np.all(np.abs(maps[:, 4:]) <= 0.5)


def test_sampler_rejects_unreachable_sigma():
    rng = np.random.default_rng(0)
    for n, sigma in [(2, 6.0), (2, 0.0), (1, -1.0), (2, float("nan"))]:
        with pytest.raises(ValueError, match="sigma-factor"):
            sample_singular_values(n, sigma, rng)
    with pytest.raises(ValueError, match="number of maps"):
        sample_system(0, 1.0, rng)
    with pytest.raises(ValueError, match="translation"):
        sample_system(2, 4.0, rng, translation=0.0)


def test_perturbation_forms():
    base = np.random.default_rng(1).uniform(-1, 1, (2, 6))
    add = perturb(base, 0.1, "additive", np.random.default_rng(2))
    assert np.all(np.abs(add - base) <= 0.05) and np.abs(add - base).max() > 0.02
    mul = perturb(base, 0.1, "multiplicative", np.random.default_rng(2))
    ratio = mul / base
    assert np.all((ratio >= 0.9) & (ratio <= 1.1))
    np.testing.assert_array_equal(perturb(base, 0.0, "additive", np.random.default_rng(3)), base)


@pytest.mark.parametrize("form", ["additive", "multiplicative"])
def test_classes_are_perturbations_of_one_base(form):
    gen = make_generator("onepfrac", 6, 16, seed=2, delta=0.1, perturbation=form, **FAST)
    base, sigma = gen.base()
    assert base.num_maps == 2 and abs(sigma - 4.0) <= 0.1
    assert abs(sigma_factor(base.maps) - sigma) <= 1e-10
    for c in range(6):
        diff = gen.class_maps(c) - base.maps
        bound = 0.05 if form == "additive" else 0.1 * np.abs(base.maps)
        assert np.all(np.abs(diff) <= bound + 1e-15)
    assert not np.array_equal(gen.class_maps(0), gen.class_maps(1))


def test_pure_function_of_seed_class_instance():
    a = make_generator("onepfrac", 20, 24, seed=5, **FAST)
    b = make_generator("onepfrac", 20, 24, seed=5, **FAST)
    # class 13 first on b: no dependence on the order classes are drawn in
    assert b.render(13, 4).tobytes() == a.render(13, 4).tobytes()
    assert a.render(0, 0).tobytes() == b.render(0, 0).tobytes()
    img = a.render(3, 2)
    assert img.shape == (24, 24, 3) and img.dtype == np.uint8 and img.max() > 0
    assert not np.array_equal(a.render(3, 2), a.render(3, 3))     # instances differ
    assert not np.array_equal(a.render(3, 2), a.render(4, 2))     # classes differ
    c = make_generator("onepfrac", 20, 24, seed=6, **FAST)
    assert not np.array_equal(a.render(3, 2), c.render(3, 2))     # datasets differ
    meta = json.loads(json.dumps(a.metadata(3, 2)))
    assert meta["delta"] == 0.1 and meta["perturbation"] == "additive"
    assert meta["render_size"] == 64 and meta["orbit"] in ("ok", "fallback")


def test_render_then_antialiased_downsample():
    big = make_generator("onepfrac", 4, 64, seed=1, **FAST)
    small = make_generator("onepfrac", 4, 16, seed=1, **FAST)
    # the box filter (area average) of GeneratorBase: a 4x reduction is a 4x4 mean
    full = big.render_native(2, 7).astype(np.float64)
    want = np.asarray(Image.fromarray(big.render_native(2, 7)).reduce(4))
    np.testing.assert_array_equal(small.render_native(2, 7), want)
    assert abs(want.astype(float).mean() - full.mean()) < 1.0
    lanczos = make_generator("onepfrac", 4, 16, seed=1, resample="lanczos", **FAST)
    np.testing.assert_array_equal(lanczos.render_native(2, 7), np.asarray(
        Image.fromarray(big.render_native(2, 7)).resize((16, 16), Image.Resampling.LANCZOS)))
    # the default render size is the published 362 px; never below the output size
    assert make_generator("onepfrac", 2, 32, seed=1).render_size == 362
    assert make_generator("onepfrac", 2, 400, seed=1).render_size == 400


def test_delta_sets_how_far_classes_are_apart():
    def spread(delta):
        g = make_generator("onepfrac", 8, 32, seed=0, delta=delta, **FAST)
        imgs = np.stack([g.render_native(c, 0).astype(float) for c in range(8)])
        return np.abs(imgs - imgs.mean(0)).mean()
    assert spread(0.01) < spread(0.1) < spread(0.3)


def test_registry_and_on_the_fly_source():
    gen = make_generator("onepfrac", 3, 16, seed=0, **FAST)
    assert isinstance(gen, OnePFracGenerator) and gen.instances_per_class is None
    assert OnePFracGenerator().num_classes == 1000          # the paper's 1,000 classes
    splits = open_data("synthetic:onepfrac", classes=3, image_size=16, instances=10,
                       holdout=0.2)
    assert len(splits.train) == 24 and len(splits.eval) == 6
    image, label = splits.eval[5]
    assert image.shape == (16, 16, 3) and label == 2


@pytest.mark.parametrize("bad, match", [
    (dict(perturbation="scaled"), "perturbation"),
    (dict(delta=-0.1), "delta"),
    (dict(delta=1.0, perturbation="multiplicative"), "multiplicative delta"),
    (dict(sigma=5.95), "sigma"),
    (dict(render_size=8), "render_size"),
    (dict(threshold=2.0), "threshold"),
    (dict(deltas=0.1), "unknown OnePFracParams"),
])
def test_bad_parameters_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        make_generator("onepfrac", 3, 16, **bad)
    assert OnePFracParams().perturbation == "additive"


def test_make_dataset_onepfrac_same_bytes_for_one_and_two_ranks(run_mpi, tmp_path):
    from pathlib import Path
    script = Path(__file__).resolve().parents[2] / "run" / "make_dataset.py"
    params = [a for k, v in FAST.items() for a in ("--param", f"{k}={v}")]
    outs = []
    for n in (1, 2):
        out = tmp_path / f"n{n}"
        run_mpi(n, [script, "--kind", "onepfrac", "--classes", 4, "--per-class", 3, "--size", 16,
                    "--out", out, "--shard-size", 5, "--seed", 1, "--param", "delta=0.05",
                    *params], timeout=240)
        outs.append({p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()})
    assert outs[0] == outs[1]
    assert {"onepfrac-000000.tar", "onepfrac-000002.tar", "preview.png"} <= set(outs[0])
    settings = json.loads(outs[0]["synth.json"])
    assert settings["kind"] == "onepfrac" and settings["params"]["delta"] == 0.05
