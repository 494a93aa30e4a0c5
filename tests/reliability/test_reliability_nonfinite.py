"""The non-finite guard of parallel/step.py, in one process (dp = 1, float64).

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
from minivit.parallel.runtime.step import ParallelTrainer, train_loop


def _batches(config, n, poisoned):
    rng = np.random.default_rng(0)
    out = []
    for step in range(n):
        x = rng.standard_normal((4, config.in_chans, config.image_size, config.image_size))
        if step in poisoned:
            x[1, 0, 2, 3] = np.nan
        out.append((0, [(x, rng.integers(0, config.num_classes, 4))]))
    return out


def _trainer(zero):
    config = get_config("vit-nano", depth=1, dtype="float64")
    grid = ProcessGrid(MPI.COMM_SELF, dp=1)
    return config, ParallelTrainer(ViT(config, seed=0), grid, zero=zero, max_grad_norm=1.0)


def _lr(step):
    return 1e-3 * (1 + step)


@pytest.mark.parametrize("zero", [0, 3])
def test_skipped_steps_leave_no_trace(zero):
    config, trainer = _trainer(zero)
    batches = _batches(config, 4, poisoned={1, 2})
    records = train_loop(trainer, _lr, iter(batches), 4, global_batch=4, skip_nonfinite=2)
    assert [r.get("skipped", False) for r in records] == [False, True, True, False]
    assert [r.get("skipped_total") for r in records] == [None, 1, 2, None]
    assert np.isnan(records[1]["loss"]) and np.isfinite(records[3]["loss"])
    assert trainer.step_count == 2

    _, clean = _trainer(zero)       # the same run without the poisoned steps
    clean.train_step(batches[0][1], _lr(0))
    clean.train_step(batches[3][1], _lr(3))
    np.testing.assert_array_equal(trainer.full_parameters(), clean.full_parameters())
    got, want = trainer.optimizer_state_dict(), clean.optimizer_state_dict()
    for key in ("exp_avg", "exp_avg_sq"):
        for name in want[key]:
            np.testing.assert_array_equal(got[key][name], want[key][name])


@pytest.mark.parametrize("zero", [0, 2])
def test_budget_exceeded_stops_before_the_update_naming_the_step(zero):
    config, trainer = _trainer(zero)
    batches = _batches(config, 4, poisoned={1, 2})
    after_step_1 = []
    log = (lambda r: after_step_1.append(trainer.full_parameters()) if r["step"] == 1
           else None)
    with pytest.raises(FloatingPointError,
                       match=r"^loss became nan at step 3 \(non-finite step 2, "
                             r"--skip-nonfinite allows 1\)$"):
        train_loop(trainer, _lr, iter(batches), 4, global_batch=4, skip_nonfinite=1, log=log)
    np.testing.assert_array_equal(trainer.full_parameters(), after_step_1[0])
    assert trainer.step_count == 1

    _, trainer = _trainer(zero)
    with pytest.raises(FloatingPointError, match=r"^loss became nan at step 2$"):
        train_loop(trainer, _lr, iter(batches), 4, global_batch=4)   # default: stop at once
    assert np.isfinite(trainer.full_parameters()).all()


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_budget_rejected_before_any_step(bad):
    config, trainer = _trainer(0)
    with pytest.raises(ValueError, match="skip_nonfinite="):
        train_loop(trainer, _lr, iter([]), 1, global_batch=4, skip_nonfinite=bad)
