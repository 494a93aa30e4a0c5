"""FractalDB's published ``patch_gray`` drawing, as a Numba kernel.

Kataoka et al., "Pre-training without Natural Images", ACCV 2020, sec. 3.2
(patch rendering), as released in ``fractal_renderer/ifs_function.py``
(``draw_patch``) of the FractalDB repositories.  Behaviour reproduced (the
code here is ours):

- the orbit starts at the origin and the origin is drawn too, so the min-max
  frame includes (0, 0);
- points are mapped into ``[pad, size - pad]`` per axis and truncated to
  integers;
- every point pastes a 3x3 patch whose top-left corner is one pixel right of
  and below the point.  The patch is a *fresh* random 9-bit mask per point
  (values 1..511, bit 8 = top-left, row-major) of one constant grey; unlit
  cells of the mask paste black, so a later point can erase an earlier one.
  This leaves about half of the covered pixels lit: a sparse speckle;
- the image is flipped top-bottom at the end (row 0 = largest y).
"""
import numba
import numpy as np

from .rng import splitmix64

PUBLISHED_GREY = 127     # make_patch3_3 is called with colour (127, 127, 127)
PUBLISHED_PAD = 6        # make_fractaldb.py --pad_size_x/y default, in pixels at 362 px
PUBLISHED_SIZE = 362     # exe.sh imagesize


def scaled_pad(pad, size):
    """Padding in pixels at ``size``: ``pad`` is given at the published 362 px.

    ``round(pad * size / 362)``, at least 1, so a small direct render keeps
    the same proportions as the published image.
    """
    return max(1, int(round(pad * size / PUBLISHED_SIZE)))


@numba.njit(cache=True, nogil=True)
def draw_patch_gray(size, xs, ys, bounds, pad, seed, grey):
    """Draw the origin and the points ``xs, ys`` (float64 (P,)) as patch_gray.

    bounds: float64 (4,) ``xmin, xmax, ymin, ymax`` of the points (from
    ``chaos_game``); the frame is widened to include the origin.  pad: int
    border in pixels; seed: uint64 start of the SplitMix64 stream that draws
    one mask per point; grey: uint8 value of lit cells.
    Returns uint8 (size, size).  Cells that fall off the image are dropped.
    """
    img = np.zeros((size, size), np.uint8)
    x0 = min(bounds[0], 0.0)
    y0 = min(bounds[2], 0.0)
    spanx = max(bounds[1], 0.0) - x0
    spany = max(bounds[3], 0.0) - y0
    sx = (size - 2 * pad) / spanx if spanx > 0 else 0.0
    sy = (size - 2 * pad) / spany if spany > 0 else 0.0
    state = seed
    n = xs.shape[0]
    for i in range(n + 1):
        # point 0 is the origin, where the published orbit starts
        x = 0.0 if i == 0 else xs[i - 1]
        y = 0.0 if i == 0 else ys[i - 1]
        col = int((x - x0) * sx + pad)
        row = int((y - y0) * sy + pad)
        state, z = splitmix64(state)
        # 1..511: a mask with at least one lit cell (the bias of the modulo
        # is below 2**-43)
        mask = 1 + np.int64(z >> np.uint64(11)) % 511
        for b in range(9):
            r = row + 1 + b // 3
            c = col + 1 + b % 3
            if r < size and c < size:
                img[size - 1 - r, c] = grey if (mask >> (8 - b)) & 1 else 0
    return img


def draw_patch_gray_reference(size, xs, ys, bounds, pad, masks, grey):
    """Plain-Python reference of ``draw_patch_gray`` with explicit ``masks``
    (ints in 1..511, one per point, the origin first); used by its test."""
    img = np.zeros((size, size), np.uint8)
    x0, y0 = min(bounds[0], 0.0), min(bounds[2], 0.0)
    spanx, spany = max(bounds[1], 0.0) - x0, max(bounds[3], 0.0) - y0
    sx = (size - 2 * pad) / spanx if spanx > 0 else 0.0
    sy = (size - 2 * pad) / spany if spany > 0 else 0.0
    for x, y, mask in zip([0.0, *xs], [0.0, *ys], masks):
        col, row = int((x - x0) * sx + pad), int((y - y0) * sy + pad)
        bits = format(int(mask), "09b")
        for b in range(9):
            r, c = row + 1 + b // 3, col + 1 + b % 3
            if r < size and c < size:
                img[size - 1 - r, c] = grey * int(bits[b])
    return img


def masks_of(seed, count):
    """The ``count`` masks ``draw_patch_gray`` draws from ``seed`` (for tests)."""
    return _masks(np.uint64(seed), count)


@numba.njit(cache=True)
def _masks(seed, count):
    out = np.empty(count, np.int64)
    state = seed
    for i in range(count):
        state, z = splitmix64(state)
        out[i] = 1 + np.int64(z >> np.uint64(11)) % 511
    return out
