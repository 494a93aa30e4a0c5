"""AdamW, SGD, clipping and the warmup-cosine schedule."""
import math

import numpy as np
import pytest
from numba import njit

from minivit.config import get_config
from minivit.model import ViT
from minivit.optim import (SGD, AdamW, WarmupCosine, adamw_update, adamw_update_reference,
                           clip_coefficient, clip_grad_norm_, grad_sumsq, sgd_update,
                           sgd_update_reference)


def test_adamw_hand_worked_three_parameters():
    p = np.array([1.0, -2.0, 0.5])
    g = np.array([0.1, -0.2, 0.3])
    mask = np.array([True, False, True])       # the middle one is a "bias": no decay
    opt = AdamW(p, g, mask, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    opt.step()
    # step 1: m_hat = g, v_hat = g^2, so the Adam step is lr * g / (|g| + eps);
    # decoupled decay first multiplies decayed entries by (1 - lr * wd) = 0.999.
    expected = np.array([1.0 * 0.999 - 0.1 * 0.1 / (0.1 + 1e-8),
                         -2.0 + 0.1 * 0.2 / (0.2 + 1e-8),
                         0.5 * 0.999 - 0.1 * 0.3 / (0.3 + 1e-8)])
    np.testing.assert_allclose(p, expected, rtol=1e-15)
    np.testing.assert_allclose(opt.state["exp_avg"], [0.01, -0.02, 0.03], rtol=1e-15)
    np.testing.assert_allclose(opt.state["exp_avg_sq"], [1e-5, 4e-5, 9e-5], rtol=1e-12)
    # step 2 with a new gradient and half the learning rate
    g[...] = [0.2, 0.2, -0.1]
    before = p.copy()
    opt.step(lr=0.05)
    m = np.array([0.9 * 0.01 + 0.1 * 0.2, 0.9 * -0.02 + 0.1 * 0.2, 0.9 * 0.03 + 0.1 * -0.1])
    v = np.array([0.999 * 1e-5 + 0.001 * 0.04, 0.999 * 4e-5 + 0.001 * 0.04,
                  0.999 * 9e-5 + 0.001 * 0.01])
    m_hat, v_hat = m / (1 - 0.9 ** 2), v / (1 - 0.999 ** 2)
    decay = np.array([1 - 0.05 * 0.01, 1.0, 1 - 0.05 * 0.01])
    np.testing.assert_allclose(p, before * decay - 0.05 * m_hat / (np.sqrt(v_hat) + 1e-8),
                               rtol=1e-12)
    assert opt.step_count == 2


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-12)])
def test_adamw_kernel_matches_reference(dtype, tol):
    rng = np.random.default_rng(0)
    n = 1000
    start = rng.standard_normal(n).astype(dtype)
    a = [start.copy(), start.copy()]
    mask = rng.random(n) < 0.5
    m = [np.zeros(n, dtype) for _ in range(2)]
    v = [np.zeros(n, dtype) for _ in range(2)]
    for step in range(1, 6):
        g = rng.standard_normal(n).astype(dtype)
        adamw_update(a[0], g, m[0], v[0], mask, 1e-2, 0.9, 0.95, 1e-8, 0.1, step)
        adamw_update_reference(a[1], g, m[1], v[1], mask, 1e-2, 0.9, 0.95, 1e-8, 0.1, step)
    np.testing.assert_allclose(a[0], a[1], rtol=tol, atol=tol)
    np.testing.assert_allclose(m[0], m[1], rtol=tol, atol=tol)
    np.testing.assert_allclose(v[0], v[1], rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-12)])
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_kernel_matches_reference(dtype, tol, nesterov):
    rng = np.random.default_rng(1)
    n = 500
    start = rng.standard_normal(n).astype(dtype)
    p, buf = [start.copy(), start.copy()], [np.zeros(n, dtype), np.zeros(n, dtype)]
    mask = rng.random(n) < 0.5
    for _ in range(4):
        g = rng.standard_normal(n).astype(dtype)
        sgd_update(p[0], g, buf[0], mask, 0.05, 0.9, 0.01, nesterov)
        sgd_update_reference(p[1], g, buf[1], mask, 0.05, 0.9, 0.01, nesterov)
    assert not np.array_equal(p[0], start)
    np.testing.assert_allclose(p[0], p[1], rtol=tol, atol=tol)
    np.testing.assert_allclose(buf[0], buf[1], rtol=tol, atol=tol)


def test_adamw_rejects_bad_arrays():
    p = np.zeros(3)
    with pytest.raises(ValueError, match="grad shape"):
        adamw_update(p, np.zeros(4), np.zeros(3), np.zeros(3), np.zeros(3),
                     0.1, 0.9, 0.999, 1e-8, 0.0, 1)
    with pytest.raises(ValueError, match="dtype float32"):
        adamw_update(p, np.zeros(3, np.float32), np.zeros(3), np.zeros(3), np.zeros(3),
                     0.1, 0.9, 0.999, 1e-8, 0.0, 1)
    with pytest.raises(ValueError, match="step=0"):
        adamw_update(p, p.copy(), p.copy(), p.copy(), np.ones(3, bool), 0.1, 0.9, 0.999, 1e-8,
                     0.0, 0)
    # a float mask (the old 4/8-byte format) is refused, not silently cast
    with pytest.raises(ValueError, match="decay_mask dtype float64: expected bool"):
        adamw_update(p, p.copy(), p.copy(), p.copy(), np.ones(3), 0.1, 0.9, 0.999, 1e-8, 0.0, 1)
    with pytest.raises(ValueError, match="decay_mask shape"):
        AdamW(p, p.copy(), np.ones(4, bool))
    with pytest.raises(ValueError, match="betas"):
        AdamW(p, p.copy(), p.copy(), betas=(1.0, 0.9))


def test_sgd_momentum_by_hand():
    p = np.array([1.0, 2.0])
    g = np.array([0.5, -1.0])
    mask = np.array([True, False])
    buf = np.zeros(2)
    sgd_update(p, g, buf, mask, lr=0.1, momentum=0.9, weight_decay=0.1)
    d1 = np.array([0.5 + 0.1 * 1.0, -1.0])           # L2 decay only where mask == 1
    np.testing.assert_allclose(buf, d1)
    np.testing.assert_allclose(p, [1.0 - 0.1 * d1[0], 2.0 - 0.1 * d1[1]])
    p_before = p.copy()
    sgd_update(p, g, buf, mask, lr=0.1, momentum=0.9, weight_decay=0.1)
    d2 = g + 0.1 * mask * p_before
    np.testing.assert_allclose(buf, 0.9 * d1 + d2)
    np.testing.assert_allclose(p, p_before - 0.1 * (0.9 * d1 + d2))
    q, nbuf = np.array([1.0, 2.0]), np.zeros(2)
    sgd_update(q, g, nbuf, mask, 0.1, 0.9, 0.0, nesterov=True)
    np.testing.assert_allclose(q, [1.0, 2.0] - 0.1 * (g + 0.9 * g))


def test_clipping_pieces():
    g = np.array([3.0, 4.0], dtype=np.float32)
    assert grad_sumsq(g) == 25.0
    assert clip_coefficient(5.0, 10.0) == 1.0
    assert clip_coefficient(5.0, 1.0) == pytest.approx(1.0 / 5.000001)
    assert clip_grad_norm_(g, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(np.linalg.norm(g), 1.0, rtol=1e-5)
    assert g.dtype == np.float32
    h = np.array([0.3, 0.4])
    clip_grad_norm_(h, 1.0)
    np.testing.assert_array_equal(h, [0.3, 0.4])       # below the limit: untouched
    with pytest.raises(ValueError, match="max_norm=0"):
        clip_coefficient(1.0, 0)


def test_warmup_cosine():
    s = WarmupCosine(1.0, warmup_steps=4, total_steps=14, min_lr=0.1)
    assert [s(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s(4) == 1.0
    assert s(9) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 2)))
    assert s(14) == pytest.approx(0.1) and s(100) == pytest.approx(0.1)
    values = [s(i) for i in range(4, 15)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    t = WarmupCosine(0.5, 0, 10)
    t.load_state_dict(s.state_dict())
    assert t(9) == s(9)
    assert WarmupCosine(1.0, 20, 10)(4) == 0.25      # run ends inside the warmup
    with pytest.raises(ValueError, match="warmup_steps=-1"):
        WarmupCosine(1.0, -1, 10)


@pytest.mark.parametrize("cls", [AdamW, SGD])
def test_state_dict_resume_is_exact_and_named(cls):
    def run(model, opt, steps, rng_seed):
        rng = np.random.default_rng(rng_seed)
        for _ in range(steps):
            model.flat.grad[...] = rng.standard_normal(model.flat.numel).astype(np.float32)
            opt.step()

    a = ViT(get_config("vit-nano"), seed=1)
    opt_a = cls(a.flat, lr=1e-2, weight_decay=0.05)
    run(a, opt_a, 3, 0)
    state = opt_a.state_dict()
    key = cls.state_names[0]
    assert state[key]["blocks.0.attn.qkv.weight"].shape == (96, 32)
    assert state["step"] == 3
    b = ViT(get_config("vit-nano"), seed=1)
    b.flat.load_state_dict(a.flat.state_dict())
    opt_b = cls(b.flat, lr=1e-2, weight_decay=0.05)
    opt_b.load_state_dict(state)
    run(a, opt_a, 2, 7)
    run(b, opt_b, 2, 7)
    assert a.flat.data.tobytes() == b.flat.data.tobytes()
    state[key].pop("head.bias")
    with pytest.raises(ValueError, match="head.bias"):
        opt_b.load_state_dict(state)


def test_adamw_no_decay_on_masked_params_with_zero_grad():
    model = ViT(get_config("vit-nano"))
    before = model.flat.data.copy()
    AdamW(model.flat, lr=0.1, weight_decay=0.5).step()    # zero gradient: only decay acts
    mask = model.flat.decay_mask
    np.testing.assert_array_equal(model.flat.data[~mask], before[~mask])
    np.testing.assert_allclose(model.flat.data[mask], before[mask] * (1 - 0.05), rtol=1e-6)


# ------------------------------------------------ the bool mask against the float mask
# The kernels as they were while the decay mask was a float array of the model
# dtype (1.0 / 0.0 per parameter): the bool mask must give their results bitwise.
@njit(error_model="numpy")
def _adamw_float_mask(p, g, m, v, mask, lr, beta1, beta2, eps, wd, step_size, inv_sqrt_bc2):
    for i in range(p.size):
        gi = g[i]
        m[i] = beta1 * m[i] + (1.0 - beta1) * gi
        v[i] = beta2 * v[i] + (1.0 - beta2) * gi * gi
        pi = p[i] * (1.0 - lr * wd * mask[i])
        p[i] = pi - step_size * m[i] / (math.sqrt(v[i]) * inv_sqrt_bc2 + eps)


@njit(error_model="numpy")
def _sgd_float_mask(p, g, buf, mask, lr, momentum, wd, nesterov):
    for i in range(p.size):
        d = g[i] + wd * mask[i] * p[i]
        buf[i] = momentum * buf[i] + d
        p[i] -= lr * ((d + momentum * buf[i]) if nesterov else buf[i])


def _float_mask_adamw(p, g, m, v, mask, lr, b1, b2, eps, wd, step):
    bc1, bc2 = 1.0 - b1 ** step, 1.0 - b2 ** step
    _adamw_float_mask(p, g, m, v, mask, lr, b1, b2, eps, wd, lr / bc1, 1.0 / math.sqrt(bc2))


def _old_adamw_reference(p, g, m, v, mask, lr, b1, b2, eps, wd, step):
    """adamw_update_reference as it was, on a float mask."""
    p *= 1.0 - lr * wd * mask
    m[...] = b1 * m + (1.0 - b1) * g
    v[...] = b2 * v + (1.0 - b2) * g * g
    p -= lr / (1.0 - b1 ** step) * m / (np.sqrt(v) / math.sqrt(1.0 - b2 ** step) + eps)


def _nano_problem(dtype, steps):
    """vit-nano's flat parameters and real decay mask, and ``steps`` random gradients
    (some entries zero, negative zero, or large, to reach the edge cases of the product)."""
    flat = ViT(get_config("vit-nano", dtype=dtype), seed=2).flat
    rng = np.random.default_rng(3)
    grads = []
    for _ in range(steps):
        g = rng.standard_normal(flat.numel).astype(dtype)
        g[::97], g[1::97], g[2::89] = 0.0, -0.0, 1e6
        grads.append(g)
    return flat, grads


def _run_adamw(kernel, flat, grads, mask):
    p, m, v = flat.data.copy(), np.zeros_like(flat.data), np.zeros_like(flat.data)
    for step, g in enumerate(grads, start=1):
        kernel(p, g, m, v, mask, 3e-3, 0.9, 0.95, 1e-8, 0.1, step)
    return p, m, v


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adamw_bool_mask_is_bitwise_the_float_mask_update(dtype):
    flat, grads = _nano_problem(dtype, 4)
    fmask = flat.decay_mask.astype(dtype)            # the old 1.0 / 0.0 array
    assert flat.decay_mask.any() and not flat.decay_mask.all()
    for new, old in [(adamw_update, _float_mask_adamw),
                     (adamw_update_reference, _old_adamw_reference)]:
        got = _run_adamw(new, flat, grads, flat.decay_mask)
        want = _run_adamw(old, flat, grads, fmask)
        for a, b in zip(got, want):
            assert a.dtype == np.dtype(dtype) and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_bool_mask_is_bitwise_the_float_mask_update(dtype, nesterov):
    flat, grads = _nano_problem(dtype, 3)
    fmask = flat.decay_mask.astype(dtype)
    runs = []
    for mask, kernel in [(flat.decay_mask, sgd_update), (fmask, _sgd_float_mask)]:
        p, buf = flat.data.copy(), np.zeros_like(flat.data)
        p[5::101] = -0.0                             # a negative zero times a zero mask
        for g in grads:
            kernel(p, g, buf, mask, 0.05, 0.9, 0.01, nesterov)
        runs.append(p.tobytes() + buf.tobytes())
    assert runs[0] == runs[1]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_mask_that_decays_a_bias_does_not_pass_for_the_right_one(dtype):
    """The bitwise comparison above would catch a wrong mask: decay on head.bias
    (zero gradient there, so only the decay could change it) moves that bias."""
    flat, grads = _nano_problem(dtype, 2)
    lo, hi, _ = flat.offsets["head.bias"]
    wrong = flat.decay_mask.copy()
    wrong[lo:hi] = True
    for g in grads:
        g[lo:hi] = 0.0
    flat.data[lo:hi] = 0.5
    right = _run_adamw(adamw_update, flat, grads, flat.decay_mask)[0]
    bad = _run_adamw(adamw_update, flat, grads, wrong)[0]
    old = _run_adamw(_float_mask_adamw, flat, grads, flat.decay_mask.astype(dtype))[0]
    assert right.tobytes() == old.tobytes() and bad.tobytes() != old.tobytes()
    assert np.all(right[lo:hi] == 0.5) and np.all(bad[lo:hi] < 0.5)
    np.testing.assert_array_equal(bad[:lo], right[:lo])     # only the bias differs
