"""Numba line rasteriser for polyline generators (VisualAtom)."""
import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def _plot(img, x, y, half, value):
    """Fill the (2*half+1)^2 square centred on pixel (x, y), clipped to ``img``."""
    h, w = img.shape
    r0 = max(y - half, 0)
    r1 = min(y + half + 1, h)
    c0 = max(x - half, 0)
    c1 = min(x + half + 1, w)
    for r in range(r0, r1):
        for c in range(c0, c1):
            img[r, c] = value


@numba.njit(cache=True)
def draw_line(img, x0, y0, x1, y1, half, value):
    """Draw a segment from (x0, y0) to (x1, y1) (float pixel coordinates, x =
    column, y = row) into uint8 (H, W) ``img``.

    DDA: one step per pixel along the major axis, each step fills a square of
    side ``2*half+1``.  The end point is not drawn, so consecutive segments of
    a polyline touch each pixel once.  Parts outside the image are clipped.
    """
    dx = x1 - x0
    dy = y1 - y0
    steps = int(max(abs(dx), abs(dy)) + 0.5)
    if steps == 0:
        _plot(img, int(x0 + 0.5), int(y0 + 0.5), half, value)
        return
    sx = dx / steps
    sy = dy / steps
    x = x0 + 0.5
    y = y0 + 0.5
    h, w = img.shape
    for _ in range(steps):
        xi = int(np.floor(x))
        yi = int(np.floor(y))
        if half == 0:
            if 0 <= xi < w and 0 <= yi < h:
                img[yi, xi] = value
        else:
            _plot(img, xi, yi, half, value)
        x += sx
        y += sy


def draw_line_reference(img, x0, y0, x1, y1, half, value):
    """Plain-Python/NumPy reference of ``draw_line`` (same pixels), used by its test."""
    dx, dy = x1 - x0, y1 - y0
    steps = int(max(abs(dx), abs(dy)) + 0.5)
    h, w = img.shape
    if steps == 0:
        xs, ys = np.array([int(x0 + 0.5)]), np.array([int(y0 + 0.5)])
    else:
        i = np.arange(steps)
        # accumulate like the kernel does so rounding matches bit for bit
        xs_f = np.empty(steps)
        ys_f = np.empty(steps)
        x, y = x0 + 0.5, y0 + 0.5
        for j in i:
            xs_f[j], ys_f[j] = x, y
            x += dx / steps
            y += dy / steps
        xs, ys = np.floor(xs_f).astype(int), np.floor(ys_f).astype(int)
    for xi, yi in zip(xs, ys):
        r0, r1 = max(yi - half, 0), min(yi + half + 1, h)
        c0, c1 = max(xi - half, 0), min(xi + half + 1, w)
        if r0 < r1 and c0 < c1:  # a negative slice end would wrap around
            img[r0:r1, c0:c1] = value
