"""Batch-level mixup/cutmix: formulas, determinism per (seed, epoch, step), and the
one-process result split over ranks and micro-batches bit for bit."""
import numpy as np
import pytest

from minivit.config import ViTConfig
from minivit.io import Mixup, mix_batch
from minivit.io.mixup import draw_mix
from minivit.model import ViT
from minivit.optim import AdamW
from minivit.train import train_step

K = 5


def batch(n, size=8, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 3, size, size)).astype(dtype),
            rng.integers(0, K, n))


def mixed(x, y, positions, **kw):
    args = dict(mixup=Mixup(), num_classes=K, seed=3, epoch=1, global_batch=len(x))
    args.update(kw)
    return mix_batch(x, y, positions, **args)


def find_step(kind, mixup=Mixup(), size=8):
    return next(s for s in range(200) if draw_mix(mixup, 3, 1, s, size, size).kind == kind)


def test_mixup_formula_and_targets():
    x, y = batch(6)
    step = find_step("mixup")
    pos = np.arange(6) + 6 * step
    out, t = mixed(x, y, pos)
    lam = draw_mix(Mixup(), 3, 1, step, 8, 8).lam
    partner = np.arange(6) ^ 1
    lam32 = np.float32(lam)
    np.testing.assert_array_equal(out, x * lam32 + x[partner] * (np.float32(1) - lam32))
    want = lam * np.eye(K)[y] + (1 - lam) * np.eye(K)[y[partner]]
    np.testing.assert_allclose(t, want, rtol=0, atol=1e-15)
    np.testing.assert_allclose(t.sum(1), 1.0, atol=1e-15)
    assert out.dtype == x.dtype and not np.shares_memory(out, x)


def test_cutmix_box_pixels_and_corrected_lam():
    x, y = batch(4, size=16)
    step = find_step("cutmix", size=16)
    pos = np.arange(4) + 4 * step
    out, t = mixed(x, y, pos)
    d = draw_mix(Mixup(), 3, 1, step, 16, 16)
    top, bottom, left, right = d.box
    inside = np.zeros((16, 16), bool)
    inside[top:bottom, left:right] = True
    partner = np.arange(4) ^ 1
    np.testing.assert_array_equal(out[:, :, inside], x[partner][:, :, inside])
    np.testing.assert_array_equal(out[:, :, ~inside], x[:, :, ~inside])
    assert d.lam == pytest.approx(1 - inside.mean(), abs=1e-15)   # kept-pixel fraction
    own = t[np.arange(4), y]
    assert np.all(own >= d.lam - 1e-15)


def test_draws_follow_timm_switch_and_beta():
    draws = [draw_mix(Mixup(), 0, 0, s, 32, 32) for s in range(2000)]
    kinds = [d.kind for d in draws]
    assert 0.45 < kinds.count("cutmix") / 2000 < 0.55 and "none" not in kinds
    lams = np.array([d.lam for d in draws if d.kind == "mixup"])
    assert abs(lams.mean() - 0.5) < 0.03      # Beta(0.8, 0.8) is symmetric
    only_mix = {draw_mix(Mixup(cutmix_alpha=0), 0, 0, s, 8, 8).kind for s in range(50)}
    only_cut = {draw_mix(Mixup(mixup_alpha=0), 0, 0, s, 8, 8).kind for s in range(50)}
    assert only_mix == {"mixup"} and only_cut == {"cutmix"}
    off = [draw_mix(Mixup(prob=0.25), 0, 0, s, 8, 8).kind for s in range(400)]
    assert 0.65 < off.count("none") / 400 < 0.85


def test_no_mix_step_is_identity_with_one_hot_targets():
    x, y = batch(4)
    out, t = mixed(x, y, np.arange(4), mixup=Mixup(prob=0.0))
    np.testing.assert_array_equal(out, x)
    np.testing.assert_array_equal(t, np.eye(K)[y])


def test_deterministic_per_seed_epoch_step():
    x, y = batch(8)
    a = mixed(x, y, np.arange(8))
    b = mixed(x, y, np.arange(8))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    lams = {draw_mix(Mixup(), 3, e, s, 8, 8).lam for e in range(3) for s in range(3)}
    assert len(lams) == 9


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rank_and_micro_batch_slices_equal_one_process(dtype):
    # global batch 16 per optimizer step; three optimizer steps of one epoch
    x, y = batch(48, seed=5, dtype=dtype)
    pos = np.arange(48)
    one = [mixed(x[s:s + 16], y[s:s + 16], pos[s:s + 16], global_batch=16)
           for s in range(0, 48, 16)]
    for parts in (2, 4):           # dp = 2 ranks of 8, or dp=2 x accum=2 micro-batches of 4
        for s in range(3):
            n = 16 // parts
            pieces = [mixed(x[16 * s + n * r:16 * s + n * (r + 1)],
                            y[16 * s + n * r:16 * s + n * (r + 1)],
                            pos[16 * s + n * r:16 * s + n * (r + 1)], global_batch=16)
                      for r in range(parts)]
            np.testing.assert_array_equal(np.concatenate([p[0] for p in pieces]), one[s][0])
            np.testing.assert_array_equal(np.concatenate([p[1] for p in pieces]), one[s][1])


def test_two_ranks_train_like_one_process_float64():
    """Three AdamW steps in float64 on mixed batches: the gradient mean of two
    rank slices (what dp=2's all-reduce computes) against the whole batch."""
    cfg = ViTConfig(image_size=8, patch_size=4, dim=8, depth=1, heads=2, mlp_dim=12,
                    num_classes=K, in_chans=3, dtype="float64")
    x, y = batch(24, seed=9, dtype=np.float64)
    results = []
    for ranks in (1, 2):
        model = ViT(cfg, seed=0)
        opt = AdamW(model.flat, lr=1e-2)
        for s in range(3):
            n = 8 // ranks
            micro = [mixed(x[8 * s + n * r:8 * s + n * (r + 1)], y[8 * s + n * r:8 * s + n * (r + 1)],
                           np.arange(8 * s + n * r, 8 * s + n * (r + 1)), global_batch=8)
                     for r in range(ranks)]
            train_step(model, opt, micro, 1e-2, label_smoothing=0.1)
        results.append(model.flat.data.copy())
    scale = np.abs(results[0]).max()
    assert np.abs(results[0] - results[1]).max() <= 1e-10 * scale


@pytest.mark.parametrize("kwargs, match", [
    (dict(positions=np.arange(1, 5)), "not in this batch"),
    (dict(positions=np.array([0, 1, 1, 2])), "distinct"),
    (dict(global_batch=3), "even"),
    (dict(num_classes=2), r"\[0, 2\)"),
    (dict(positions=-np.arange(4)), ">= 0"),
])
def test_mix_batch_validates(kwargs, match):
    x, y = batch(4)
    y[:] = [0, 1, 2, 3]
    args = dict(positions=np.arange(4))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mixed(x, y, **args)


@pytest.mark.parametrize("bad", [dict(mixup_alpha=-1), dict(mixup_alpha=0, cutmix_alpha=0),
                                 dict(prob=1.5), dict(switch_prob=-0.1)])
def test_mixup_settings_validated(bad):
    with pytest.raises(ValueError, match="Mixup"):
        Mixup(**bad)


class ArrayDataset:
    """24 random 10x10 images with labels 0..K-1."""

    def __init__(self):
        rng = np.random.default_rng(4)
        self.images = rng.integers(0, 256, (24, 10, 10, 3), dtype=np.uint8)
        self.labels = np.arange(24) % K

    def __len__(self):
        return 24

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def loader_steps(batch, rank, world, steps, state=None):
    """Mixed (images, targets) of ``steps`` loader steps, as a training loop would build them."""
    from minivit.io import Loader
    out = []
    with Loader(ArrayDataset(), batch, rank=rank, world_size=world, seed=7, augment=True,
                image_size=8, prefetch=0) as ld:
        if state is not None:
            ld.load_state_dict(state)
        for _ in range(steps):
            epoch, step = ld.epoch, ld.step          # before next_batch advances them
            x, y = ld.next_batch()
            out.append(mix_batch(x, y, ld.batch_positions(step), mixup=Mixup(), num_classes=K,
                                 seed=7, epoch=epoch, global_batch=8))
    return out


def test_loader_layouts_see_the_same_mixed_batches():
    # 4 optimizer steps of 8 images (crossing an epoch boundary): one process,
    # dp=2 ranks of 4, and one process with 2 accumulated micro-batches of 4
    whole = loader_steps(8, 0, 1, 4)
    ranks = [loader_steps(4, r, 2, 4) for r in range(2)]
    accum = loader_steps(4, 0, 1, 8)
    for s in range(4):
        for k in range(2):   # images, targets
            np.testing.assert_array_equal(
                np.concatenate([ranks[0][s][k], ranks[1][s][k]]), whole[s][k])
            np.testing.assert_array_equal(
                np.concatenate([accum[2 * s][k], accum[2 * s + 1][k]]), whole[s][k])
    assert any(not np.isin(t, (0.0, 1.0)).all() for _, t in whole)   # really mixed


def test_resumed_loader_mixes_exactly_the_same():
    full = loader_steps(4, 1, 2, 5)
    resumed = loader_steps(4, 1, 2, 2, state={"epoch": 1, "step": 0, "seed": 7})
    for a, b in zip(full[3:], resumed):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_mixed_steps_for_dp_and_accumulation_layouts():
    from minivit.io import Loader
    from minivit.io.mixup import MixedSteps

    def steps(batch, rank, world, accum, n=3):
        with Loader(ArrayDataset(), batch, rank=rank, world_size=world, seed=7, augment=True,
                    image_size=8, prefetch=0) as ld:
            it = MixedSteps(ld, accum, Mixup(), K, dtype="float64")
            assert it.global_batch == 8
            out = [next(it) for _ in range(n)]
        return [(e, np.concatenate([m[0] for m in mb]), np.concatenate([m[1] for m in mb]))
                for e, mb in out]

    whole = steps(8, 0, 1, 1)
    accum = steps(4, 0, 1, 2)
    ranks = [steps(2, r, 2, 2) for r in range(2)]      # dp=2 x accum=2 x micro 2
    for s in range(3):
        assert whole[s][1].dtype == np.float64
        for k in (1, 2):
            np.testing.assert_array_equal(accum[s][k], whole[s][k])
            # rank r's micro-batches hold positions [4a + 2r, 4a + 2r + 2) for a = 0, 1
            merged = np.concatenate([ranks[0][s][k][:2], ranks[1][s][k][:2],
                                     ranks[0][s][k][2:], ranks[1][s][k][2:]])
            np.testing.assert_array_equal(merged, whole[s][k])
    with Loader(ArrayDataset(), 3, seed=7, image_size=8) as ld, \
            pytest.raises(ValueError, match="even"):
        MixedSteps(ld, 1, Mixup(), K)
