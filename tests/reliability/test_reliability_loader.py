"""Shards whose sizes do not divide evenly over the ranks (23 samples in shards of
7, 7, 7 and 2): every rank runs the same number of steps per epoch, for 2, 3
and 4 ranks, and a 3-rank run crossing several epochs ends cleanly.

Equal steps follow from arithmetic (DESIGN.md section 4): each rank takes
``floor(N / (B * world))`` micro-batches per epoch, the remainder is dropped
by every rank alike, so no rank waits in a collective the others never reach.
"""
import json

import pytest

from conftest import ROOT
from minivit.io import Loader, ShardDataset
from io_support import write_shards

N, PER_SHARD, BATCH = 23, 7, 2


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("uneven")
    write_shards(str(root / "train-%06d.tar"), N, PER_SHARD, size=16)
    return root


@pytest.mark.parametrize("world", [2, 3, 4])
def test_equal_steps_per_rank_over_uneven_shards(shards, world):
    ds = ShardDataset(str(shards / "index.json"))
    assert len(ds) == N and N % (BATCH * world)          # really uneven for this world
    counts, seen = [], []
    for rank in range(world):
        with Loader(ds, BATCH, rank=rank, world_size=world, seed=3, num_threads=1,
                    prefetch=1) as loader:
            per_epoch = []
            for _ in range(2):                            # two epochs, reshuffled
                batches = list(loader.epoch_iter())
                assert all(len(y) == BATCH for _, y in batches)
                per_epoch.append(len(batches))
            counts.append(per_epoch)
            seen.append(loader.steps_per_epoch)
    expected = N // (BATCH * world)
    assert counts == [[expected, expected]] * world
    assert seen == [expected] * world


def test_three_ranks_cross_epochs_and_end_cleanly(run_mpi, shards, tmp_path):
    out = tmp_path / "run"
    steps = 8                                             # 3 steps per epoch: 3 epochs
    proc = run_mpi(3, [ROOT / "run" / "pretrain.py", "--model", "vit-nano", "--data", shards,
                       "--micro-batch", str(BATCH), "--steps", str(steps), "--holdout", "0",
                       "--threads", "1", "--no-progress", "--save-every", "-1",
                       "--out", out], timeout=180)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("kind") == "train"]
    assert [r["step"] for r in train] == list(range(1, steps + 1))
    assert [r["epoch"] for r in train] == [0, 0, 0, 1, 1, 1, 2, 2]
    assert "loss" in proc.stdout and proc.returncode == 0
