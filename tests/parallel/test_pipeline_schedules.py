"""The pipeline schedules as pure lists: executable without deadlock, and their
bubble equal to the closed forms of ``pipeline.bubble_fraction``.

A discrete-event run of the op lists (each stage runs its list in order; F of
micro-batch i on stage s waits for F on s-1, B waits for its own F and for B on
s+1, W waits for its B) gives the step's span, hence the idle share, exactly.
"""
import pytest

from minivit.parallel.pipeline import bubble_fraction, check_schedule, schedule_order
from minivit.parallel.runtime.config import PretrainConfig


def simulate(schedule, p, m, t_f=1.0, t_b=1.0, t_w=1.0):
    """``(bubble fraction, max micro-batches in flight per stage)``; AssertionError on
    a deadlock or a broken per-micro-batch order."""
    split = schedule == "zb-h1"
    cost = {"F": t_f, "B": t_b if split else t_b + t_w, "W": t_w}
    orders = [schedule_order(schedule, m, p, s) for s in range(p)]
    done, pos, clock, busy = {}, [0] * p, [0.0] * p, [0.0] * p
    in_flight, peak = [set() for _ in range(p)], [0] * p
    progress = True
    while progress:
        progress = False
        for s in range(p):
            while pos[s] < len(orders[s]):
                kind, i = orders[s][pos[s]]
                deps = {"F": [("F", s - 1, i)] if s > 0 else [],
                        "B": [("F", s, i)] + ([("B", s + 1, i)] if s < p - 1 else []),
                        "W": [("B", s, i)]}[kind]
                if not all(d in done for d in deps):
                    break
                start = max([clock[s]] + [done[d] for d in deps])
                clock[s] = start + cost[kind]
                busy[s] += cost[kind]
                done[(kind, s, i)] = clock[s]
                pos[s] += 1
                progress = True
                if kind == "F":
                    in_flight[s].add(i)
                    peak[s] = max(peak[s], len(in_flight[s]))
                elif kind == ("W" if split else "B"):
                    in_flight[s].discard(i)
    assert all(pos[s] == len(orders[s]) for s in range(p)), f"{schedule} deadlocks"
    return 1 - sum(busy) / p / max(clock), peak


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b", "zb-h1"])
@pytest.mark.parametrize("p, m", [(2, 2), (2, 5), (3, 7), (4, 4), (4, 8), (5, 6)])
def test_schedule_runs_and_its_bubble_is_the_closed_form(schedule, p, m):
    for s in range(p):
        ops = schedule_order(schedule, m, p, s)
        kinds = "FBW" if schedule == "zb-h1" else "FB"
        assert sorted(ops) == sorted((k, i) for k in kinds for i in range(m))
    bubble, peak = simulate(schedule, p, m)
    assert bubble == pytest.approx(bubble_fraction(schedule, p, m), abs=1e-12)
    if schedule == "1f1b":
        assert peak == [min(p - s, m) for s in range(p)]
    if schedule == "zb-h1":
        assert max(peak) <= p                                 # 1F1B's peak: pM_B


def test_zb_h1_bubble_with_unequal_costs_and_against_1f1b():
    # Qi et al. 2024 section 3.1: (p-1)(T_F+T_B-T_W) idle instead of (p-1)(T_F+T_B+T_W)
    bubble, _ = simulate("zb-h1", 4, 8, t_f=1.0, t_b=1.3, t_w=0.8)
    assert bubble == pytest.approx(bubble_fraction("zb-h1", 4, 8, 1.0, 1.3, 0.8), abs=1e-12)
    assert bubble_fraction("zb-h1", 4, 8) == pytest.approx(3 / 27)
    assert bubble_fraction("1f1b", 4, 8) == pytest.approx(3 / 11)
    # a wrong formula is caught: the ZB-H1 run is not 1F1B's bubble
    assert simulate("zb-h1", 4, 8)[0] != pytest.approx(bubble_fraction("1f1b", 4, 8))


def test_zb_h1_requirements_are_clear_errors():
    with pytest.raises(ValueError, match="ZB-H1 with 3 micro-batches on pp=4 stages"):
        check_schedule("zb-h1", 3, 4)
    for fields, match in (({"zero": 2}, "--schedule zb-h1 with --zero 2"),
                          ({"zero": 3}, "--schedule zb-h1 with --zero 3"),
                          ({"overlap": True}, "--overlap")):
        with pytest.raises(ValueError, match=match):
            PretrainConfig(model="vit-nano", data="random", pp=2, schedule="zb-h1",
                           global_batch=32, **fields).validate(2)
    cfg = PretrainConfig(model="vit-nano", data="random", pp=2, schedule="zb-h1", zero=1,
                         global_batch=64, micro_batch=16).validate(4)
    assert (cfg.dp, cfg.accum) == (2, 2)
