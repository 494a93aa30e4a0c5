"""Render size apart from training size: published defaults, antialiased
downsampling, direct rendering, and purity of the downsampled images."""
import numpy as np
import pytest

from minivit.synth import make_generator
from minivit.synth.resample import downsample

FAST = {"fractaldb": dict(num_points=20_000, search_points=2000, search_size=64),
        "visualatom": dict(vertices=(200, 300), orbits=(5, 20)),
        "newton": dict(max_iter=8)}


@pytest.mark.parametrize("kind, published", [("fractaldb", 362), ("visualatom", 512),
                                             ("newton", 256)])
def test_default_render_size_is_the_published_one(kind, published):
    gen = make_generator(kind, 2, 32, **FAST[kind])
    assert gen.render_size == published and gen.resample == "box"
    assert make_generator(kind, 2, 600, **FAST[kind]).render_size == 600   # never upsample
    meta = gen.metadata(1, 2)
    assert meta["size"] == 32 and meta["render_size"] == published


@pytest.mark.parametrize("kind", sorted(FAST))
def test_render_is_the_drawing_shrunk(kind):
    gen = make_generator(kind, 2, 32, render_size=96, **FAST[kind])
    full = gen.draw(1, 2)
    assert full.shape[:2] == (96, 96)
    img = gen.render(1, 2)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    small = downsample(full, 32)
    np.testing.assert_array_equal(img if small.ndim == 3 else img[..., 0], small)


@pytest.mark.parametrize("kind", sorted(FAST))
def test_direct_rendering_draws_at_the_output_size(kind):
    gen = make_generator(kind, 2, 32, render_size=32, **FAST[kind])
    img = gen.render_native(1, 2)
    np.testing.assert_array_equal(img, gen.draw(1, 2))


@pytest.mark.parametrize("kind", sorted(FAST))
def test_downsampled_images_are_pure(kind):
    # a second generator, built after others rendered other ids, gives the same bytes
    a = make_generator(kind, 3, 24, seed=5, render_size=64, **FAST[kind])
    [a.render(c, i) for c in range(3) for i in range(2)]
    b = make_generator(kind, 3, 24, seed=5, render_size=64, **FAST[kind])
    assert a.render(2, 1).tobytes() == b.render(2, 1).tobytes()


def test_box_downsampling_is_an_area_average():
    img = np.zeros((8, 8), np.uint8)
    img[0, 0] = 255                                     # one lit pixel of a 4x4 block
    out = downsample(img, 2)
    assert out.tolist() == [[16, 0], [0, 0]]            # 255 / 16 rounded
    rgb = np.zeros((9, 9, 3), np.uint8)
    rgb[:, :, 1] = 90
    lanczos = downsample(rgb, 4, "lanczos")
    assert lanczos.shape == (4, 4, 3) and np.all(lanczos[..., 1] == 90)


@pytest.mark.parametrize("kwargs, match", [
    (dict(render_size=16), "render_size must be >= 32, got 16"),
    (dict(resample="bilinear"), r"resample must be one of \['box', 'lanczos'\], got 'bilinear'"),
])
def test_bad_render_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_generator("newton", 2, 32, **kwargs)


def test_downsample_bad_input():
    with pytest.raises(ValueError, match=r"downsample size must be in \[1, 8\], got 9"):
        downsample(np.zeros((8, 8), np.uint8), 9)
    with pytest.raises(ValueError, match="expected a square uint8"):
        downsample(np.zeros((8, 6), np.uint8), 4)


def test_on_the_fly_source_draws_at_the_published_size_unless_told():
    from minivit.io import SyntheticSource
    src = SyntheticSource("newton", 2, 16, instances=1, max_iter=4)
    assert src.generator.render_size == 256
    direct = SyntheticSource("newton", 2, 16, instances=1, max_iter=4, render_size=16)
    ref = make_generator("newton", 2, 16, max_iter=4, render_size=16)
    np.testing.assert_array_equal(direct[1][0], ref.render(1, 0))
