"""The pipeline schedules as pure lists: executable without deadlock, and their
bubble equal to the closed forms of ``pipeline.bubble_fraction``.

A discrete-event run of the op lists (each stage runs its list in order; F of
micro-batch i on stage s waits for F on s-1, B waits for its own F and for B on
s+1, W waits for its B) gives the step's span, hence the idle share, exactly.
"""
import re

import pytest

from minivit.parallel import cost
from minivit.parallel.pipeline import (bubble_fraction, check_schedule, in_flight_peak,
                                       interleaved_order, pipeline_ops, schedule_order)
from minivit.parallel.runtime.config import PretrainConfig


def simulate(schedule, p, m, t_f=1.0, t_b=1.0, t_w=1.0, v=1, orders=None):
    """``(bubble fraction, max contexts in flight per stage)``; AssertionError on
    a deadlock or a broken per-micro-batch order.

    Works on virtual stages: chunk ``c`` of stage ``s`` is ``c p + s``, and F on
    virtual stage k waits for F on k - 1, B for its own F and B on k + 1 (that is
    the blocking receive of ``Pipeline``: sends never block).  An op of a chunk
    costs ``1/v`` of the stage's.  orders : op lists to run instead of the
    schedule's (a deliberately broken one)."""
    split = schedule == "zb-h1"
    cost = {"F": t_f / v, "B": (t_b if split else t_b + t_w) / v, "W": t_w / v}
    orders = orders or [pipeline_ops(schedule, m, p, s, v) for s in range(p)]
    n = p * v
    done, pos, clock, busy = {}, [0] * p, [0.0] * p, [0.0] * p
    in_flight, peak = [set() for _ in range(p)], [0] * p
    progress = True
    while progress:
        progress = False
        for s in range(p):
            while pos[s] < len(orders[s]):
                kind, i, c = orders[s][pos[s]]
                k = c * p + s
                deps = {"F": [("F", k - 1, i)] if k > 0 else [],
                        "B": [("F", k, i)] + ([("B", k + 1, i)] if k < n - 1 else []),
                        "W": [("B", k, i)]}[kind]
                if not all(d in done for d in deps):
                    break
                start = max([clock[s]] + [done[d] for d in deps])
                clock[s] = start + cost[kind]
                busy[s] += cost[kind]
                done[(kind, k, i)] = clock[s]
                pos[s] += 1
                progress = True
                if kind == "F":
                    in_flight[s].add((i, c))
                    peak[s] = max(peak[s], len(in_flight[s]))
                elif kind == ("W" if split else "B"):
                    in_flight[s].discard((i, c))
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


# ------------------------------------------------ interleaved 1F1B (virtual stages)
@pytest.mark.parametrize("p, m, v", [(2, 2, 2), (2, 4, 2), (2, 6, 4), (3, 3, 3), (3, 6, 2),
                                     (4, 4, 2), (4, 8, 2), (4, 8, 3), (5, 10, 2)])
def test_interleaved_runs_and_its_bubble_is_the_closed_form(p, m, v):
    for s in range(p):
        ops = interleaved_order(m, p, s, v)
        # every (micro-batch, chunk) forward and backward once, each F before its B
        assert sorted(ops) == sorted((k, i, c) for k in "FB" for i in range(m)
                                     for c in range(v))
        assert all(ops.index(("F", i, c)) < ops.index(("B", i, c))
                   for i in range(m) for c in range(v))
        # Megatron's warm-up: (p - s - 1) 2 + (v - 1) p forwards, at most m v
        warmup = min(2 * (p - s - 1) + (v - 1) * p, m * v)
        assert [k for k, _, _ in ops[:warmup]] == ["F"] * warmup
        if warmup < m * v:          # then the steady state: one F, one B
            assert (ops[warmup][0], ops[warmup + 1][0]) == ("F", "B")
    bubble, peak = simulate("interleaved", p, m, v=v)
    # Narayanan et al. 2021 section 2.2.2: bubble time (p-1)(t_f+t_b)/v
    assert bubble == pytest.approx((p - 1) / (v * m + p - 1), abs=1e-12)
    assert bubble == pytest.approx(bubble_fraction("interleaved", p, m, v=v), abs=1e-12)
    # unequal forward and backward costs: the same share (B = 2 F, the usual ratio)
    assert simulate("interleaved", p, m, 1.0, 2.0, 0.0, v=v)[0] == pytest.approx(bubble)
    assert peak == [cost.micro_batches_in_flight("interleaved", m, p, s, v) for s in range(p)]
    assert peak == [in_flight_peak(interleaved_order(m, p, s, v))[0] for s in range(p)]


def test_interleaved_beats_1f1b_and_a_wrong_order_is_caught():
    # the acceptance point: p = 4, m = 8, v = 2 -> 3/19 = 15.8% against 3/11 = 27.3%
    assert bubble_fraction("interleaved", 4, 8, v=2) == pytest.approx(3 / 19)
    assert simulate("interleaved", 4, 8, v=2)[0] < simulate("1f1b", 4, 8)[0]
    # stage 0 keeps v p + p - 1 chunk contexts: (1 + (p-1)/(p v)) x 1F1B's p stages' worth
    assert cost.micro_batches_in_flight("interleaved", 8, 4, 0, 2) == 11
    # chunks in the forward order instead of reversed in the backward: stage 0's first
    # backward waits for chunk 0's gradient, which needs chunk 1's backward first
    wrong = [[(k, i, c if k == "F" else 1 - c) for k, i, c in interleaved_order(8, 4, s, 2)]
             for s in range(4)]
    with pytest.raises(AssertionError, match="deadlocks"):
        simulate("interleaved", 4, 8, v=2, orders=wrong)
    # the 1F1B warm-up (p - s - 1) with interleaved chunks deadlocks too: the warm-up of
    # (v - 1) p forwards is what lets the last chunk's first backward start
    short = []
    for s in range(4):
        ops = interleaved_order(8, 4, s, 2)
        f = [op for op in ops if op[0] == "F"]
        b = [op for op in ops if op[0] == "B"]
        w = 4 - s - 1
        short.append(f[:w] + [x for pair in zip(f[w:], b) for x in pair] + b[len(f) - w:])
    with pytest.raises(AssertionError, match="deadlocks"):
        simulate("interleaved", 4, 8, v=2, orders=short)


def test_interleaved_requirements_are_clear_errors():
    for args, match in (((6, 4, 2), "interleaved 1F1B with 6 micro-batches on pp=4 stages: "
                                    "expected a positive multiple of pp"),
                        ((4, 4, 1), "--virtual-stages 1 with --schedule interleaved: expected an "
                                    "integer >= 2 model chunks per stage (--virtual-stages "
                                    "defaults to 1"),
                        ((4, 1, 2), "--schedule interleaved with --pp 1: expected --pp >= 2")):
        with pytest.raises(ValueError, match=re.escape(match)):
            check_schedule("interleaved", *args)
    with pytest.raises(ValueError, match="--virtual-stages 2 with --schedule 1f1b: expected 1"):
        check_schedule("1f1b", 4, 2, 2)
    for fields, world, match in (
            ({"pp": 2, "global_batch": 48, "micro_batch": 16}, 2,
             "--schedule interleaved --pp 2: interleaved 1F1B with 3 micro-batches"),
            ({"pp": 2, "virtual_stages": 3, "global_batch": 64}, 2,
             "--pp 2 --virtual-stages 3: the model has depth=4 blocks; expected pp x "
             "virtual stages = 6 <= depth"),
            ({"pp": 1, "virtual_stages": 2}, 1,
             "--virtual-stages 2 with --pp 1: expected --pp > 1 (chunks"),
            ({"pp": 1, "virtual_stages": 2, "schedule": "1f1b"}, 1,
             "--virtual-stages 2 with --pp 1: expected --pp > 1 and --schedule interleaved"),
            ({"pp": 2, "virtual_stages": 0}, 2, "--virtual-stages 0: expected >= 1")):
        with pytest.raises(ValueError, match=re.escape(match)):
            PretrainConfig(model="vit-nano", data="random",
                           **{"schedule": "interleaved", "virtual_stages": 2,
                              **fields}).validate(world)
    cfg = PretrainConfig(model="vit-nano", data="random", pp=2, schedule="interleaved",
                         virtual_stages=2, global_batch=64, micro_batch=16).validate(2)
    assert (cfg.accum, cfg.virtual_stages) == (4, 2)
