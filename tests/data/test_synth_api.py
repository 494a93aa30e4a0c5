"""The minivit.synth interface others build against: registry, errors, purity across processes."""
import hashlib
import json
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from minivit.synth import GENERATORS, decode_png, encode_png, make_generator

FAST = {"fractaldb": dict(num_points=2000, search_points=2000, search_size=64),
        "visualatom": dict(vertices=(20, 40), orbits=(1, 4)),
        "newton": {},
        "onepfrac": dict(num_points=2000, search_points=2000, search_size=64, render_size=48)}


def test_registry_kinds():
    assert set(GENERATORS) == {"fractaldb", "visualatom", "newton", "onepfrac"}
    for kind, cls in GENERATORS.items():
        gen = make_generator(kind, 3, 16, seed=1, **FAST[kind])
        assert isinstance(gen, cls) and gen.num_classes == 3 and gen.size == 16
    assert make_generator("fractaldb", 1, 16).instances_per_class == 1000
    assert make_generator("newton", 1, 16).instances_per_class is None


@pytest.mark.parametrize("args, match", [
    (("mandelbrot", 3, 16), "unknown generator kind 'mandelbrot'"),
    (("newton", 0, 16), "num_classes must be >= 1, got 0"),
    (("newton", -2, 16), "num_classes must be >= 1, got -2"),
    (("visualatom", 3, 7), "size must be >= 8, got 7"),
    (("fractaldb", 3, 16.0), "size must be an integer, got 16.0"),
    (("newton", 3, 16, -1), "seed must be >= 0, got -1"),
])
def test_bad_arguments_raise_before_work(args, match):
    with pytest.raises(ValueError, match=match):
        make_generator(*args)


def test_unknown_parameter_names_the_field():
    with pytest.raises(ValueError, match=r"unknown VisualAtomParams field\(s\) \['colour'\]"):
        make_generator("visualatom", 2, 16, colour=True)


def test_same_bytes_in_a_fresh_process():
    # one child process for all kinds: interpreter + Numba start-up dominates
    kinds = sorted(GENERATORS)
    local = [hashlib.sha256(make_generator(k, 5, 24, seed=11, **FAST[k]).render(4, 3).tobytes())
             .hexdigest() for k in kinds]
    code = ("import hashlib; from minivit.synth import make_generator\n"
            f"for k, p in {[(k, FAST[k]) for k in kinds]!r}:\n"
            "    g = make_generator(k, 5, 24, seed=11, **p)\n"
            "    print(hashlib.sha256(g.render(4, 3).tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    assert out == local and len(set(local)) == len(kinds)


@pytest.mark.parametrize("shape", [(9, 13), (9, 13, 3)])
def test_png_round_trip_is_lossless(shape):
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(img)
    expect = np.repeat(img[..., None], 3, 2) if img.ndim == 2 else img
    np.testing.assert_array_equal(decode_png(data), expect)
    with Image.open(io.BytesIO(data)) as im:
        im.verify()  # checks CRCs and chunk structure


def test_png_grey_rgb_is_stored_as_greyscale():
    grey = np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, 2)
    with Image.open(io.BytesIO(encode_png(rgb))) as im:
        assert im.mode == "L"
    np.testing.assert_array_equal(decode_png(encode_png(rgb)), rgb)
    rgb[0, 0, 1] ^= 1
    with Image.open(io.BytesIO(encode_png(rgb))) as im:
        assert im.mode == "RGB"


def test_png_bad_input():
    with pytest.raises(ValueError, match="img must be uint8, got float64"):
        encode_png(np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"shape \(H, W\) or \(H, W, 3\), got \(4, 4, 4\)"):
        encode_png(np.zeros((4, 4, 4), np.uint8))


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_render_png_decodes_to_render(kind):
    gen = make_generator(kind, 3, 20, seed=2, **FAST[kind])
    rgb = gen.render(2, 1)
    np.testing.assert_array_equal(decode_png(gen.render_png(2, 1)), rgb)
    native = gen.render_native(2, 1)
    expect = rgb[..., 0] if native.ndim == 2 else rgb
    np.testing.assert_array_equal(native, expect)


def test_bench_json_smoke(capsys):
    # runs the benchmark code path only; speed itself is not asserted here
    from minivit.synth import bench
    assert bench.main(["--json", "--images", "2", "--classes", "2", "--kinds", "newton"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"newton"} and result["newton"] > 0


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_threads_sharing_a_generator_get_the_same_bytes(kind):
    from concurrent.futures import ThreadPoolExecutor
    ids = [(c, i) for c in range(3) for i in range(3)]
    shared = make_generator(kind, 3, 20, seed=4, **FAST[kind])
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda ci: shared.render(*ci).tobytes(), ids))
    fresh = make_generator(kind, 3, 20, seed=4, **FAST[kind])
    assert threaded == [fresh.render(*ci).tobytes() for ci in ids]
