"""FractalDB's published patch_gray drawing: kernel against its reference and
the properties the published renderer has (one grey, a speckled mask)."""
import numpy as np
import pytest

from minivit.synth import FractalDBGenerator
from minivit.synth.patch_gray import (draw_patch_gray, draw_patch_gray_reference, masks_of,
                                      scaled_pad)

FAST = dict(num_points=20_000, search_points=2000, search_size=64)


def test_kernel_matches_reference():
    rng = np.random.default_rng(0)
    xs, ys = rng.normal(size=500) + 0.5, rng.normal(size=500) - 2.0
    bounds = np.array([xs.min(), xs.max(), ys.min(), ys.max()])
    got = draw_patch_gray(40, xs, ys, bounds, 3, np.uint64(7), np.uint8(127))
    ref = draw_patch_gray_reference(40, xs, ys, bounds, 3, masks_of(7, 501), 127)
    np.testing.assert_array_equal(got, ref)
    assert set(np.unique(got).tolist()) == {0, 127}


def test_masks_cover_1_to_511():
    masks = masks_of(3, 20_000)
    assert masks.min() == 1 and masks.max() == 511
    # each of the 9 cells is lit about half the time (256 of 511 masks)
    bits = (masks[:, None] >> np.arange(9)) & 1
    assert np.all(np.abs(bits.mean(axis=0) - 256 / 511) < 0.02)


def test_frame_includes_the_origin_and_the_pad():
    # points far from the origin: the origin's patch sits in the bottom-left
    # corner after the up-down flip, pad + 1 pixels in from both borders
    xs, ys = np.array([10.0, 11.0]), np.array([10.0, 11.0])
    bounds = np.array([10.0, 11.0, 10.0, 11.0])
    img = draw_patch_gray(64, xs, ys, bounds, 6, np.uint64(0), np.uint8(127))
    lit_rows, lit_cols = np.nonzero(img)
    assert lit_cols.min() >= 7 and lit_rows.max() <= 64 - 1 - 7
    assert img[64 - 10:64 - 7 + 1, 7:10].any()          # the origin's patch


def test_pad_scales_with_render_size():
    assert scaled_pad(6, 362) == 6 and scaled_pad(6, 724) == 12 and scaled_pad(6, 32) == 1


def test_generator_draws_one_grey_and_patches_differ():
    gen = FractalDBGenerator(2, 64, seed=4, render_size=181, **FAST)
    a, b = gen.draw(1, 0), gen.draw(1, 25 * 4)          # patch 0 and patch 1, weight 0
    assert set(np.unique(a).tolist()) == {0, 127}
    assert a.tobytes() != b.tobytes()
    # same orbit shape: the coarse masks agree although the speckle differs
    coarse = lambda m: m[:180, :180].reshape(45, 4, 45, 4).any(axis=(1, 3))
    ca, cb = coarse(a > 0), coarse(b > 0)
    assert (ca & cb).sum() / (ca | cb).sum() > 0.8


@pytest.mark.parametrize("mode", ["gray_levels", "color"])
def test_earlier_drawings_remain_as_modes(mode):
    img = FractalDBGenerator(2, 32, seed=4, mode=mode, render_size=32, **FAST).render(1, 3)
    assert img.shape == (32, 32, 3) and img.any()
