"""Counter-free random numbers that are pure functions of their seed.

Generators must give the same bytes for the same ``(dataset_seed, class_id,
instance_id)`` in any process (DESIGN.md section 4), so no global RNG state is
used anywhere: seeds are derived with ``numpy.random.SeedSequence`` from the
tuple of integers that identifies the work item, and Numba kernels draw from a
SplitMix64 stream started from a uint64 seed.

SplitMix64: Steele, Lea and Flood, "Fast splittable pseudorandom number
generators", OOPSLA 2014 (constants from section 3 / the Java 8 SplittableRandom).
"""
import numba
import numpy as np

# Stable per-generator tags mixed into every seed, so FractalDB class 3 and
# Newton class 3 never share a random stream.  Never change these: they define
# the published bytes of every dataset.
KIND_TAGS = {"fractaldb": 0x46444231, "visualatom": 0x56415431, "newton": 0x4E57541,
             "onepfrac": 0x31504652}

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0  # 2**-53


def seed_sequence(*key):
    """``SeedSequence`` for a tuple of non-negative ints (stable across runs and machines).

    Raises ValueError for a negative entry (SeedSequence would reject it with a
    less helpful message).
    """
    for k in key:
        if int(k) < 0:
            raise ValueError(f"seed components must be >= 0, got {key}")
    return np.random.SeedSequence([int(k) for k in key])


def numpy_rng(*key):
    """A ``numpy.random.Generator`` (PCG64) seeded from ``key`` only."""
    return np.random.Generator(np.random.PCG64(seed_sequence(*key)))


def kernel_seed(*key):
    """A uint64 seed for the Numba SplitMix64 stream, derived from ``key``."""
    return np.uint64(seed_sequence(*key).generate_state(1, np.uint64)[0])


@numba.njit(cache=True, inline="always")
def splitmix64(state):
    """One SplitMix64 step: ``state`` uint64 -> ``(new_state, random uint64)``.

    Kernels keep the state in a local scalar (a register); an array cell would
    be reloaded after every store to an output array.
    """
    state = state + _GOLDEN
    z = (state ^ (state >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return state, z ^ (z >> _S31)


@numba.njit(cache=True, inline="always")
def unit_float(z):
    """The top 53 bits of uint64 ``z`` as a float64 in [0, 1)."""
    # via int64: a uint64 -> float conversion needs extra sign-fixing code
    return np.int64(z >> _S11) * _INV53
