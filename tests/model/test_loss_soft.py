"""Soft-target cross-entropy: float64 finite differences, the NumPy reference,
a deliberately wrong gradient that the check must catch, and hard labels
unchanged bit for bit."""
import numpy as np
import pytest

from minivit import kernels, kernels_ref
from minivit.tools.gradcheck import check_function
from minivit.loss import cross_entropy_backward, cross_entropy_forward, soft_cross_entropy_forward

TOL = 1e-8


def soft_targets(b, k, seed=0):
    """Mixup-like targets: two classes per row with weights lam, 1 - lam."""
    rng = np.random.default_rng(seed)
    t = np.zeros((b, k))
    lam = rng.uniform(0, 1, b)
    a, c = rng.integers(0, k, b), rng.integers(0, k, b)
    np.add.at(t, (np.arange(b), a), lam)
    np.add.at(t, (np.arange(b), c), 1 - lam)
    return t


def logits(b, k, seed=1, scale=3.0):
    return scale * np.random.default_rng(seed).standard_normal((b, k))


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("kind", ["mixed", "dirichlet"])
def test_soft_backward_matches_finite_differences(batch, smoothing, kind):
    t = (soft_targets(batch, 6) if kind == "mixed"
         else np.random.default_rng(2).dirichlet(np.ones(6), batch))

    def forward(z):
        return cross_entropy_forward(z, t, smoothing)[0]

    def backward(z):
        return cross_entropy_backward(cross_entropy_forward(z, t, smoothing)[1])

    for seed in range(3):
        err = check_function(forward, backward, logits(batch, 6), seed=seed)
        assert err <= TOL, f"relative error {err:.2e}"


def test_wrong_soft_gradient_fails_the_check():
    t = soft_targets(4, 6)

    def forward(z):
        return soft_cross_entropy_forward(z, t, 0.1)[0]

    def wrong(z):   # forgets the smoothing in the backward: a plausible bug
        return cross_entropy_backward(soft_cross_entropy_forward(z, t, 0.0)[1])

    def scaled(z):
        return 1.001 * cross_entropy_backward(soft_cross_entropy_forward(z, t, 0.1)[1])

    assert check_function(forward, wrong, logits(4, 6)) > 1e-4
    assert check_function(forward, scaled, logits(4, 6)) > 1e-4


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_soft_kernels_match_reference(dtype, smoothing):
    z = logits(5, 7).astype(dtype)
    t = np.random.default_rng(3).dirichlet(np.ones(7), 5)
    losses, probs = kernels.xent_soft_forward(z, t, smoothing)
    ref_losses, ref_probs = kernels_ref.xent_soft_forward(z, t, smoothing)
    tol = 1e-6 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(losses, ref_losses, rtol=tol, atol=tol)
    np.testing.assert_allclose(probs, ref_probs, rtol=tol, atol=tol)
    dz = kernels.xent_soft_backward(probs, t, smoothing, 0.3)
    assert dz.dtype == np.dtype(dtype)
    np.testing.assert_allclose(dz, kernels_ref.xent_soft_backward(probs, t, smoothing, 0.3),
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_one_hot_soft_targets_equal_hard_labels(smoothing):
    z = logits(6, 5)
    y = np.array([0, 4, 2, 2, 1, 3])
    hard, hctx = cross_entropy_forward(z, y, smoothing)
    soft, sctx = cross_entropy_forward(z, np.eye(5)[y], smoothing)
    assert abs(hard - soft) <= 1e-14 * abs(hard)
    np.testing.assert_allclose(cross_entropy_backward(sctx, 0.5),
                               cross_entropy_backward(hctx, 0.5), rtol=0, atol=1e-16)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hard_labels_bitwise_unchanged(dtype):
    # today's path: the hard-label kernels called directly, as before soft targets
    z = logits(8, 10).astype(dtype)
    y = np.arange(8) % 10
    losses, probs = kernels.xent_forward(z, y.astype(np.int64), 0.1)
    loss, ctx = cross_entropy_forward(z, y, 0.1)
    assert loss == float(losses.mean())
    assert np.array_equal(ctx[0], probs)
    want = kernels.xent_backward(probs, y.astype(np.int64), 0.1, 0.25 / 8)
    got = cross_entropy_backward(ctx, 0.25)
    assert got.dtype == want.dtype and np.array_equal(got, want)


def test_smoothing_composes_with_mixed_targets_like_timm():
    # timm mixup_target: lam * smooth(onehot(a)) + (1 - lam) * smooth(onehot(b))
    z, k, s, lam = logits(3, 4), 4, 0.1, 0.7
    a, b = np.array([0, 1, 3]), np.array([2, 1, 0])
    off, on = s / k, 1 - s + s / k
    smooth = lambda y: np.where(np.eye(k)[y] > 0, on, off)   # noqa: E731
    timm_target = lam * smooth(a) + (1 - lam) * smooth(b)
    ours = cross_entropy_forward(z, lam * np.eye(k)[a] + (1 - lam) * np.eye(k)[b], s)[0]
    direct = cross_entropy_forward(z, timm_target, 0.0)[0]
    assert abs(ours - direct) <= 1e-14 * abs(direct)


@pytest.mark.parametrize("targets, smoothing, match", [
    (np.full((2, 3), 1 / 3), 0.0, "shape"),
    (np.full((3, 4), 0.3), 0.0, "sums to"),
    (np.array([[1.5, -0.5, 0, 0]] * 3), 0.0, ">= 0"),
    (np.array([[np.nan, 1, 0, 0]] * 3), 0.0, "finite"),
    (np.full((3, 4), 0.25), 1.0, "smoothing"),
])
def test_soft_targets_validated(targets, smoothing, match):
    with pytest.raises(ValueError, match=match):
        soft_cross_entropy_forward(logits(3, 4), targets, smoothing)
