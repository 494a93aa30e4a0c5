"""Sequence parallelism (issue 18, item 3; Korthikanti et al. 2022, section 4.2.2).

Float64 equality with one process (3 steps, 1e-10), the LayerNorm replicas bitwise
equal over tp after every step, the drift without the LN reduction, and the ledger
against ``cost.sp_step_bytes`` run in the mpirun layouts of test_tp_pp.py (key
``"sp"``).  Here: the ops' backward (adjoints and finite differences, through
tests/support/sp_gradcheck_driver.py), the padding rule and its errors, the
activation closed form, and ``run/pretrain.py --sequence-parallel --audit``.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
from mpi4py import MPI

from conftest import ROOT
from minivit.config import get_config
from minivit.parallel import cost
from minivit.parallel.grid import ProcessGrid
from minivit.parallel.model_parallel import ModelShard
from minivit.parallel.recompute import Recompute, ctx_nbytes
from minivit.parallel.runtime.config import PretrainConfig
from minivit.parallel.sequence_parallel import SequenceParallelBlock, tokens_per_rank
from minivit.parallel.tensor_parallel import TensorParallelBlock

DRIVER = str(ROOT / "tests" / "support" / "sp_gradcheck_driver.py")
PRETRAIN = str(ROOT / "run" / "pretrain.py")


class ShapeComm:
    """A tp communicator stand-in with real shapes: the all-gather repeats this rank's
    block, the reduce-scatter keeps this rank's block, the all-reduce changes nothing
    (the values are not those of a real group; the context bytes are)."""

    def __init__(self, size, rank=0):
        self.size, self.rank = size, rank

    def allreduce(self, buf, op="sum"):
        return buf

    def allgather(self, sendbuf, recvbuf):
        recvbuf[...] = sendbuf
        return recvbuf

    def reduce_scatter(self, sendbuf, recvbuf):
        recvbuf[...] = sendbuf.reshape(self.size, *recvbuf.shape)[self.rank]
        return recvbuf


def test_ops_backward_adjoints_finite_differences_and_the_wrong_ln_gradient(run_mpi):
    out = run_mpi(2, [DRIVER], timeout=180).stdout
    ok = [ln for ln in out.splitlines() if ln.startswith("OK ")]
    assert len(ok) == 3, out
    assert "adjoint identities of g, g-bar, enter, leave" in ok[0]
    assert "finite differences of SequenceParallelBlock" in ok[1]
    assert "wrong gradient caught" in ok[2]


def test_padding_rule_and_its_errors():
    assert tokens_per_rank(197, 2) == 99          # ViT-B/16: 196 patches + class token
    assert tokens_per_rank(17, 2) == 9 and tokens_per_rank(17, 4) == 5   # vit-nano
    assert tokens_per_rank(196, 4) == 49          # divisible: no padding
    with pytest.raises(ValueError, match="tp=1: expected tp >= 2"):
        tokens_per_rank(197, 1)
    with pytest.raises(ValueError, match=r"T=5 tokens over tp=4 ranks gives T_loc=2, and "
                                         r"rank 3 would hold only padding"):
        tokens_per_rank(5, 4)
    with pytest.raises(ValueError, match="--sequence-parallel with --tp 1: expected --tp >= 2"):
        PretrainConfig(sequence_parallel=True, data="random").validate(1)
    assert PretrainConfig(sequence_parallel=True, data="random", model="vit-nano",
                          tp=2).validate(2).sequence_parallel
    grid = ProcessGrid(MPI.COMM_SELF, dp=1)
    with pytest.raises(ValueError, match="expected tp >= 2"):
        ModelShard(get_config("vit-nano"), 0, grid, sequence_parallel=True)
    grid.free()


@pytest.mark.parametrize("tp, dtype, item", [(2, "float32", 4), (2, "float64", 8),
                                             (4, "float32", 4)])
def test_block_contexts_equal_the_closed_form(tp, dtype, item):
    cfg = get_config("vit-nano", dtype=dtype)
    b, local = 3, tokens_per_rank(cfg.seq_len, tp)
    x = np.random.default_rng(0).standard_normal((b, local, cfg.dim)).astype(dtype)
    for rank in range(tp):
        block = SequenceParallelBlock("blocks.0", cfg, 0, ShapeComm(tp, rank))
        y, ctx = block.forward(x)
        assert y.shape == x.shape
        assert ctx_nbytes(ctx) == cost.block_ctx_bytes(cfg, b, item, tp=tp,
                                                       sequence_parallel=True)
        _, kept = Recompute(block).forward(x)
        assert ctx_nbytes(kept) == cost.block_ctx_bytes(cfg, b, item, tp=tp, recompute=True,
                                                        sequence_parallel=True)
    # by hand, vit-nano (T=17, D=32, M=64, H=4) at tp 2: T_loc = 9
    if tp == 2:
        by_hand = item * b * (2 * 9 * 32 + 17 * (2 * 32 + (4 * 32 + 2 * 64 + 4 * 17) // 2))
        assert ctx_nbytes(ctx) == by_hand + 32 * b * 9


def test_the_ln_regions_share_halves_at_tp2():
    """The LayerNorm/residual regions' bytes (block input, residual 1, LN statistics)
    divide by t, up to the padding; the rest of the block is TP's."""
    cfg = get_config("vit-base")
    b, item, t = 32, 4, 2
    tp_only = cost.block_ctx_bytes(cfg, b, item, tp=t)
    sp = cost.block_ctx_bytes(cfg, b, item, tp=t, sequence_parallel=True)
    T, local = cfg.seq_len, tokens_per_rank(cfg.seq_len, t)        # 197, 99
    ln_tp = item * 2 * b * T * cfg.dim + 32 * b * T
    ln_sp = item * 2 * b * local * cfg.dim + 32 * b * local
    assert tp_only - sp == ln_tp - ln_sp
    assert ln_sp / ln_tp == pytest.approx(99 / 197)


def test_model_shard_sequence_parallel_activation_shape():
    cfg = get_config("vit-nano")
    grid = ProcessGrid(MPI.COMM_SELF, dp=1)
    assert ModelShard(cfg, 0, grid).activation_shape(5) == (5, 17, 32)
    grid.free()
    block = SequenceParallelBlock("blocks.1", cfg, 0, ShapeComm(2, 1))
    tp_block = TensorParallelBlock("blocks.1", cfg, 0, ShapeComm(2, 1))
    assert ([(p.name, p.data.shape) for p in block.parameters()]
            == [(p.name, p.data.shape) for p in tp_block.parameters()])
    for p, q in zip(block.parameters(), tp_block.parameters()):
        assert np.array_equal(p.data, q.data)


COMMON = ["--model", "vit-nano", "--data", "random", "--dtype", "float64", "--micro-batch", "2",
          "--global-batch", "8", "--warmup", "1", "--lr", "1e-2", "--random-samples", "32",
          "--threads", "1", "--no-progress", "--steps", "2"]


def _losses(out):
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["loss"], r["grad_norm"]) for r in rows if r.get("kind") == "train"]


def test_pretrain_sequence_parallel_audit_equals_one_process(run_mpi, tmp_path):
    """run/pretrain.py --tp 2 --sequence-parallel --audit: the float64 losses and norms
    of one process; every ledger line equals cost.py (all-gather, reduce-scatter, the
    LN all-reduces) and the measured contexts equal the SP closed form."""
    one = subprocess.run([sys.executable, PRETRAIN, *COMMON, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert one.returncode == 0, one.stderr[-3000:]
    proc = run_mpi(2, [PRETRAIN, *COMMON, "--tp", "2", "--sequence-parallel", "--audit",
                       "--out", tmp_path / "sp"], timeout=180)
    np.testing.assert_allclose(_losses(tmp_path / "sp"), _losses(tmp_path / "one"), rtol=1e-10)
    checks = [ln for ln in proc.stdout.splitlines() if "(cost.py tp/pp)" in ln]
    ops = {ln.split()[1] for ln in checks}
    assert {"allgather", "reduce_scatter", "allreduce"} <= ops, checks
    assert all(" OK " in ln for ln in checks), checks
    acts = [ln for ln in proc.stdout.splitlines() if ln.startswith("[audit] activations")]
    assert len(acts) == 2 and all(ln.endswith("OK") for ln in acts), acts
    assert "sequence parallel (T=17 -> T_loc=9 per rank)" in proc.stdout
