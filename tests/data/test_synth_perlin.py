"""1-D Perlin noise: bit-compatible with ``noise.pnoise1`` (noise 1.2.2), the
Numba kernel against its NumPy reference, and its defining properties."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from minivit.synth.perlin import PERM, pnoise1, pnoise1_reference

# noise 1.2.2: [repr(noise.pnoise1(x)) for x in XS], printed once; the package
# itself is not a test dependency (it needs a C compiler to install).
XS = [0.3, 1.7, 2.5, 17.25, 123.456, 999.9, 1023.5, 1024.75, 4321.0625, 9999.99, -3.3,
      7777.7777]
PNOISE1 = [0.7577807903289795, 0.1460927575826645, 0.0, 0.19980469346046448,
           0.8341333270072937, 0.036568667739629745, -0.30000001192092896,
           0.15878906846046448, 0.12555456161499023, 0.003913498017936945,
           0.46572932600975037, 0.05832226201891899]


def test_matches_values_printed_by_the_noise_package():
    assert [float(pnoise1(x)) for x in XS] == PNOISE1
    assert pnoise1_reference(XS).astype(np.float64).tolist() == PNOISE1


def test_permutation_is_a_permutation():
    assert sorted(PERM.tolist()) == list(range(256))


@settings(max_examples=200, deadline=None)
@given(st.floats(-1000, 10000))
def test_kernel_equals_reference(x):
    assert pnoise1(x) == pnoise1_reference([x])[0]


@settings(max_examples=60, deadline=None)
@given(st.integers(-2000, 20000))
def test_zero_at_integers(i):
    assert pnoise1(float(i)) == 0.0


@settings(max_examples=60, deadline=None)
@given(st.floats(0, 4000), st.integers(1, 3))
def test_period_256(x, k):
    # the cell index is taken mod 1024 and then mod 256; float32 rounding of
    # x and x + 256k must land on the same fraction, so use binary fractions
    x = np.float32(np.round(x * 64) / 64)
    assert pnoise1(float(x)) == pnoise1(float(x) + 256 * k)
