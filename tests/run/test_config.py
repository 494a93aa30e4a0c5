"""TrainConfig validation: each bad value is a ValueError naming the flag and the numbers."""
import pytest

from minivit.parallel.runtime.config import FinetuneConfig, PretrainConfig, positive_int


@pytest.mark.parametrize("fields, match", [
    ({"mixup": -0.1}, r"--mixup -0.1: expected a Beta alpha >= 0"),
    ({"cutmix": float("nan")}, r"--cutmix nan"),
    ({"mix_prob": 1.5}, r"--mix-prob 1.5: expected a probability in \[0, 1\]"),
    ({"switch_prob": -1.0}, r"--switch-prob -1.0"),
    ({"mixup": 0.8, "micro_batch": 3}, r"--micro-batch 3 with --mixup/--cutmix: expected an "
                                       r"even micro-batch"),
    ({"steps": 0}, r"--steps 0: expected >= 1"),
    ({"global_batch": 20, "micro_batch": 8}, r"--global-batch 20 is not divisible by "
                                             r"--micro-batch 8 x dp 1 = 8"),
    ({"tp": 3}, r"--dp/--tp/--pp"),
    ({"lr": 1e-3, "min_lr": 0.01}, r"--min-lr 0.01 > --lr 0.001: expected --min-lr <= --lr"),
])
def test_bad_values_name_the_flag(fields, match):
    with pytest.raises(ValueError, match=match):
        PretrainConfig(model="vit-nano", data="random", **fields).validate(1)


def test_derived_sizes_and_the_mixing_object():
    cfg = PretrainConfig(model="vit-nano", data="random", micro_batch=4, global_batch=32,
                         cutmix=1.0).validate(2)
    assert (cfg.dp, cfg.global_batch, cfg.accum) == (2, 32, 4)
    mixing = cfg.mixing()
    assert (mixing.mixup_alpha, mixing.cutmix_alpha, mixing.prob) == (0.0, 1.0, 1.0)
    assert PretrainConfig(model="vit-nano", data="random").validate(1).mixing() is None
    # a fine-tuning config has its own flags: no layout flags in its config.toml
    flags = FinetuneConfig(model="vit-nano", from_scratch=True).validate(1).flags()
    assert "mixup" in flags and "tp" not in flags and "zero" not in flags


def test_positive_int_is_the_one_check():
    assert positive_int("keep_last", 0, 0) == 0
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="--eval-batch"):
            positive_int("eval_batch", bad)


def test_synthetic_generator_parameters_in_the_data_spec():
    from minivit.io.sources import open_data, synthetic_params
    assert synthetic_params("synthetic:onepfrac:delta=0.05,num_maps=3,perturbation=additive") \
        == {"delta": 0.05, "num_maps": 3, "perturbation": "additive"}
    assert synthetic_params("synthetic:newton") == {}
    splits = open_data("synthetic:onepfrac:delta=0.05,num_points=3000,search_points=3000",
                       classes=2, image_size=16, instances=4, holdout=0.5)
    assert splits.train.generator.params.delta == 0.05 and "delta=0.05" in splits.description
    with pytest.raises(ValueError, match="is not NAME=VALUE"):
        synthetic_params("synthetic:onepfrac:delta")
    with pytest.raises(ValueError, match=r"unknown OnePFracParams field\(s\) \['deltas'\]"):
        PretrainConfig(model="vit-nano", data="synthetic:onepfrac:deltas=0.1",
                       instances=10).validate(1)
    with pytest.raises(ValueError, match="a generator parameter has the wrong type"):
        PretrainConfig(model="vit-nano", data="synthetic:onepfrac:delta=abc",
                       instances=10).validate(1)


def test_out_must_be_a_folder(tmp_path):
    (tmp_path / "file.h5").write_text("x")
    with pytest.raises(ValueError, match="--out .*file.h5: exists and is not a directory"):
        PretrainConfig(model="vit-nano", data="random", out=str(tmp_path / "file.h5")).validate(1)
