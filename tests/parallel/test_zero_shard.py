"""ShardLayout (per-unit padding for any dp size) and DataParallel's overlap
hook, in one process (COMM_SELF): no mpirun needed."""
import numpy as np
import pytest
from mpi4py import MPI

from minivit.parallel.comm import Communicator, Ledger
from minivit.parallel.shard import ShardLayout


@pytest.mark.parametrize("p", [1, 2, 3, 4, 7])
def test_shards_tile_every_unit_exactly_once(p):
    ranges = [(0, 10), (10, 13), (13, 40)]
    full = np.arange(40, dtype=np.float64) + 1
    shards = [ShardLayout(ranges, p, r) for r in range(p)]
    covered = np.zeros(40, int)
    for lay in shards:
        assert lay.numel == sum(-(-(b - a) // p) for a, b in ranges)
        vec = lay.extract(full)
        for u in range(len(ranges)):
            lo, hi = lay.owned(u)
            covered[lo:hi] += 1
            np.testing.assert_array_equal(lay.shard_view(vec, u, owned_only=True), full[lo:hi])
            assert np.all(lay.shard_view(vec, u)[hi - lo:] == 0)     # padding is zero
    assert np.all(covered == 1)
    # concatenating unit u's blocks in rank order rebuilds the unit (what all-gather does)
    vecs = [lay.extract(full) for lay in shards]
    for u, (a, b) in enumerate(ranges):
        unit = np.concatenate([lay.shard_view(v, u) for lay, v in zip(shards, vecs)])
        np.testing.assert_array_equal(unit[:b - a], full[a:b])


def test_layout_rejects_bad_input():
    with pytest.raises(ValueError, match="rank=3, p=3"):
        ShardLayout([(0, 4)], 3, 3)
    with pytest.raises(ValueError, match=r"unit range \(5, 9\): expected contiguous"):
        ShardLayout([(0, 4), (5, 9)], 2, 0)
    with pytest.raises(ValueError, match=r"full buffer shape \(3,\): expected \(4,\)"):
        ShardLayout([(0, 4)], 2, 0).extract(np.zeros(3))


def test_overlap_posts_buckets_before_the_backward_ends():
    from minivit.config import get_config
    from minivit.model import ViT
    from minivit.parallel.data_parallel import DataParallel, GradReadyUnit
    from minivit.parallel.units import wrap_units
    cfg = get_config("vit-nano", dtype="float64", depth=2)
    model = ViT(cfg, seed=0)
    events = []
    comm = Communicator(MPI.COMM_SELF, "dp", Ledger())
    post = comm.iallreduce
    comm.iallreduce = lambda buf: (events.append(("post", buf.size)), post(buf))[1]
    dp = DataParallel(model, comm, bucket_bytes=4096 * 8, overlap=True)
    wrap_units(model, GradReadyUnit, dp)       # the explicit call StepEngine makes
    embed = model.units[0].unit
    embed_backward = embed.backward
    embed.backward = lambda dy, ctx: (events.append(("embed backward", 0)),
                                      embed_backward(dy, ctx))[1]
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16))
    logits, ctx = model.forward(x)
    dp.arm()
    model.backward(np.ones_like(logits), ctx)
    dp.sync_gradients()
    order = [name for name, _ in events]
    first_embed = order.index("embed backward")
    assert "post" in order[:first_embed], order           # overlap: posted mid-backward
    assert sum(size for name, size in events if name == "post") == model.flat.numel
    assert len(comm.ledger.entries) == len(dp.buckets)    # every bucket exactly once
