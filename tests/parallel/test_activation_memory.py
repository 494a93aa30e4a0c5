"""Activation memory (issue 15): the bytes the contexts of one micro-batch keep,
measured with ``recompute.ctx_nbytes``, equal cost.py's closed forms exactly,
per block and per stage, float32 and float64, with and without recompute and tp.
The in-flight counts under GPipe / 1F1B are checked against the pipeline's own
measured peak in tests/support/mp_layouts_driver.py (test_tp_pp.py, world 2)."""
import numpy as np
import pytest
from mpi4py import MPI

from minivit.config import get_config
from minivit.loss import cross_entropy_forward
from minivit.model import Block, ViT
from minivit.parallel import cost
from minivit.parallel.grid import ProcessGrid
from minivit.parallel.model_parallel import ModelShard
from minivit.parallel.pipeline import schedule_order
from minivit.parallel.recompute import Recompute, ctx_nbytes
from minivit.parallel.tensor_parallel import TensorParallelBlock

B = 3


class ShapeComm:
    """A tp communicator stand-in: the right ``size``/``rank`` and an all-reduce that
    leaves the buffer as it is (shapes, hence context bytes, are those of real TP)."""

    def __init__(self, size, rank=0):
        self.size, self.rank = size, rank

    def allreduce(self, buf, op="sum"):
        return buf


def _images(cfg, b=B):
    return np.random.default_rng(0).standard_normal(
        (b, cfg.in_chans, cfg.image_size, cfg.image_size)).astype(cfg.dtype)


@pytest.mark.parametrize("dtype, item", [("float32", 4), ("float64", 8)])
def test_serial_model_contexts_equal_the_closed_form(dtype, item):
    cfg = get_config("vit-nano", dtype=dtype)
    model = ViT(cfg, seed=0)
    logits, ctx = model.forward(_images(cfg))
    measured = [ctx_nbytes(c) for c in ctx]
    assert measured[0] == cost.embed_ctx_bytes(cfg, B, item) == B * 16 * 48 * item
    assert measured[1:-1] == [cost.block_ctx_bytes(cfg, B, item)] * cfg.depth
    assert measured[-1] == cost.head_ctx_bytes(cfg, B, item, loss=False)
    assert ctx_nbytes(ctx) == cost.stage_activation_bytes(cfg, B, item, blocks=cfg.depth,
                                                          loss=False)
    _, loss_ctx = cross_entropy_forward(logits, np.arange(B) % cfg.num_classes)
    assert ctx_nbytes((ctx, loss_ctx)) == cost.stage_activation_bytes(cfg, B, item,
                                                                      blocks=cfg.depth)
    # by hand, vit-nano (T=17, D=32, M=64, H=4): s*B*T*(8D + 2M + H*T) + 32*B*T
    assert measured[1] == item * B * 17 * (8 * 32 + 2 * 64 + 4 * 17) + 32 * B * 17


@pytest.mark.parametrize("dtype, item", [("float32", 4), ("float64", 8)])
def test_recompute_keeps_only_the_block_input(dtype, item):
    cfg = get_config("vit-nano", dtype=dtype)
    grid = ProcessGrid(MPI.COMM_SELF, dp=1)
    try:
        model = ModelShard(cfg, 0, grid, recompute=True)
        _, ctx = model.forward(_images(cfg))
        assert [ctx_nbytes(c) for c in ctx[1:-1]] == \
            [cost.block_ctx_bytes(cfg, B, item, recompute=True)] * cfg.depth
        assert cost.block_ctx_bytes(cfg, B, item, recompute=True) == item * B * 17 * 32
        assert ctx_nbytes(ctx) == cost.stage_activation_bytes(cfg, B, item, blocks=cfg.depth,
                                                              recompute=True, loss=False)
    finally:
        grid.free()


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("dtype, item", [("float32", 4), ("float64", 8)])
def test_tensor_parallel_block_contexts(tp, recompute, dtype, item):
    cfg = get_config("vit-nano", dtype=dtype)
    for rank in range(tp):
        block = TensorParallelBlock("blocks.0", cfg, 0, ShapeComm(tp, rank))
        unit = Recompute(block) if recompute else block
        x = np.random.default_rng(1).standard_normal((B, cfg.seq_len, cfg.dim)).astype(dtype)
        _, ctx = unit.forward(x)
        assert ctx_nbytes(ctx) == cost.block_ctx_bytes(cfg, B, item, tp=tp,
                                                       recompute=recompute)


def test_a_wrong_formula_fails():
    """The check has teeth: plausible but wrong counts differ from the measurement."""
    cfg = get_config("vit-nano", dtype="float32")
    _, ctx = Block("blocks.0", cfg, 0).forward(
        np.zeros((B, cfg.seq_len, cfg.dim), np.float32))
    measured = ctx_nbytes(ctx)
    rows, d, m, h, t = B * 17, 32, 64, 4, 17
    wrong = [4 * rows * (8 * d + 2 * m + h * t) + 4 * 4 * rows,  # LN stats in float32
             4 * rows * (8 * d + 2 * m + h * t),                 # LN stats forgotten
             4 * rows * (10 * d + 2 * m + h * t) + 32 * rows,    # q, k, v kept apart
             34 * rows * d + 5 * h * t * t * B]                  # Korthikanti's 16-bit count
    assert measured == cost.block_ctx_bytes(cfg, B, 4)
    assert all(w != measured for w in wrong)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("pp, m", [(2, 4), (4, 4), (4, 8), (3, 3)])
def test_in_flight_is_the_schedule_peak(schedule, pp, m):
    for stage in range(pp):
        alive = peak = 0
        for kind, _ in schedule_order(schedule, m, pp, stage):
            alive += 1 if kind == "F" else -1
            peak = max(peak, alive)
        assert cost.micro_batches_in_flight(schedule, m, pp, stage) == peak


def test_peak_activation_bytes_adds_the_rebuilt_block():
    cfg = get_config("vit-nano")
    out = cost.peak_activation_bytes(cfg, 2, 4, m=4, pp=2, stage=0, recompute=True,
                                     schedule="gpipe")
    assert out["in_flight"] == 4
    assert out["contexts"] == 4 * cost.stage_activation_bytes(cfg, 2, 4, blocks=2, last=False,
                                                               recompute=True)
    assert out["total"] == out["contexts"] + cost.block_ctx_bytes(cfg, 2, 4)
    with pytest.raises(ValueError, match="tp=3"):
        cost.block_ctx_bytes(cfg, 2, 4, tp=3)


@pytest.mark.parametrize("class_token", [True, False])
def test_head_at_batch_one_keeps_the_whole_last_activation(class_token):
    """x[:, 0] of a (1, T, D) array is contiguous, so the head's pooled token is a view
    and its context holds the (1, T, D) base (found by the world-8 MPI check)."""
    cfg = get_config("vit-nano", dtype="float64", class_token=class_token)
    model = ViT(cfg, seed=0)
    _, ctx = model.forward(_images(cfg, b=1))
    assert ctx_nbytes(ctx[-1]) == cost.head_ctx_bytes(cfg, 1, 8, loss=False)
    pooled = cfg.seq_len * cfg.dim if class_token else cfg.dim
    assert ctx_nbytes(ctx[-1]) == 8 * (pooled + cfg.dim) + 16
