"""The non-finite guard of the training runtime (``StepEngine.train_step`` and
``Trainer.fit``), in one process (dp = 1, float64).

A NaN image makes that step's loss NaN.  The guard runs before the optimizer
update, so a skipped step leaves parameters and optimizer state untouched: a
run that skips steps 2-3 ends bitwise where a run that never saw them ends.
"""
import numpy as np
import pytest
from mpi4py import MPI

from minivit.config import get_config
from minivit.model import ViT
from minivit.parallel.grid import ProcessGrid
from minivit.parallel.runtime.config import TrainConfig
from minivit.parallel.runtime.data import RunData
from minivit.parallel.runtime.step import StepEngine
from minivit.parallel.runtime.trainer import Trainer


def _batches(config, n, poisoned):
    rng = np.random.default_rng(0)
    out = []
    for step in range(n):
        x = rng.standard_normal((4, config.in_chans, config.image_size, config.image_size))
        if step in poisoned:
            x[1, 0, 2, 3] = np.nan
        out.append((0, [(x, rng.integers(0, config.num_classes, 4))]))
    return out


CONFIG = get_config("vit-nano", depth=1, dtype="float64")


def _grid():
    return ProcessGrid(MPI.COMM_SELF, dp=1)


def _trainer(zero, batches, tmp_path, skip=0):
    """A Trainer of 4 steps over ``batches`` (no evaluation, no checkpoints)."""
    cfg = TrainConfig(steps=4, micro_batch=4, zero=zero, clip=1.0, dtype="float64",
                      skip_nonfinite=skip, save_every=-1, eval_every=0, no_progress=True,
                      warmup=0).validate(1)
    data = RunData(CONFIG, "vit-nano", "test", iter(batches), None, "poisoned batches", 10)
    return Trainer(cfg, _grid(), ViT(CONFIG, seed=0), data, out=tmp_path, script="pretrain")


def _engine(zero):
    return StepEngine(ViT(CONFIG, seed=0), _grid(), zero=zero, max_grad_norm=1.0)


@pytest.mark.parametrize("zero", [0, 3])
def test_skipped_steps_leave_no_trace(zero, tmp_path):
    batches = _batches(CONFIG, 4, poisoned={1, 2})
    trainer = _trainer(zero, batches, tmp_path, skip=2)
    records = trainer.fit()
    assert [r.get("skipped", False) for r in records] == [False, True, True, False]
    assert [r.get("skipped_total") for r in records] == [None, 1, 2, None]
    assert np.isnan(records[1]["loss"]) and np.isfinite(records[3]["loss"])
    assert trainer.engine.step_count == 2

    clean = _engine(zero)       # the same run without the poisoned steps
    clean.train_step(batches[0][1], trainer.schedule(0))
    clean.train_step(batches[3][1], trainer.schedule(3))
    np.testing.assert_array_equal(trainer.engine.full_parameters(), clean.full_parameters())
    got, want = trainer.engine.optimizer_state_dict(), clean.optimizer_state_dict()
    for key in ("exp_avg", "exp_avg_sq"):
        for name in want[key]:
            np.testing.assert_array_equal(got[key][name], want[key][name])


@pytest.mark.parametrize("zero", [0, 2])
def test_budget_exceeded_stops_before_the_update_naming_the_step(zero, tmp_path):
    batches = _batches(CONFIG, 4, poisoned={1, 2})
    trainer = _trainer(zero, batches, tmp_path, skip=1)
    with pytest.raises(FloatingPointError,
                       match=r"^loss became nan at step 3 \(non-finite step 2, "
                             r"--skip-nonfinite allows 1\); stopped, last good checkpoint: "
                             r"none saved yet$"):
        trainer.fit()
    after_step_1 = _engine(zero)
    after_step_1.train_step(batches[0][1], trainer.schedule(0))
    np.testing.assert_array_equal(trainer.engine.full_parameters(),
                                  after_step_1.full_parameters())
    assert trainer.engine.step_count == 1

    trainer = _trainer(zero, batches, tmp_path / "again")
    with pytest.raises(FloatingPointError, match=r"^loss became nan at step 2; stopped"):
        trainer.fit()                          # default: stop at once
    assert np.isfinite(trainer.engine.full_parameters()).all()


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_budget_rejected_before_any_step(bad):
    with pytest.raises((ValueError, TypeError), match="skip-nonfinite|not supported"):
        TrainConfig(skip_nonfinite=bad).validate(1)
