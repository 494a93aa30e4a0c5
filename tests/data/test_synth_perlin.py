"""1-D Perlin noise: its defining properties, checked with hypothesis, and the
Numba kernel against its NumPy reference."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from minivit.synth.perlin import perlin1d, perlin1d_reference

grads_st = st.lists(st.floats(-1, 1), min_size=1, max_size=12).map(np.array)
u_st = st.floats(-50, 50)
# |d/du| <= 2 * (1 + max fade' * max|g t|) = 2 * (1 + 15/8) (fade' peaks at 15/8)
LIPSCHITZ = 2 * (1 + 15 / 8)


@settings(max_examples=60, deadline=None)
@given(grads_st, st.integers(-40, 40))
def test_zero_at_integer_lattice_points(grads, i):
    assert perlin1d(float(i), grads) == 0.0


@settings(max_examples=60, deadline=None)
@given(grads_st, u_st)
def test_bounded_by_one(grads, u):
    assert -1.0 <= perlin1d(u, grads) <= 1.0


def test_bound_is_attained_midway_between_opposite_gradients():
    assert perlin1d(0.5, np.array([1.0, -1.0])) == 1.0
    assert perlin1d(1.5, np.array([1.0, -1.0])) == -1.0


@settings(max_examples=60, deadline=None)
@given(grads_st, u_st, st.floats(1e-9, 1e-2))
def test_continuous_lipschitz(grads, u, h):
    # includes steps across lattice points, where a wrong blend would jump
    assert abs(perlin1d(u + h, grads) - perlin1d(u, grads)) <= LIPSCHITZ * h + 1e-12


def test_continuous_across_every_lattice_point():
    grads = np.random.default_rng(0).uniform(-1, 1, 7)
    for i in range(-7, 8):
        left, right = perlin1d(i - 1e-9, grads), perlin1d(i + 1e-9, grads)
        assert abs(left) < 1e-7 and abs(right) < 1e-7


@settings(max_examples=40, deadline=None)
@given(grads_st, u_st)
def test_periodic_with_gradient_count(grads, u):
    period = len(grads)
    assert abs(perlin1d(u + period, grads) - perlin1d(u, grads)) < 1e-9


def test_slope_at_lattice_point_is_twice_the_gradient():
    grads = np.array([0.7, -0.3, 0.2])
    h = 1e-6
    for i, g in enumerate(grads):
        assert abs(perlin1d(i + h, grads) / h - 2 * g) < 1e-4


def test_kernel_matches_reference():
    rng = np.random.default_rng(1)
    grads = rng.uniform(-1, 1, 8)
    u = rng.uniform(-20, 20, 500)
    got = np.array([perlin1d(x, grads) for x in u])
    np.testing.assert_allclose(got, perlin1d_reference(u, grads), rtol=0, atol=1e-14)
    assert np.ptp(got) > 0.5  # not identically zero
