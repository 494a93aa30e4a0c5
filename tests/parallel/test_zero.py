"""Data parallel + ZeRO 1/2/3 + gradient accumulation against a single-process run.

For dp in {2, 3, 4} (one ``mpirun`` launch each, looping over configurations
inside to pay the start-up once), every zero stage in {0, 1, 2, 3} and
accumulation in {1, 2}, 3 AdamW steps in float64 must give the losses and
final parameters of a plain single-process AdamW run on the same global batch
to 1e-10 relative (and float32 to 1e-5).  Also checked on every rank:
replicated parameters bitwise identical after every step; the ledger's bytes
per step equal cost.py's padding-exact prediction op by op; the measured
model-state bytes equal cost.py's padded formula and the closed form within
padding, and the decay mask's bytes ``cost.decay_mask_bytes``; dp=4 stage 3 holds <= 0.3x the model state of dp=1; a random sleep
before every collective on one rank changes no bit of the result.

``python tests/parallel/test_zero.py`` is the per-rank driver launched by ``run_mpi``.
"""
import json
import sys
import time

import numpy as np
import pytest

STEPS, MICRO, LR, SEED = 3, 2, 2e-2, 7
# smaller than vit-nano so 8+ configurations x 3 steps run in seconds
TINY = dict(image_size=8, patch_size=4, dim=16, depth=2, heads=2, mlp_dim=24, num_classes=5)


@pytest.mark.parametrize("dp", [2, 3, 4])
def test_zero_equivalence(run_mpi, dp):
    proc = run_mpi(dp, [__file__], timeout=240)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    summary = json.loads(lines[-1])
    assert summary["configs"] == 16, summary
    if dp == 4:
        ratio = summary["memory"]["3"]["total"] / summary["memory"]["0"]["total"]
        assert ratio <= 0.3, summary["memory"]


@pytest.mark.parametrize("dtype, bump", [("float64", 1e-9), ("float32", 1e-4)])
def test_the_comparison_catches_small_errors(dtype, bump):
    from minivit.config import get_config
    from minivit.model import ViT
    cfg = get_config("vit-nano", dtype=dtype, **TINY)
    ref = ViT(cfg, seed=SEED).flat.data.copy()
    assert_params_close(ref.copy(), ref, cfg, 1e-10 if dtype == "float64" else 1e-5, "same")
    wrong = ref.copy()
    wrong[wrong.size // 2:] *= 1 + bump            # a slightly wrong update on half the model
    with pytest.raises(AssertionError):
        assert_params_close(wrong, ref, cfg, 1e-10 if dtype == "float64" else 1e-5, "bumped")


def make_batch(global_batch, cfg, dtype):
    rng = np.random.default_rng(123)
    images = rng.standard_normal((global_batch, cfg.in_chans, cfg.image_size,
                                  cfg.image_size)).astype(dtype)
    labels = rng.integers(0, cfg.num_classes, global_batch)
    return images, labels


def reference(cfg, images, labels, clip):
    """Plain single-process AdamW on the whole global batch: the ground truth."""
    from minivit.loss import cross_entropy_backward, cross_entropy_forward
    from minivit.model import ViT
    from minivit.optim import AdamW, clip_grad_norm_
    model = ViT(cfg, seed=SEED)
    opt = AdamW(model.flat, lr=LR, weight_decay=0.05)
    losses = []
    for _ in range(STEPS):
        logits, ctx = model.forward(images)
        loss, lctx = cross_entropy_forward(logits, labels)
        model.backward(cross_entropy_backward(lctx), ctx)
        if clip:
            clip_grad_norm_(model.flat.grad, clip)
        opt.step()
        model.zero_grad()
        losses.append(loss)
    return np.array(losses), model.flat.data.copy(), opt.state_dict()


def run_config(world, cfg, zero, accum, clip, delay=None, overlap=False, bucket_bytes=512):
    from minivit.model import ViT
    from minivit.parallel.data_parallel import parameter_digest
    from minivit.parallel.grid import ProcessGrid
    from minivit.parallel.runtime.step import StepEngine
    grid = ProcessGrid(world, dp=world.Get_size())
    if delay is not None:
        grid.dp_group.before_op = delay
    p, r = grid.dp, grid.dp_rank
    images, labels = make_batch(MICRO * accum * p, cfg, cfg.dtype)
    local = slice(r * MICRO * accum, (r + 1) * MICRO * accum)
    model = ViT(cfg, seed=SEED + 1000 * r)          # wrong init on purpose: the broadcast fixes it
    trainer = StepEngine(model, grid, zero=zero, accum=accum, bucket_bytes=bucket_bytes,
                              overlap=overlap, weight_decay=0.05, max_grad_norm=clip)
    losses, per_step_bytes = [], []
    for _ in range(STEPS):
        mark = grid.ledger.mark()
        x, y = images[local], labels[local]
        micro = [(x[i:i + MICRO], y[i:i + MICRO]) for i in range(0, MICRO * accum, MICRO)]
        out = trainer.train_step(micro, LR)
        losses.append(out["loss"])
        per_step_bytes.append(grid.ledger.summary(since=mark))
        if zero < 3:      # replicated parameters: bitwise identical on every rank
            digests = world.allgather(int(parameter_digest(model.flat.data)[0]))
            assert len(set(digests)) == 1, f"replicas differ after a step: {digests}"
    pred = trainer.predicted_step_bytes()
    for summary in per_step_bytes:
        got = {}
        for (op, group), row in summary.items():
            assert group == "dp", (op, group)
            got[op] = got.get(op, 0) + row["bytes"]
        assert got == {k: v for k, v in pred.items() if v or k in got}, (zero, accum, got, pred)
    mem, (exact, closed) = trainer.memory(), trainer.predicted_memory()
    for key in ("params", "grads", "optim", "total"):
        assert mem[key] == exact[key], (key, mem, exact)
        padding = (sum(trainer.optimizer.layout.blocks) * p - sum(trainer.unit_sizes)
                   if zero else 0) * cfg_itemsize(cfg) * 4
        assert abs(mem[key] - closed[key]) <= padding, (key, mem, closed)
    check_decay_mask_bytes(trainer, model, zero)
    params = trainer.full_parameters()
    state = trainer.optimizer_state_dict()
    # round trip: the gathered state loads back into this layout unchanged
    trainer.load_optimizer_state_dict(state)
    again = trainer.optimizer_state_dict()
    for key in ("exp_avg", "exp_avg_sq"):
        for name, value in state[key].items():
            assert np.array_equal(again[key][name], value), (key, name)
    grid.free()
    return np.array(losses), params, mem, state


def check_decay_mask_bytes(trainer, model, zero):
    """The weight-decay mask this rank holds (the full one at stages 0-2, the
    optimizer's shard at 1-3; stage 0's optimizer slices the full one) is
    ``cost.decay_mask_bytes``: 1 byte per element, padding included."""
    from minivit.parallel import cost
    opt = trainer.optimizer
    held = [a for a in (model.flat.decay_mask, getattr(opt, "decay_shard", None))
            if a is not None]
    assert all(a.dtype == np.bool_ for a in held), [a.dtype for a in held]
    shard = sum(opt.layout.blocks) if zero else 0
    want = cost.decay_mask_bytes(sum(trainer.unit_sizes), shard, zero)
    assert sum(a.nbytes for a in held) == want, (zero, [a.nbytes for a in held], want)


def key_bias_mask(cfg):
    """True on the attention key-bias entries of the flat buffer.

    Their gradient is zero in exact arithmetic (softmax is invariant to a
    per-query shift, which is all a key bias adds), so after AdamW's
    normalisation they hold amplified rounding noise with no relative meaning.
    """
    from minivit.model import ViT
    offsets = ViT(cfg, seed=0).flat.offsets
    mask = np.zeros(sum(hi - lo for lo, hi, _ in offsets.values()), bool)
    for i in range(cfg.depth):
        lo = offsets[f"blocks.{i}.attn.qkv.bias"][0]
        mask[lo + cfg.dim:lo + 2 * cfg.dim] = True
    return mask


def assert_params_close(params, ref, cfg, tol, msg):
    """float64: relative ``tol`` elementwise (atol: ``tol`` x the largest |parameter|),
    except key-bias noise, which is only bounded by Adam's step size lr (1 + wd) per step.

    float32: relative ``tol`` in the L2 norm over all parameters.  Elementwise it
    cannot hold: Adam divides each gradient by its own RMS, so a gradient that is
    small from cancellation carries float32 rounding (~1e-7 of the summands) into
    the update at full relative size.
    """
    if cfg.dtype == "float32":
        err = np.linalg.norm((params - ref).astype(np.float64)) / np.linalg.norm(ref)
        assert err <= tol, f"{msg}: relative L2 error {err:.3g} > {tol}"
        return
    noise = key_bias_mask(cfg)
    np.testing.assert_allclose(params[~noise], ref[~noise], rtol=tol,
                               atol=tol * np.abs(ref).max(), err_msg=msg)
    assert np.abs(params[noise] - ref[noise]).max() <= 2 * STEPS * LR * 1.05, msg


def assert_state_close(got, want, tol, msg):
    """Adam moments: relative ``tol`` in the L2 norm (they inherit the gradient's
    rounding, including the key-bias noise, so no elementwise bound is meaningful)."""
    err = np.linalg.norm((got - want).astype(np.float64)) / np.linalg.norm(want)
    assert err <= tol, f"{msg}: relative L2 error {err:.3g} > {tol}"


def cfg_itemsize(cfg):
    return np.dtype(cfg.dtype).itemsize


def _driver():
    from mpi4py import MPI
    from minivit.config import get_config
    from minivit.parallel.runtime.guard import install_guard
    world = MPI.COMM_WORLD
    install_guard(world)
    p = world.Get_size()
    results, memory, configs = {}, {}, 0
    for dtype, tol in (("float64", 1e-10), ("float32", 1e-5)):
        cfg = get_config("vit-nano", dtype=dtype, **TINY)
        accums = (1, 2) if dtype == "float64" else (2,)
        for accum in accums:
            clip = 0.5 if accum == 2 else None       # both clipping paths are exercised
            images, labels = make_batch(MICRO * accum * p, cfg, dtype)
            ref_losses, ref_params, ref_state = reference(cfg, images, labels, clip)
            for zero in (0, 1, 2, 3):
                losses, params, mem, state = run_config(world, cfg, zero, accum, clip)
                np.testing.assert_allclose(losses, ref_losses, rtol=tol, atol=0,
                                           err_msg=f"losses zero={zero} accum={accum} {dtype}")
                assert_params_close(params, ref_params, cfg, tol,
                                    f"params zero={zero} accum={accum} {dtype}")
                assert state["step"] == STEPS
                for key in ("exp_avg", "exp_avg_sq"):     # sharded state == unsharded state
                    got = np.concatenate([state[key][n].ravel() for n in ref_state[key]])
                    want = np.concatenate([v.ravel() for v in ref_state[key].values()])
                    assert_state_close(got, want, tol, f"{key} zero={zero} accum={accum}")
                results[(dtype, zero, accum)] = params
                memory[str(zero)] = mem
                configs += 1
    # overlap and a random delay before every collective on one rank change no bit
    cfg = get_config("vit-nano", dtype="float64", **TINY)
    rng = np.random.default_rng(world.Get_rank())
    sleepy = (lambda op: time.sleep(rng.uniform(0, 0.01))) if world.Get_rank() == p - 1 else None
    for zero in (0, 1, 2, 3):
        _, params, _, _ = run_config(world, cfg, zero, 2, 0.5, delay=sleepy,
                                     overlap=zero <= 1)
        assert np.array_equal(params, results[("float64", zero, 2)]), f"delay changed zero={zero}"
        configs += 1
    if world.Get_rank() == 0:
        print(json.dumps({"configs": configs, "memory": memory}), flush=True)


if __name__ == "__main__":
    _driver()
