"""The planner's step-time and memory model (issue 15): machine files, the alpha-beta
ring model, the terms of plan_step against cost.py, strong scaling, plan.py --json."""
import json
import runpy
from pathlib import Path

import pytest

from minivit.config import get_config
from minivit.flops import forward_matmul_flops
from minivit.parallel import cost
from minivit.parallel.tools.plan_model import (Layout, Machine, collective_seconds,
                                               load_machine, parse_node_counts, plan_step,
                                               strong_scaling)

PLAN = runpy.run_path(str(Path(__file__).resolve().parents[2] / "run" / "plan.py"))
KEYS = {"params", "model_state_bytes_per_rank", "activation_bytes_per_rank",
        "peak_bytes_per_rank", "step_seconds", "comm_bytes_per_rank", "fits"}
TOY = Machine(name="toy", description="", peak_flops=1e12, efficiency=0.5,
              memory_bytes=2**30, link_bandwidth=1e9, latency=1e-5)


@pytest.mark.parametrize("name, peak", [("this-machine", 7.5e10), ("fugaku", 6.8e12),
                                        ("ib-cpu-cluster", 8.2e12)])
def test_shipped_machines_load(name, peak):
    m = load_machine(name)
    assert m.peak_flops == peak and 0 < m.efficiency <= 1 and m.link_bandwidth > 0


def test_fugaku_is_the_seed_reports_node():
    m = load_machine("fugaku")
    assert (m.peak_flops, m.memory_bytes, m.link_bandwidth) == (6.8e12, 32 * 2**30, 6.8e9)


def test_bad_machine_files(tmp_path):
    with pytest.raises(ValueError, match="no file"):
        load_machine("nowhere")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ndescription = ""\npeak_flops = 1.0\nefficiency = 0.5\n'
                   'memory_bytes = 1\nlink_bandwidth = 1.0\nlatency = 0.0\nspeed = 3\n')
    with pytest.raises(ValueError, match="unknown key 'speed'"):
        load_machine(bad)
    bad.write_text('name = "x"\ndescription = ""\npeak_flops = 1.0\nefficiency = 1.5\n'
                   'memory_bytes = 1\nlink_bandwidth = 1.0\nlatency = 0.0\n')
    with pytest.raises(ValueError, match="efficiency=1.5"):
        load_machine(bad)


def test_alpha_beta_ring():
    n = cost.allreduce_bytes(1000, 4, 4)
    assert collective_seconds("allreduce", n, 4, TOY) == pytest.approx(6e-5 + n / 1e9)
    assert collective_seconds("allgather", 300, 4, TOY, count=2) == pytest.approx(6e-5 + 3e-7)
    assert collective_seconds("allreduce", 0, 1, TOY) == 0.0
    assert collective_seconds("send", 1000, 1, TOY) == pytest.approx(1e-5 + 1e-6)
    with pytest.raises(ValueError, match="op='bcast'"):
        collective_seconds("bcast", 1, 2, TOY)


def test_one_rank_step_is_flops_over_rate():
    cfg = get_config("vit-nano")
    r = plan_step(Layout(model="vit-nano", nodes=1, dp=1, micro_batch=8, accum=3), TOY)
    assert KEYS <= set(r)
    assert r["step_seconds"] == pytest.approx(3 * 3 * forward_matmul_flops(cfg, 8) / 5e11)
    assert r["comm_bytes_per_rank"] == {"dp": 0, "tp": 0, "pp": 0}
    assert r["model_state_bytes_per_rank"] == 16 * sum(cost.vit_unit_sizes(cfg))
    assert r["activation_bytes_per_rank"] == cost.stage_activation_bytes(cfg, 8, 4, blocks=4)


def test_terms_follow_cost_py():
    cfg = get_config("vit-base")
    lay = Layout(model="vit-base", nodes=16, dp=4, tp=2, pp=2, zero=3, micro_batch=4,
                 accum=4, recompute=True)
    r = plan_step(lay, TOY)
    psi_rank = sum(cost.vit_unit_sizes(cfg)) / 4
    assert r["model_state_bytes_per_rank"] == int(cost.zero_memory_bytes(psi_rank, 4, 3)["total"])
    assert r["comm_bytes_per_rank"]["dp"] == int(cost.zero_comm_elements(psi_rank, 4, 3, 4) * 4)
    assert r["comm_bytes_per_rank"]["tp"] == cost.tp_step_bytes(4, 197, 768, 6, 4, 2, 4, True)
    assert r["activation_bytes_per_rank"] == cost.peak_activation_bytes(
        cfg, 4, 4, m=4, pp=2, tp=2, recompute=True)["total"]
    t = r["time"]
    assert r["step_seconds"] == pytest.approx(t["compute"] + t["dp"] + t["tp"] + t["pp"])
    zero1 = {**lay.__dict__, "zero": 1}     # --overlap runs with ZeRO 0-1 only (as pretrain.py)
    over = plan_step(Layout(**{**zero1, "overlap": True}), TOY)
    assert over["step_seconds"] <= plan_step(Layout(**zero1), TOY)["step_seconds"]
    assert r["fits"] == (r["peak_bytes_per_rank"] <= TOY.memory_bytes)


def test_sequence_parallel_terms():
    """--sequence-parallel: activations with the LN regions / tp (T_loc = 99 of 197 at
    tp 2), pp sends of (b, T_loc, h), the tp bytes of cost.sp_step_bytes; tp 1 refused."""
    cfg = get_config("vit-base")
    lay = Layout(model="vit-base", nodes=8, dp=2, tp=2, pp=2, micro_batch=4, accum=4)
    tp_only, sp = plan_step(lay, TOY), plan_step(Layout(**{**lay.__dict__,
                                                            "sequence_parallel": True}), TOY)
    assert sp["activation_bytes_per_rank"] == cost.peak_activation_bytes(
        cfg, 4, 4, m=4, pp=2, tp=2, sequence_parallel=True)["total"]
    per_block = (cost.block_ctx_bytes(cfg, 4, 4, tp=2)
                 - cost.block_ctx_bytes(cfg, 4, 4, tp=2, sequence_parallel=True))
    assert per_block == 4 * 2 * 4 * (197 - 99) * 768 + 32 * 4 * (197 - 99)
    assert tp_only["activation_bytes_per_rank"] - sp["activation_bytes_per_rank"] == \
        2 * 6 * per_block                       # 2 micro-batches in flight x 6 blocks
    assert sp["comm_bytes_per_rank"]["pp"] * 197 == tp_only["comm_bytes_per_rank"]["pp"] * 99
    assert sp["comm_bytes_per_rank"]["tp"] == sum(
        cost.sp_step_bytes(4, 197, 768, 6, 4, 2, 4, first=True).values())
    with pytest.raises(ValueError, match="tp=1: expected tp >= 2"):
        plan_step(Layout(model="vit-base", nodes=2, dp=2, sequence_parallel=True), TOY)


def test_strong_scaling_keeps_the_global_batch():
    rows = strong_scaling("vit-tiny", [1, 2, 4, 8], TOY, global_batch=64, micro_batch=8)
    assert [r["layout"]["accum"] for r in rows] == [8, 4, 2, 1]
    assert {r["global_batch"] for r in rows} == {64}
    assert rows[-1]["step_seconds"] < rows[0]["step_seconds"]
    with pytest.raises(ValueError, match="not a multiple"):
        strong_scaling("vit-tiny", [16], TOY, global_batch=64, micro_batch=8)


def test_plan_json_and_strong_scaling_cli(capsys, tmp_path):
    assert PLAN["main"](["--model", "vit-huge", "--nodes", "64", "--zero", "3", "--recompute",
                         "--micro-batch", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert KEYS <= set(out) and out["params"] == 632_045_800
    assert set(out["comm_bytes_per_rank"]) == {"dp", "tp", "pp"}
    png = tmp_path / "s.png"
    assert PLAN["main"](["--model", "vit-tiny", "--zero", "3", "--micro-batch", "2",
                         "--global-batch", "64", "--strong-scaling", "1,2,...,32",
                         "--plot", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [int(ln.split()[0]) for ln in lines[2:]] == [1, 2, 4, 8, 16, 32]
    assert png.stat().st_size > 1000
    assert PLAN["main"](["--model", "vit-tiny"]) == 2


def test_node_counts():
    assert parse_node_counts("1,2,...,1024") == [2 ** k for k in range(11)]
    assert parse_node_counts("3,6,...,40") == [3, 6, 12, 24]
    assert parse_node_counts("1, 5, 7") == [1, 5, 7]
    with pytest.raises(ValueError, match="expected integers"):
        parse_node_counts("1,two")
    with pytest.raises(ValueError, match="positive"):
        parse_node_counts("0,1")


def test_zb_h1_bubble_and_activations():
    """--schedule zb-h1: compute stretched by (3m + p - 1)/(3m) (Qi et al. 2024, section
    3.1, equal F, B and W) instead of 1F1B's (m + p - 1)/m, with 1F1B's stage-0 peak of
    p micro-batches in flight; fewer micro-batches than stages is refused."""
    base = dict(model="vit-huge", nodes=16, dp=1, pp=16, micro_batch=2, accum=32)
    one = plan_step(Layout(**base, schedule="1f1b"), TOY)
    zb = plan_step(Layout(**base, schedule="zb-h1"), TOY)
    p, m = 16, 32
    bare = one["time"]["compute"] * m / (m + p - 1)
    assert zb["time"]["compute"] == pytest.approx(bare * (3 * m + p - 1) / (3 * m))
    assert zb["memory"]["activations"] == one["memory"]["activations"]
    assert zb["comm_bytes_per_rank"]["pp"] == one["comm_bytes_per_rank"]["pp"]
    with pytest.raises(ValueError, match="ZB-H1 with accum=8 micro-batches on pp=16"):
        plan_step(Layout(**{**base, "accum": 8}, schedule="zb-h1"), TOY)


def test_interleaved_bubble_p2p_and_activations():
    """--schedule interleaved --virtual-stages v: compute stretched by (v m + p - 1)/(v m)
    instead of (m + p - 1)/m, v x the pp bytes of a middle stage, and stage 0 keeping
    v p + p - 1 chunk contexts: (1 + (p - 1)/(p v)) x 1F1B's p stages' worth."""
    base = dict(model="vit-huge", nodes=16, dp=1, pp=16, micro_batch=2, accum=32)
    one = plan_step(Layout(**base, schedule="1f1b"), TOY)
    two = plan_step(Layout(**base, schedule="interleaved", virtual_stages=2), TOY)
    p, m, v = 16, 32, 2
    bare = one["time"]["compute"] * m / (m + p - 1)
    assert two["time"]["compute"] == pytest.approx(bare * (v * m + p - 1) / (v * m))
    assert two["comm_bytes_per_rank"]["pp"] == v * one["comm_bytes_per_rank"]["pp"]
    act1, act2 = one["memory"]["activations"], two["memory"]["activations"]
    assert act2["in_flight"] == v * p + p - 1 == cost.micro_batches_in_flight(
        "interleaved", m, p, 0, v)
    lay = dict(model="vit-large", nodes=4, dp=1, pp=4, micro_batch=2, accum=8)
    a1 = plan_step(Layout(**lay), TOY)["memory"]["activations"]
    a2 = plan_step(Layout(**lay, schedule="interleaved", virtual_stages=2),
                   TOY)["memory"]["activations"]
    # blocks dominate: the ratio is the closed form up to the embedding's share
    assert a2["contexts"] / a1["contexts"] == pytest.approx(1 + 3 / 8, rel=0.01)
    assert a2["contexts"] > a1["contexts"]
    for bad, match in (({"accum": 6}, "interleaved 1F1B with 6 micro-batches on pp=4"),
                       ({"virtual_stages": 5},
                        "--pp 4 x --virtual-stages 5 = 20 virtual stages: expected a divisor"),
                       ({"virtual_stages": 1},
                        r"--virtual-stages 1 with --schedule interleaved: expected an integer >= 2")):
        with pytest.raises(ValueError, match=match):
            plan_step(Layout(**{**lay, "schedule": "interleaved", "virtual_stages": 2, **bad}),
                      TOY)
    with pytest.raises(ValueError, match="--virtual-stages 2 with --schedule 1f1b"):
        plan_step(Layout(**lay, virtual_stages=2), TOY)


def test_selective_recompute_terms():
    """Selective: activations by cost.py's selective form, no extra all-reduces, and
    compute plus the rebuilt scores Q K^T (2 b T^2 D / tp per block and micro-batch)."""
    cfg = get_config("vit-base")
    base = dict(model="vit-base", nodes=4, dp=1, tp=2, pp=2, micro_batch=4, accum=4)
    plain, sel = (plan_step(Layout(**base, recompute=r), TOY) for r in (False, "selective"))
    assert sel["activation_bytes_per_rank"] == cost.peak_activation_bytes(
        cfg, 4, 4, m=4, pp=2, tp=2, recompute="selective")["total"]
    assert sel["activation_bytes_per_rank"] < plain["activation_bytes_per_rank"]
    assert sel["comm_bytes_per_rank"] == plain["comm_bytes_per_rank"]
    extra = 6 * 2 * 4 * 197 ** 2 * 768 / 2 * 4          # 6 blocks on stage 0, m = 4
    rate = TOY.peak_flops * TOY.efficiency
    bubble = (4 + 2 - 1) / 4                           # 1F1B at pp 2, m 4
    assert sel["time"]["compute"] - plain["time"]["compute"] == \
        pytest.approx(extra / rate * bubble, rel=1e-9)
    # the job's executed FLOPs count the rebuilt scores of all 12 blocks, as a full
    # recompute's extra forward is counted (the throughput line compares like with like)
    assert sel["flops_per_step"] - plain["flops_per_step"] == 12 * 2 * 4 * 197 ** 2 * 768 * 4


def test_decay_mask_term_is_one_byte_per_parameter():
    """memory.decay_mask: the bool mask (1 byte per element, any dtype), full at
    stages 0-2 and its shard at 1-3; one rank's term equals a built model's bytes."""
    assert [cost.decay_mask_bytes(800, 100, z) for z in range(4)] == [800, 900, 900, 100]
    with pytest.raises(ValueError, match="stage=4"):
        cost.decay_mask_bytes(800, 100, 4)
    psi = sum(cost.vit_unit_sizes(get_config("vit-giant")))
    for zero in range(4):
        for dtype in ("float32", "float64"):
            r = plan_step(Layout(model="vit-giant", nodes=8, dp=8, zero=zero, dtype=dtype), TOY)
            assert r["memory"]["decay_mask"] == int(cost.decay_mask_bytes(psi, psi / 8, zero))
    zero3 = plan_step(Layout(model="vit-giant", nodes=8, dp=8, zero=3), TOY)
    assert zero3["memory"]["decay_mask"] == psi // 8 == 126_576_429    # was 4 Psi / 8
    from minivit.model import ViT
    for dtype in ("float32", "float64"):
        flat = ViT(get_config("vit-nano", dtype=dtype)).flat
        r = plan_step(Layout(model="vit-nano", nodes=1, dp=1, dtype=dtype), TOY)
        assert r["memory"]["decay_mask"] == flat.decay_mask.nbytes == flat.numel
        # the old closed form (model-dtype itemsize per parameter) no longer matches
        assert flat.data.itemsize * flat.numel != flat.decay_mask.nbytes
