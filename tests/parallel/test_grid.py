"""ProcessGrid: Megatron rank order, group membership, pipeline neighbours,
and an identical error on every rank (before any collective) for a bad layout.

Run by pytest; ``python tests/parallel/test_grid.py MODE ...`` is the per-rank driver
that ``run_mpi`` launches.
"""
import json
import sys

import pytest

from minivit.parallel.grid import grid_coords, grid_rank, validate_layout


def test_coords_follow_megatron_order():
    # world 8 = tp 2 x dp 2 x pp 2: tp fastest, then dp, then pp.
    coords = [grid_coords(r, dp=2, tp=2, pp=2) for r in range(8)]
    assert coords == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0),
                      (0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1)]
    for rank in range(24):
        t, d, p = grid_coords(rank, dp=3, tp=2, pp=4)
        assert grid_rank(t, d, p, dp=3, tp=2) == rank


@pytest.mark.parametrize("sizes, message", [
    ((3, 1, 1, 4), "dp=3 x tp=1 x pp=1 = 3 ranks, but the world has 4"),
    ((0, 1, 1, 4), "dp=0: expected a positive integer"),
    ((2, 2.0, 1, 4), "tp=2.0: expected a positive integer"),
])
def test_validate_layout_errors(sizes, message):
    dp, tp, pp, world = sizes
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        validate_layout(world, dp, tp, pp)


def test_grid_membership_8_ranks(run_mpi):
    proc = run_mpi(8, [__file__, "groups"], timeout=120)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 8
    by_rank = {row["rank"]: row for row in rows}
    expected_tp = {0: [0, 1], 2: [2, 3], 4: [4, 5], 6: [6, 7]}
    expected_dp = {0: [0, 2], 1: [1, 3], 4: [4, 6], 5: [5, 7]}
    expected_pp = {0: [0, 4], 1: [1, 5], 2: [2, 6], 3: [3, 7]}
    for rank, row in by_rank.items():
        tp, dp, pp = row["coords"]
        assert (tp, dp, pp) == grid_coords(rank, dp=2, tp=2, pp=2)
        assert row["tp_members"] == expected_tp[rank - tp]
        assert row["dp_members"] == expected_dp[rank - 2 * dp]
        assert row["pp_members"] == expected_pp[rank - 4 * pp]
        # the rank inside each group equals the grid coordinate
        assert row["group_ranks"] == [tp, dp, pp]
        assert row["first"] == (pp == 0) and row["last"] == (pp == 1)
        assert row["prev"] == (None if pp == 0 else rank - 4)
        assert row["next"] == (None if pp == 1 else rank + 4)


def test_bad_layout_same_error_on_every_rank(run_mpi):
    proc = run_mpi(3, [__file__, "bad"], timeout=60)
    errors = [line for line in proc.stdout.splitlines() if "ValueError" in line]
    assert len(errors) == 3
    assert len(set(errors)) == 1
    assert "dp=2 x tp=1 x pp=1 = 2 ranks, but the world has 3 ranks" in errors[0]


def _driver(mode):
    from mpi4py import MPI
    from minivit.parallel.grid import ProcessGrid
    world = MPI.COMM_WORLD
    if mode == "bad":
        try:
            ProcessGrid(world, dp=2)
        except ValueError as exc:
            message = f"ValueError: {exc}"
        else:
            message = "no error raised"
        messages = world.gather(message)
        if world.Get_rank() == 0:
            print("\n".join(messages), flush=True)
        return
    grid = ProcessGrid(world, dp=2, tp=2, pp=2)
    members = {name: comm.comm.allgather(grid.rank) for name, comm in
               (("tp", grid.tp_group), ("dp", grid.dp_group), ("pp", grid.pp_group))}
    row = {"rank": grid.rank, "coords": [grid.tp_rank, grid.dp_rank, grid.pp_rank],
           "tp_members": members["tp"], "dp_members": members["dp"],
           "pp_members": members["pp"],
           "group_ranks": [grid.tp_group.rank, grid.dp_group.rank, grid.pp_group.rank],
           "first": grid.is_first_stage, "last": grid.is_last_stage,
           "prev": grid.prev_stage, "next": grid.next_stage}
    # rank 0 prints everything: lines from several ranks may interleave
    rows = world.gather(row)
    if grid.rank == 0:
        print("\n".join(json.dumps(r) for r in rows), flush=True)
    grid.free()


if __name__ == "__main__":
    _driver(sys.argv[1])
