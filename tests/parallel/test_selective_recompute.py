"""Selective recompute (``recompute="selective"``): every block's attention core keeps
its row log-sum-exp (B, H/tp, T) float64 instead of P (B, H/tp, T, T).  The measured
contexts (``recompute.ctx_nbytes``) equal ``cost.block_ctx_bytes``'s closed form, serial,
tensor- and sequence-parallel; the model's gradients equal the P-keeping model's in
float64; and the granularity names are checked.  The multi-rank run equals the serial
one in tests/parallel/test_tp_pp.py (tp 2 layout) and the pretrain test below."""
import numpy as np
import pytest
from mpi4py import MPI

from minivit.config import get_config
from minivit.model import ViT
from minivit.parallel import cost
from minivit.parallel.grid import ProcessGrid
from minivit.parallel.model_parallel import ModelShard, build_model
from minivit.parallel.recompute import ctx_nbytes
from minivit.parallel.sequence_parallel import SequenceParallelBlock, tokens_per_rank
from minivit.parallel.tensor_parallel import TensorParallelBlock

from test_sequence_parallel import ShapeComm

B = 3


def _images(cfg, b=B, seed=0):
    return np.random.default_rng(seed).standard_normal(
        (b, cfg.in_chans, cfg.image_size, cfg.image_size)).astype(cfg.dtype)


@pytest.mark.parametrize("dtype, item", [("float32", 4), ("float64", 8)])
def test_serial_contexts_equal_the_closed_form(dtype, item):
    cfg = get_config("vit-nano", dtype=dtype)
    grid = ProcessGrid(MPI.COMM_SELF, dp=1)
    try:
        for model in (ViT(cfg, seed=0, selective=True),
                      ModelShard(cfg, 0, grid, recompute="selective")):
            _, ctx = model.forward(_images(cfg))
            per_block = cost.block_ctx_bytes(cfg, B, item, recompute="selective")
            assert [ctx_nbytes(c) for c in ctx[1:-1]] == [per_block] * cfg.depth
            assert ctx_nbytes(ctx) == cost.stage_activation_bytes(
                cfg, B, item, blocks=cfg.depth, recompute="selective", loss=False)
    finally:
        grid.free()
    # by hand, vit-nano (T=17, D=32, M=64, H=4): s B T (8D + 2M) + 8 B H T + 32 B T,
    # P's s B H T^2 gone
    assert per_block == item * B * 17 * (8 * 32 + 2 * 64) + 8 * B * 4 * 17 + 32 * B * 17
    assert cost.block_ctx_bytes(cfg, B, item) - per_block == \
        item * B * 4 * 17 * 17 - 8 * B * 4 * 17


@pytest.mark.parametrize("tp, dtype, item", [(2, "float32", 4), (2, "float64", 8),
                                             (4, "float32", 4)])
def test_tensor_and_sequence_parallel_contexts_equal_the_closed_form(tp, dtype, item):
    cfg = get_config("vit-nano", dtype=dtype)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, cfg.seq_len, cfg.dim)).astype(dtype)
    x_loc = x[:, :tokens_per_rank(cfg.seq_len, tp)].copy()
    for rank in range(tp):
        _, tp_ctx = TensorParallelBlock("blocks.0", cfg, 0, ShapeComm(tp, rank),
                                        selective=True).forward(x)
        assert ctx_nbytes(tp_ctx) == cost.block_ctx_bytes(cfg, B, item, tp=tp,
                                                       recompute="selective")
        _, ctx = SequenceParallelBlock("blocks.0", cfg, 0, ShapeComm(tp, rank),
                                       selective=True).forward(x_loc)
        assert ctx_nbytes(ctx) == cost.block_ctx_bytes(cfg, B, item, tp=tp,
                                                       recompute="selective",
                                                       sequence_parallel=True)
    if tp == 2:   # by hand: the local heads' L, 8 B (H/2) T, in place of s B (H/2) T^2
        plain = cost.block_ctx_bytes(cfg, B, item, tp=2)
        assert plain - ctx_nbytes(tp_ctx) == item * B * 2 * 17 * 17 - 8 * B * 2 * 17


def test_a_wrong_formula_fails():
    """Plausible but wrong counts differ from the measurement: L in the model dtype,
    L for all heads at tp 2, P kept as well."""
    cfg = get_config("vit-nano", dtype="float32")
    x = np.zeros((B, cfg.seq_len, cfg.dim), np.float32)
    _, ctx = TensorParallelBlock("blocks.0", cfg, 0, ShapeComm(2), selective=True).forward(x)
    measured = ctx_nbytes(ctx)
    rows, d, m, h, t = B * 17, 32, 64, 4, 17
    rest = 4 * rows * (4 * d + (4 * d + 2 * m) // 2) + 32 * rows
    assert measured == rest + 8 * rows * h // 2
    wrong = [rest + 4 * rows * h // 2, rest + 8 * rows * h,
             rest + 8 * rows * h // 2 + 4 * rows * h // 2 * t]
    assert all(w != measured for w in wrong)


def test_float64_gradients_equal_the_p_keeping_model():
    cfg = get_config("vit-nano", dtype="float64")
    x = _images(cfg, b=2, seed=3)
    dlogits = np.random.default_rng(4).standard_normal((2, cfg.num_classes))
    grads, logits = [], []
    for selective in (False, True):
        model = ViT(cfg, seed=0, selective=selective)
        out, ctx = model.forward(x)
        model.backward(dlogits, ctx)
        grads.append(model.flat.grad.copy())
        logits.append(out)
    np.testing.assert_array_equal(logits[0], logits[1])    # the forward is the same kernel
    err = np.abs(grads[1] - grads[0]).max() / np.abs(grads[0]).max()
    assert 0 <= err < 1e-12
    assert np.abs(grads[0]).max() > 0


def test_granularity_names_and_what_they_build():
    assert [cost.recompute_mode(v) for v in (False, None, True, "full", "selective")] == \
        [None, None, "full", "full", "selective"]
    with pytest.raises(ValueError, match="recompute='block'"):
        cost.recompute_mode("block")
    cfg = get_config("vit-nano")
    grid = ProcessGrid(MPI.COMM_SELF, dp=1)
    try:
        serial = build_model(cfg, 0, grid, recompute="selective")
        assert isinstance(serial, ViT) and not isinstance(serial, ModelShard)
        assert all(u.attn.selective for u in serial.units[1:-1])
        assert not any(u.attn.selective for u in build_model(cfg, 0, grid).units[1:-1])
    finally:
        grid.free()
    # selective adds no communication and no rebuilt block at the backward's peak
    assert cost.tp_step_bytes(2, 17, 32, 4, 2, 2, 4, "selective") == \
        cost.tp_step_bytes(2, 17, 32, 4, 2, 2, 4, False)
    peak = cost.peak_activation_bytes(cfg, 2, 4, m=4, pp=2, recompute="selective")
    assert peak["recompute_transient"] == 0
    assert peak["contexts"] == 2 * cost.stage_activation_bytes(
        cfg, 2, 4, blocks=2, last=False, recompute="selective")


def test_the_flags_and_toml_keep_recompute_true_as_full(tmp_path):
    import argparse

    from minivit.parallel.runtime.cliconfig import parse_with_config
    from minivit.parallel.runtime.config import PretrainConfig, add_flags

    def parsed(argv):
        parser = add_flags(argparse.ArgumentParser(), PretrainConfig)
        parser.add_argument("--config")
        return PretrainConfig.from_namespace(parse_with_config(parser, argv)).validate(1)

    old = tmp_path / "old.toml"
    old.write_text("recompute = true\n")                # a config.toml written before the flag
    new = tmp_path / "new.toml"
    new.write_text('recompute = true\nrecompute-granularity = "selective"\n')
    assert parsed([]).recompute_kind() is None
    assert parsed(["--recompute"]).recompute_kind() == "full"
    assert parsed(["--config", str(old)]).recompute_kind() == "full"
    assert parsed(["--config", str(new)]).recompute_kind() == "selective"
    assert parsed(["--recompute", "--recompute-granularity", "selective"]).recompute_kind() \
        == "selective"
    assert parsed(["--recompute", "--recompute-granularity", "full"]).recompute_kind() == "full"
    with pytest.raises(ValueError, match="--recompute-granularity selective without "
                                         "--recompute: expected --recompute too"):
        PretrainConfig(recompute_granularity="selective").validate(1)
