"""Loader: equal steps per rank, coverage, world-size invariance, resume,
normalisation, error policies."""
import warnings

import numpy as np
import pytest

from minivit.io import Augment, CorruptSampleError, Loader, ShardDataset, ShardWarning, ShardWriter
from io_support import image, png, write_shards


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    write_shards(str(root / "s-%06d.tar"), 27, 10)   # shards of 10, 10 and 7
    return ShardDataset(root)


def _epoch_indices(ds, world, batch, drop_last, epoch=0):
    per_rank = []
    for r in range(world):
        with Loader(ds, batch, rank=r, world_size=world, seed=3, drop_last=drop_last) as ld:
            per_rank.append([ld.batch_indices(epoch, s) for s in range(len(ld))])
    return per_rank


def test_equal_steps_drop_last(ds):
    per_rank = _epoch_indices(ds, 2, 4, drop_last=True)
    assert [len(p) for p in per_rank] == [3, 3]          # 27 // 8
    seen = np.concatenate([np.concatenate(p) for p in per_rank])
    assert len(seen) == 24 and len(set(seen.tolist())) == 24   # each at most once


def test_equal_steps_pad_covers_every_sample(ds):
    per_rank = _epoch_indices(ds, 2, 4, drop_last=False)
    assert [len(p) for p in per_rank] == [4, 4]          # ceil(27 / 8)
    seen = np.concatenate([np.concatenate(p) for p in per_rank])
    counts = np.bincount(seen, minlength=27)
    assert counts.min() == 1 and counts.sum() == 32 and (counts == 2).sum() == 5


def test_every_sample_once_per_epoch_when_divisible(ds):
    for world, batch in ((1, 9), (3, 3), (3, 9)):
        seen = np.concatenate([np.concatenate(p) for p in _epoch_indices(ds, world, batch, True)])
        assert sorted(seen.tolist()) == list(range(27))


def test_order_independent_of_world_size_and_epoch_dependent(ds):
    one = Loader(ds, 8, seed=3).order(0)
    two = Loader(ds, 4, rank=1, world_size=2, seed=3).order(0)
    np.testing.assert_array_equal(one, two)
    assert not np.array_equal(one, Loader(ds, 8, seed=3).order(1))


def test_batches_decode_normalise_and_label(ds):
    with Loader(ds, 4, shuffle=False, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0)) as ld:
        images, labels = ld.next_batch()
    assert images.dtype == np.float32 and images.shape == (4, 3, 8, 8)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 2, 0]
    mean = np.array([0.1, 0.2, 0.3])[:, None, None]
    std = np.array([0.5, 0.25, 2.0])[:, None, None]
    for k in range(4):
        want = (image(k).transpose(2, 0, 1) / 255.0 - mean) / std
        np.testing.assert_allclose(images[k], want, rtol=1e-5, atol=1e-5)


def _run(loader, n):
    out = [loader.next_batch() for _ in range(n)]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


def test_ranks_concatenate_to_single_rank_with_augment(ds):
    kw = dict(seed=5, augment=True, image_size=6)
    with Loader(ds, 8, **kw) as whole:
        wi, wl = _run(whole, 3)
    parts = []
    for r in range(2):
        with Loader(ds, 4, rank=r, world_size=2, num_threads=1 + r, **kw) as ld:
            parts.append(_run(ld, 3))
    np.testing.assert_array_equal(np.concatenate([parts[0][0], parts[1][0]], axis=1), wi)
    np.testing.assert_array_equal(np.concatenate([parts[0][1], parts[1][1]], axis=1), wl)


def test_resume_is_exact_across_epochs(ds):
    kw = dict(batch_size=4, rank=1, world_size=2, seed=11, augment=Augment(scale=(0.3, 1.0)))
    with Loader(ds, **kw) as ref:
        want_i, want_l = _run(ref, 8)                # 3 steps/epoch: crosses 2 boundaries
    with Loader(ds, **kw) as first:
        _run(first, 4)
        state = first.state_dict()
    assert state == {"epoch": 1, "step": 1, "seed": 11}
    with Loader(ds, **{**kw, "seed": 0}, prefetch=0) as resumed:
        resumed.load_state_dict(state)
        got_i, got_l = _run(resumed, 4)
    np.testing.assert_array_equal(got_i, want_i[4:])
    np.testing.assert_array_equal(got_l, want_l[4:])


def test_epoch_iter_yields_rest_of_epoch(ds):
    with Loader(ds, 4, world_size=2) as ld:
        assert len(ld) == 3 and len(list(ld.epoch_iter())) == 3
        assert ld.state_dict()["epoch"] == 1
        ld.next_batch()
        assert len(list(ld)) == 2 and ld.state_dict() == {"epoch": 2, "step": 0, "seed": 0}


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=14), "fewer than world_size \\* batch_size = 1 \\* 14|27 samples"),
    (dict(batch_size=4, world_size=7), "27 samples, fewer than .* = 28"),
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=4, rank=2, world_size=2), "rank 2"),
    (dict(batch_size=4, augment="yes"), "augment"),
    (dict(batch_size=4, on_error="ignore"), "on_error"),
    (dict(batch_size=4, mean=(0.5,)), "mean and std"),
])
def test_bad_arguments(ds, kwargs, match):
    if kwargs.get("batch_size") == 14:
        kwargs["world_size"] = 2
        match = "27 samples, fewer than world_size \\* batch_size = 2 \\* 14 = 28"
    with pytest.raises(ValueError, match=match):
        Loader(ds, **kwargs)


@pytest.fixture
def damaged(tmp_path):
    with ShardWriter(str(tmp_path / "s-%06d.tar")) as w:
        for j in range(8):
            data = b"\x89PNG broken" if j == 2 else png(image(j))
            w.write({"__key__": f"{j:02d}", "png": data, "cls": j})
    return tmp_path


def test_skip_warns_counts_and_refills(damaged):
    ds = ShardDataset(damaged)
    path, offset = ds.locate(2)
    with Loader(ds, 4, shuffle=False) as ld:
        with pytest.warns(ShardWarning, match=f"{path}: byte {offset}: .*skipped \\(total 1\\)"):
            _, labels = ld.next_batch()
        assert labels.tolist() == [0, 1, 3, 3] and ld.skipped == 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert ld.next_batch()[1].tolist() == [4, 5, 6, 7]


def test_raise_policy(damaged):
    with Loader(ShardDataset(damaged, on_error="raise"), 4, shuffle=False) as ld:
        with pytest.raises(CorruptSampleError, match="byte"):
            ld.next_batch()
        assert ld.state_dict()["step"] == 0
    with Loader(ShardDataset(damaged), 4, shuffle=False, on_error="raise") as ld:
        with pytest.raises(CorruptSampleError):
            ld.next_batch()


def test_fully_damaged_data_fails_instead_of_hanging(tmp_path):
    with ShardWriter(str(tmp_path / "s-%06d.tar")) as w:
        for j in range(4):
            w.write({"__key__": f"{j}", "png": b"junk", "cls": 0})
    with Loader(ShardDataset(tmp_path), 2, image_size=8, max_substitutes=3) as ld:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(RuntimeError, match="3 substitutes"):
                ld.next_batch()


def test_image_size_probe_skips_a_damaged_first_sample(tmp_path):
    with ShardWriter(str(tmp_path / "s-%06d.tar")) as w:
        w.write({"__key__": "0", "png": b"junk", "cls": 0})
        for j in range(1, 4):
            w.write({"__key__": f"{j}", "png": png(image(j)), "cls": j})
    assert Loader(ShardDataset(tmp_path), 2).image_size == 8
    with pytest.raises(CorruptSampleError):
        Loader(ShardDataset(tmp_path, on_error="raise"), 2)


def test_prefetch_and_threads_are_bounded(ds):
    import threading
    before = threading.active_count()
    with Loader(ds, 2, prefetch=3, num_threads=2) as ld:
        for _ in range(5):
            ld.next_batch()
            assert len(ld._pending) == 3          # batches decoded ahead, never more
            assert threading.active_count() - before <= 2
    assert threading.active_count() == before    # close() joined the workers


def test_a_step_may_straddle_an_epoch_alike_on_every_rank():
    """``LoaderSteps`` groups ``accum`` consecutive Loader batches into one optimizer step,
    and the Loader crosses epoch boundaries: with 5 batches per epoch and accum = 2, step
    2 (0-based) takes the last batch of epoch 0 and the first of epoch 1.  Every rank
    straddles at the same step; the step reports the epoch of its first micro-batch."""
    from minivit.io.random_images import RandomImages
    from minivit.io.sources import LoaderSteps
    data = RandomImages(40, 8, 40, seed=0)    # label = sample index: the order is visible
    loaders = [Loader(data, 4, rank=r, world_size=2, seed=3, prefetch=0) for r in range(2)]
    steps = [LoaderSteps(loader, accum=2) for loader in loaders]
    assert loaders[0].steps_per_epoch == 5    # 40 samples = 5 batches of micro 4 x dp 2
    for step in range(5):                     # 10 batches: two epochs
        for r, (loader, it) in enumerate(zip(loaders, steps)):
            epoch, micro = next(it)
            assert epoch == (0 if step <= 2 else 1)
            want = []
            for k in range(2):                # the k-th micro-batch is loader batch 2 step + k
                e, s = divmod(2 * step + k, 5)
                want.append(list(loader.order(e)[loader.batch_positions(s)]))
            assert [list(y) for _, y in micro] == want
            if step == 2:                     # the straddling step: epochs 0 and 1
                assert want[0] != want[1] and loader.state_dict()["epoch"] == 1
