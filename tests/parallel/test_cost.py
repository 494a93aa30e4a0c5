"""cost.py: closed forms of the ZeRO paper, and the padding-exact variants
reduce to them when p divides every unit."""
import pytest

from minivit.config import get_config
from minivit.parallel import cost


def test_vit_base_parameter_count_matches_timm():
    # timm vit_base_patch16_224: 86,567,656 parameters (published model card)
    assert sum(cost.vit_unit_sizes(get_config("vit-base"))) == 86_567_656
    # DeiT-tiny / vit_tiny_patch16_224: 5,717,416
    assert sum(cost.vit_unit_sizes(get_config("vit-tiny"))) == 5_717_416


@pytest.mark.parametrize("p", [1, 2, 3, 8, 1024])
def test_memory_formulas(p):
    psi = 1000 * p
    m = [cost.zero_memory_bytes(psi, p, s)["total"] for s in range(4)]
    assert m[0] == 16 * psi
    assert m[1] == pytest.approx(8 * psi + 8 * psi / p)
    assert m[2] == pytest.approx(4 * psi + 12 * psi / p)
    assert m[3] == pytest.approx(16 * psi / p)


@pytest.mark.parametrize("p", [2, 3, 4])
def test_padded_volumes_reduce_to_closed_forms(p):
    units = [6 * p, 12 * p, 3 * p]              # divisible: no padding
    psi = sum(units)
    closed = {s: cost.zero_comm_elements(psi, p, s) * 8 for s in range(4)}
    for stage in range(4):
        exact = sum(cost.step_comm_bytes(units, p, stage, 8).values())
        assert exact == pytest.approx(closed[stage], rel=1e-12)
    assert closed[2] == cost.dp_comm_elements(psi, p) * 8
    mem = cost.padded_memory_bytes(units, p, 3, 8)
    assert mem["total"] == cost.zero_memory_bytes(psi, p, 3, 8)["total"]


def test_padding_counts_whole_blocks():
    # unit of 10 elements over p=3: blocks of 4, one padded element on the last rank
    assert cost.unit_blocks([10, 3], 3) == [4, 1]
    got = cost.step_comm_bytes([10, 3], 3, 3, 4, accum=2)
    assert got == {"reduce_scatter": 2 * 2 * 5 * 4, "allgather": 2 * 2 * 2 * 5 * 4}
    assert cost.step_comm_bytes([10, 3], 3, 0, 4, bucket_elems=5) == {
        "allreduce": 2 * (2 * 2 * 2 * 4) + 2 * 2 * 1 * 4}
    assert cost.step_comm_bytes([10, 3], 3, 2, 4, clip=True)["allreduce"] == 2 * 2 * 1 * 8


def test_bad_arguments():
    with pytest.raises(ValueError, match="stage=4"):
        cost.zero_comm_elements(10, 2, 4)
    with pytest.raises(ValueError, match="bucket_elems=0"):
        cost.bucket_sizes(10, 0)


def test_tp_pp_volumes():
    assert cost.tp_comm_elements(b=2, s=197, h=768, layers=12) == 4 * 2 * 197 * 768 * 12
    assert cost.pp_comm_elements(b=2, s=197, h=768, boundaries=3, micro_batches=4) == \
        2 * 2 * 197 * 768 * 3 * 4


def test_accumulation_multiplies_per_micro_batch_terms():
    units = [12, 24]
    for stage, factor in ((0, 2), (1, 3), (2, 4), (3, 9)):
        assert cost.zero_comm_elements(36, 4, stage, accum=3) == factor * 3 / 4 * 36
        exact = sum(cost.step_comm_bytes(units, 4, stage, 4, accum=3).values())
        assert exact == factor * 3 / 4 * 36 * 4


def test_pp_sends_interleaved_are_v_times_1f1b_on_a_middle_stage():
    b, s, h, m, item = 2, 17, 32, 4, 8
    act = b * s * h * item
    # 1F1B: one send per neighbour per micro-batch
    assert cost.pp_step_bytes(b, s, h, m, item, True, True) == 2 * m * act
    assert cost.pp_step_bytes(b, s, h, m, item, False, True) == m * act
    for v in (2, 3):
        assert cost.pp_step_messages(m, True, True, v) == v * cost.pp_step_messages(m, True, True)
        # the model's first chunk sends no gradient back, its last no activation on
        assert cost.pp_step_bytes(b, s, h, m, item, False, True, v) == (2 * v - 1) * m * act
        assert cost.pp_step_bytes(b, s, h, m, item, True, False, v) == (2 * v - 1) * m * act
    # a wrong count (v x 1F1B's on an end stage) is not the closed form
    assert cost.pp_step_bytes(b, s, h, m, item, False, True, 2) != 2 * m * act
    assert cost.micro_batches_in_flight("interleaved", 8, 4, 0, 2) == 11
    assert cost.micro_batches_in_flight("interleaved", 4, 4, 0, 2) == 8     # capped at m v
