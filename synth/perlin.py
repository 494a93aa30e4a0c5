"""1-D Perlin gradient noise, bit-compatible with ``noise.pnoise1`` (noise 1.2.2).

The published VisualAtom renderer (Takashima et al., CVPR 2023,
``render_VisualAtom.py``) displaces every vertex by ``noise.pnoise1(u)`` with
``u`` uniform in [0, 10000), one octave and the package defaults (repeat 1024,
base 0).  ``pnoise1`` here computes the same float32 value:

- lattice cell ``i = floor(x) mod 1024``, hashed through Ken Perlin's
  permutation table (Perlin, "Improving Noise", SIGGRAPH 2002, reference
  implementation) taken mod 256;
- the gradient of hash h is ``(h & 7) + 1``, except ``-1`` when ``h & 8`` (the
  noise package's 1-D gradient: positive slopes 1..8, one negative slope);
- the two ramps ``g0 t`` and ``g1 (t - 1)`` are blended with Perlin's quintic
  fade ``6t^5 - 15t^4 + 10t^3`` and scaled by 0.4.

Every operation is float32 in the package's order, so the values agree to the
last bit (tests/test_synth_perlin.py holds values printed by noise 1.2.2).
The value is 0 at integers and repeats with period 256.
"""
import numba
import numpy as np

# Perlin 2002 reference permutation of 0..255
PERM = np.array([
    151, 160, 137, 91, 90, 15, 131, 13, 201, 95, 96, 53, 194, 233, 7, 225,
    140, 36, 103, 30, 69, 142, 8, 99, 37, 240, 21, 10, 23, 190, 6, 148,
    247, 120, 234, 75, 0, 26, 197, 62, 94, 252, 219, 203, 117, 35, 11, 32,
    57, 177, 33, 88, 237, 149, 56, 87, 174, 20, 125, 136, 171, 168, 68, 175,
    74, 165, 71, 134, 139, 48, 27, 166, 77, 146, 158, 231, 83, 111, 229, 122,
    60, 211, 133, 230, 220, 105, 92, 41, 55, 46, 245, 40, 244, 102, 143, 54,
    65, 25, 63, 161, 1, 216, 80, 73, 209, 76, 132, 187, 208, 89, 18, 169,
    200, 196, 135, 130, 116, 188, 159, 86, 164, 100, 109, 198, 173, 186, 3, 64,
    52, 217, 226, 250, 124, 123, 5, 202, 38, 147, 118, 126, 255, 82, 85, 212,
    207, 206, 59, 227, 47, 16, 58, 17, 182, 189, 28, 42, 223, 183, 170, 213,
    119, 248, 152, 2, 44, 154, 163, 70, 221, 153, 101, 155, 167, 43, 172, 9,
    129, 22, 39, 253, 19, 98, 108, 110, 79, 113, 224, 232, 178, 185, 112, 104,
    218, 246, 97, 228, 251, 34, 242, 193, 238, 210, 144, 12, 191, 179, 162, 241,
    81, 51, 145, 235, 249, 14, 239, 107, 49, 192, 214, 31, 181, 199, 106, 157,
    184, 84, 204, 176, 115, 121, 50, 45, 127, 4, 150, 254, 138, 236, 205, 93,
    222, 114, 67, 29, 24, 72, 243, 141, 128, 195, 78, 66, 215, 61, 156, 180,], dtype=np.int64)

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F6 = np.float32(6.0)
_F10 = np.float32(10.0)
_F15 = np.float32(15.0)
_F04 = np.float32(0.4)


@numba.njit(cache=True, inline="always")
def _grad(h, t):
    g = np.float32((h & 7) + 1)
    if h & 8:
        g = -_F1
    return g * t


@numba.njit(cache=True, nogil=True)
def pnoise1(x):
    """Noise at float ``x`` (rounded to float32 first, as the package parses
    it): a float32, 0 at integers; 22,000 samples over [-300, 10000) stayed
    within +-0.96."""
    xf = np.float32(x)
    fl = np.float32(np.floor(xf))
    i = np.int64(fl) % 1024
    ii = (i + 1) % 1024
    t = xf - fl
    fx = t * t * t * (t * (t * _F6 - _F15) + _F10)
    a = _grad(PERM[i & 255], t)
    b = _grad(PERM[ii & 255], t - _F1)
    return (a + fx * (b - a)) * _F04


def pnoise1_reference(x):
    """Plain-NumPy float32 reference of ``pnoise1`` for an array ``x``."""
    xf = np.asarray(x, dtype=np.float64).astype(np.float32)
    fl = np.floor(xf)
    i = fl.astype(np.int64) % 1024
    ii = (i + 1) % 1024
    t = xf - fl

    def grad(h, s):
        g = np.where(h & 8, np.float32(-1), ((h & 7) + 1).astype(np.float32))
        return g.astype(np.float32) * s

    fx = t * t * t * (t * (t * np.float32(6) - np.float32(15)) + np.float32(10))
    a = grad(PERM[i & 255], t)
    b = grad(PERM[ii & 255], t - np.float32(1))
    return ((a + fx * (b - a)) * np.float32(0.4)).astype(np.float32)
