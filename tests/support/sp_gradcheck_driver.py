"""MPI driver (2 ranks, float64) for tests/parallel/test_sequence_parallel.py:
the sequence-parallel ops' backward checked where only a real tp group can check it.

    mpirun -n 2 python tests/support/sp_gradcheck_driver.py

1. Adjoint identities, ``<op(x), y> = <x, op^T(y)>`` summed over the tp ranks as the
   loss is (once where a value is replicated), for ``g``, ``g-bar`` and the two
   region boundaries, at T = 17 over t = 2 (padded to 18): a linear op's backward is
   right exactly when this holds.
2. Central finite differences of a ``SequenceParallelBlock`` (loss ``sum_r <block(x_r),
   w_r>``, ``w`` zero on the padding token, as the model's loss never reads it) against
   its backward: the input, a LayerNorm weight and bias (replicated;
   their gradient is the tp-reduced one), a column- and a row-parallel weight shard.
3. The deliberately wrong variant, the LayerNorm gradients left unreduced over tp,
   must fail the same check.
Rank 0 prints one ``OK ...`` line per check; any failure raises (the guard ends all ranks).
"""
import numpy as np
from mpi4py import MPI

from minivit.config import get_config
from minivit.parallel.grid import ProcessGrid
from minivit.parallel.runtime.guard import install_guard
from minivit.parallel.sequence_parallel import (EnterSequenceParallel, LeaveSequenceParallel,
                                                SequenceParallelBlock, tokens_per_rank)
from minivit.parallel.tensor_parallel import (GatherFromSequenceParallel,
                                              ReduceScatterToSequenceParallel)

CFG = get_config("vit-nano", dtype="float64")     # T = 17 tokens, D = 32
B, EPS = 2, 1e-6


def total(comm, value, replicated=False):
    """The loss's sum over tp ranks; a replicated value is counted once."""
    return value if replicated else float(comm.allreduce(np.array([value]))[0])


def check_adjoints(comm):
    t, d = CFG.seq_len, CFG.dim
    loc = tokens_per_rank(t, comm.size)
    rng = np.random.default_rng(1 + comm.rank)
    same = np.random.default_rng(0)          # replicated values: equal on every rank
    cases = [("g all-gather", GatherFromSequenceParallel(comm, t), (B, loc, d), (B, t, d),
              False, False),
             ("g-bar reduce-scatter", ReduceScatterToSequenceParallel(comm, t), (B, t, d),
              (B, loc, d), False, False),
             ("enter", EnterSequenceParallel(comm, t), (B, t, d), (B, loc, d), True, False),
             ("leave", LeaveSequenceParallel(comm, t), (B, loc, d), (B, t, d), False, True)]
    worst = 0.0
    for name, op, xs, ys, rep_in, rep_out in cases:
        x = (same if rep_in else rng).standard_normal(xs)
        y = (same if rep_out else rng).standard_normal(ys)
        fx, ctx = op.forward(x)
        lhs = total(comm, float(np.sum(fx * y)), rep_out)
        rhs = total(comm, float(np.sum(x * op.backward(y, ctx))), rep_in)
        err = abs(lhs - rhs) / abs(lhs)
        if not err < 1e-12:
            raise AssertionError(f"{name}: <op(x), y> = {lhs} != <x, op^T y> = {rhs}")
        worst = max(worst, err)
    return (f"adjoint identities of g, g-bar, enter, leave (T=17, t=2, T_loc={loc}): "
            f"max rel err {worst:.1e}")


def block_loss(block, x, w, comm):
    y, _ = block.forward(x)
    return total(comm, float(np.sum(y * w)))


def directional(block, x, w, comm, target, v):
    """Central difference of the loss along ``v`` (in place on ``target``) and the
    backward's ``<grad, v>``; replicated targets are perturbed alike on every rank."""
    target += EPS * v
    up = block_loss(block, x, w, comm)
    target -= 2 * EPS * v
    down = block_loss(block, x, w, comm)
    target += EPS * v
    return (up - down) / (2 * EPS)


def check_block(comm, reduce_grads=True):
    loc = tokens_per_rank(CFG.seq_len, comm.size)
    block = SequenceParallelBlock("blocks.0", CFG, 5, comm)
    block.norm1.reduce_grads = block.norm2.reduce_grads = reduce_grads
    rng, same = np.random.default_rng(2 + comm.rank), np.random.default_rng(3)
    for prm in (block.norm1.weight, block.norm2.bias):      # away from ones / zeros
        prm.data += 0.1 * same.standard_normal(prm.data.shape)
    x = rng.standard_normal((B, loc, CFG.dim))
    w = rng.standard_normal((B, loc, CFG.dim))
    w[:, max(0, CFG.seq_len - comm.rank * loc):] = 0.0   # the loss never reads padding
    y, ctx = block.forward(x)
    dx = block.backward(w, ctx)
    targets = [("input", x, dx, False), ("norm1.weight", block.norm1.weight.data,
               block.norm1.weight.grad, True), ("norm2.bias", block.norm2.bias.data,
               block.norm2.bias.grad, True), ("qkv.weight shard", block.attn.qkv.weight.data,
               block.attn.qkv.weight.grad, False), ("fc2.weight shard",
               block.mlp.fc2.weight.data, block.mlp.fc2.weight.grad, False),
               ("proj.bias", block.attn.proj.bias.data, block.attn.proj.bias.grad, True)]
    errors = {}
    for name, target, grad, replicated in targets:
        v = (same if replicated else rng).standard_normal(target.shape)
        numeric = directional(block, x, w, comm, target, v)
        analytic = total(comm, float(np.sum(grad * v)), replicated)
        errors[name] = abs(numeric - analytic) / max(abs(numeric), 1e-300)
    return errors


def main():
    world = MPI.COMM_WORLD
    install_guard(world)
    grid = ProcessGrid(world, dp=1, tp=world.Get_size(), pp=1)
    comm = grid.tp_group
    lines = [check_adjoints(comm)]
    errors = check_block(comm)
    if not max(errors.values()) < 1e-6:
        raise AssertionError(f"finite differences disagree with the backward: {errors}")
    lines.append("finite differences of SequenceParallelBlock: " + ", ".join(
        f"{k} {v:.1e}" for k, v in errors.items()))
    wrong = check_block(comm, reduce_grads=False)
    if not (wrong["norm1.weight"] > 1e-3 and wrong["norm2.bias"] > 1e-3):
        raise AssertionError(f"unreduced LayerNorm gradients passed the check: {wrong}")
    lines.append(f"wrong gradient caught: LN gradients unreduced over tp give rel err "
                 f"norm1.weight {wrong['norm1.weight']:.1e}, norm2.bias {wrong['norm2.bias']:.1e}")
    if grid.rank == 0:
        print("\n".join("OK " + ln for ln in lines), flush=True)
    grid.free()


if __name__ == "__main__":
    main()
