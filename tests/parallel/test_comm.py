"""Instrumented communicator: results of every op, ledger bytes per the
ring accounting of cost.py, non-contiguous buffers rejected.

``python tests/parallel/test_comm.py`` is the per-rank driver launched by ``run_mpi``.
"""
import sys

import numpy as np
import pytest
from mpi4py import MPI

from minivit.parallel import cost
from minivit.parallel.comm import Communicator, Ledger


def _self_comm():
    return Communicator(MPI.COMM_SELF, "self", Ledger())


def test_non_contiguous_view_is_rejected():
    comm = _self_comm()
    view = np.zeros((4, 6))[:, ::2]
    with pytest.raises(ValueError, match="non-contiguous array"):
        comm.allreduce(view)
    with pytest.raises(ValueError, match="non-contiguous"):
        comm.allgather(view, np.zeros(12))
    with pytest.raises(TypeError, match="expected a numpy.ndarray"):
        comm.broadcast([1.0, 2.0])
    assert comm.ledger.entries == []          # rejected before any work


def test_read_only_receive_buffer_is_rejected():
    buf = np.zeros(3)
    buf.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _self_comm().allreduce(buf)


def test_block_size_mismatch_is_rejected():
    comm = _self_comm()
    with pytest.raises(ValueError, match="expected full == group size 1 x block"):
        comm.reduce_scatter(np.zeros(4), np.zeros(3))
    with pytest.raises(ValueError, match="dtypes differ"):
        comm.allgather(np.zeros(2, np.float32), np.zeros(2))
    with pytest.raises(ValueError, match="op='prod'"):
        comm.allreduce(np.zeros(2), op="prod")


def test_ledger_summary_and_marks():
    ledger = Ledger()
    ledger.record("allreduce", "dp", 100, 0.5)
    mark = ledger.mark()
    ledger.record("allreduce", "dp", 40, 0.25)
    ledger.record("allgather", "dp", 8, 0.0)
    assert ledger.total_bytes() == 148
    assert ledger.total_bytes(since=mark) == 48
    assert ledger.total_bytes(op="allreduce") == 140
    assert ledger.summary(since=mark) == {
        ("allreduce", "dp"): {"count": 1, "bytes": 40, "seconds": 0.25},
        ("allgather", "dp"): {"count": 1, "bytes": 8, "seconds": 0.0}}


def test_single_rank_collectives_send_nothing():
    comm = _self_comm()
    buf = np.arange(5.0)
    comm.allreduce(buf)
    out = comm.allgather(np.arange(3.0), np.zeros(3))
    np.testing.assert_array_equal(buf, np.arange(5.0))
    np.testing.assert_array_equal(out, np.arange(3.0))
    assert comm.ledger.total_bytes() == 0 and len(comm.ledger.entries) == 2


def test_collectives_on_3_ranks(run_mpi):
    proc = run_mpi(3, [__file__], timeout=120)
    assert proc.stdout.count("comm driver OK") == 3, proc.stdout


def _driver():
    from minivit.parallel.runtime.guard import install_guard
    world = MPI.COMM_WORLD
    install_guard(world)          # a failed assert on one rank must not hang the others
    ledger = Ledger()
    comm = Communicator(world, "world", ledger)
    r, p = comm.rank, comm.size

    buf = np.full(7, r + 1.0)                          # 7 elements: not divisible by 3
    comm.allreduce(buf)
    assert np.all(buf == p * (p + 1) / 2)
    assert ledger.entries[-1].bytes == cost.allreduce_bytes(7, p, 8) == 2 * 2 * 3 * 8

    mx = comm.allreduce(np.array([float(r)], np.float32), op="max")
    assert mx[0] == p - 1 and ledger.entries[-1].bytes == 2 * (p - 1) * 1 * 4

    send = np.arange(p * 4, dtype=np.float64) * (r + 1)
    recv = comm.reduce_scatter(send, np.empty(4))
    total = sum(k + 1 for k in range(p))
    np.testing.assert_array_equal(recv, np.arange(r * 4, r * 4 + 4) * total)
    assert ledger.entries[-1].bytes == (p - 1) * 4 * 8

    gathered = comm.allgather(np.full(2, float(r)), np.empty(2 * p))
    np.testing.assert_array_equal(gathered, np.repeat(np.arange(p, dtype=float), 2))
    assert ledger.entries[-1][:3] == ("allgather", "world", (p - 1) * 2 * 8)

    b = np.arange(5.0) if r == 1 else np.zeros(5)
    comm.broadcast(b, root=1)
    np.testing.assert_array_equal(b, np.arange(5.0))

    req = comm.iallreduce(np.ones(6))
    req.wait()
    assert ledger.entries[-1].op == "allreduce" and req.done

    # ring of non-blocking point-to-point messages
    out = np.full(3, float(r))
    inbox = np.empty(3)
    reqs = [comm.irecv(inbox, (r - 1) % p), comm.isend(out, (r + 1) % p)]
    from minivit.parallel.comm import Request
    Request.wait_all(reqs)
    assert np.all(inbox == (r - 1) % p)
    if r == 0:
        comm.send(np.array([42.0]), 1)
    elif r == 1:
        got = comm.recv(np.empty(1), 0)
        assert got[0] == 42.0
    sent = [e for e in ledger.entries if e.op == "send"]
    assert sent[0].bytes == 24 and all(e.bytes == 0 for e in ledger.entries if e.op == "recv")

    try:
        comm.allreduce(np.zeros((3, 4))[:, 1])
    except ValueError:
        pass
    else:
        raise AssertionError("strided view accepted")
    comm.barrier()
    print(f"comm driver OK rank {r}", flush=True)


if __name__ == "__main__":
    _driver()
