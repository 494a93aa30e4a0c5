"""Sharded ZeRO-3 construction (parallel/shard.py), in one process.

The bytes a rank allocates while building are counted with ``tracemalloc``
(NumPy reports every array buffer to it), not with RSS or timing: the peak of
a sharded build must stay within the shards' closed form plus the peak of
building the largest single unit.  The shards must be bitwise the slices
``ShardLayout.extract`` takes of the fully built model.
"""
import tracemalloc
from functools import partial

import numpy as np
import pytest
from mpi4py import MPI

from minivit.config import get_config
from minivit.model import Block, Embed, Head, ViT
from minivit.parallel.cost import vit_param_specs, vit_unit_sizes
from minivit.parallel.grid import ProcessGrid
from minivit.parallel.model_parallel import build_model
from minivit.parallel.offload import Offload
from minivit.parallel.runtime.step import StepEngine
from minivit.parallel.shard import ShardLayout
from minivit.parallel.shard import build_sharded

SEED = 5
# big enough that arrays dominate Python's own objects (a block is 0.4 MB in
# float64, the model 2.6 MB), small enough to build in well under a second
CFG = get_config("vit-nano", dtype="float64", dim=64, heads=4, mlp_dim=256, depth=6)


def builders(cfg):
    return ([partial(Embed, cfg, SEED)]
            + [partial(Block, f"blocks.{i}", cfg, SEED) for i in range(cfg.depth)]
            + [partial(Head, cfg, SEED)])


def traced(fn):
    """``(result, peak, kept)``: bytes traced while ``fn()`` ran and still held after
    it returned, both above what was live before."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        current, peak = tracemalloc.get_traced_memory()
        return out, peak - base, current - base
    finally:
        tracemalloc.stop()


def check_construction_peak(unit_builders, p, rank):
    """Raise AssertionError unless building with ``unit_builders`` peaks at one unit
    plus the shards; returns ``(peak, shard bytes, unit peak)``."""
    item = np.dtype(CFG.dtype).itemsize
    # the shards' closed form: parameter and decay-mask shard vectors, each
    # sum_u ceil(n_u / p) elements (per-unit padding, parallel/shard.py), of
    # the model dtype and of bool (1 byte) respectively
    shard_bytes = (item + 1) * sum(-(-n // p) for n in vit_unit_sizes(CFG))
    # the peak of building one unit alone (its arrays, gradients, init temporaries)
    unit_peak = max(traced(build)[1] for build in builders(CFG))
    (_, _, shards), peak, kept = traced(
        lambda: build_sharded(unit_builders, vit_param_specs(CFG), CFG.dtype, p, rank))
    assert shards.nbytes() == shard_bytes
    # what the build keeps besides the shards is Python objects only (modules,
    # array-less Parameters, names, the offsets dict), far below one unit's arrays
    objects = kept - shard_bytes
    assert 0 <= objects < unit_peak / 10, (objects, unit_peak)
    assert peak <= kept + unit_peak, (peak, shard_bytes, objects, unit_peak)
    return peak, shard_bytes, unit_peak


@pytest.mark.parametrize("p, rank", [(4, 0), (4, 3), (8, 5)])
def test_construction_peak_is_one_unit_plus_the_shards(p, rank):
    peak, _, _ = check_construction_peak(builders(CFG), p, rank)
    # against building the whole model first: data, grad and (1-byte) decay mask of every unit
    full_model = (2 * np.dtype(CFG.dtype).itemsize + 1) * sum(vit_unit_sizes(CFG))
    _, full_peak, _ = traced(lambda: ViT(CFG, seed=SEED))
    assert full_peak >= full_model
    assert peak < full_peak / 2


def test_the_peak_check_catches_a_build_that_keeps_the_units_arrays():
    leaked = []

    def leaky(build):
        unit = build()
        leaked.extend(prm.data for prm in unit.parameters())   # survives the drop
        return unit
    with pytest.raises(AssertionError):
        check_construction_peak([partial(leaky, b) for b in builders(CFG)], 4, 1)
    assert leaked


@pytest.mark.parametrize("p", [1, 3, 4])
def test_shards_are_bitwise_the_slices_of_the_full_model(p):
    full = ViT(CFG, seed=SEED).flat
    for rank in range(p):
        units, flat, shards = build_sharded(builders(CFG), vit_param_specs(CFG), CFG.dtype,
                                            p, rank)
        layout = ShardLayout([(a, b) for a, b in _ranges(full)], p, rank)
        assert shards.layout.ranges == layout.ranges
        assert np.array_equal(shards.param_shard, layout.extract(full.data))
        assert np.array_equal(shards.decay_shard, layout.extract(full.decay_mask))
        assert flat.offsets == full.offsets and flat.data is None
        assert all(prm.data is None and prm.grad is None
                   for unit in units for prm in unit.parameters())


def _ranges(flat):
    sizes = vit_unit_sizes(CFG)
    ends = np.cumsum(sizes).tolist()
    return list(zip([0] + ends[:-1], ends))


def test_a_unit_that_differs_from_its_spec_is_refused():
    specs = vit_param_specs(CFG)
    specs[1] = [(n, (s[0] + 1,) + tuple(s[1:])) if n.endswith("norm1.weight") else (n, s)
                for n, s in specs[1]]
    with pytest.raises(ValueError, match="unit 1: built parameters"):
        build_sharded(builders(CFG), specs, CFG.dtype, 2, 0)


def test_the_zero3_model_takes_no_other_stage_and_offloads_only_shards(tmp_path):
    grid = ProcessGrid(MPI.COMM_SELF, dp=1)
    model = build_model(CFG, SEED, grid, zero=3)
    assert model.flat.data is None and model.zero_shards is not None
    with pytest.raises(ValueError, match="zero=2 for a model built shard by shard"):
        StepEngine(model, grid, zero=2)
    offload = Offload(None, tmp_path, 0)
    engine = StepEngine(model, grid, zero=3, allocate=offload.allocate)
    offload.attach(engine)
    opt = engine.optimizer
    # parameter shard and both moments were created in the files: no heap copy, and
    # the files hold exactly the three shard vectors
    for key in ("param_shard", "exp_avg", "exp_avg_sq"):
        assert any(np.shares_memory(getattr(opt, key), mm) for mm in offload.maps), key
    item = np.dtype(CFG.dtype).itemsize
    assert offload.nbytes == 3 * item * opt.layout.numel == sum(
        path.stat().st_size for path in offload.files)
    assert model.zero_shards.param_shard is None        # handed over, not kept twice
    offload.close()
    grid.free()
