"""The checkpoint file: round trip, first-mismatch errors, corruption and truncation
fallback with a warning, keep-last pruning, disk full and SIGKILL mid-save."""
import errno
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from minivit import checkpoint as ckpt
from minivit.checkpoint import (CheckpointError, CheckpointReader, checkpoint_path,
                                latest_valid_checkpoint, list_checkpoints, prune_checkpoints)
from minivit.checkpoint_state import load_model, read_params, save_model
from minivit.config import get_config
from minivit.model import ViT
from minivit.optim import AdamW

TINY = dict(image_size=8, patch_size=4, dim=16, depth=2, heads=2, mlp_dim=24, num_classes=5)


def _model(seed=0, **kw):
    return ViT(get_config("vit-nano", **{**TINY, **kw}), seed=seed)


def _trained(seed=0):
    model = _model(seed)
    opt = AdamW(model.flat, lr=1e-2)
    rng = np.random.default_rng(seed)
    for _ in range(2):
        model.flat.grad[...] = rng.standard_normal(model.flat.numel)
        opt.step()
    return model, opt


def test_round_trip_restores_params_moments_and_metadata(tmp_path):
    model, opt = _trained()
    path = save_model(checkpoint_path(tmp_path, 2), model, opt, step=2, preset="vit-nano",
                      scheduler={"base_lr": 1e-3}, loader={"epoch": 0, "step": 2},
                      rng={"seed": 0}, run_config={"lr": 1e-3})
    assert path.name == "step_0000002.h5" and not list(tmp_path.glob(".*"))
    fresh = _model(seed=5)
    fresh_opt = AdamW(fresh.flat, lr=1e-2)
    meta = load_model(path, fresh, fresh_opt, preset="vit-nano")
    assert np.array_equal(fresh.flat.data, model.flat.data)
    for k in ("exp_avg", "exp_avg_sq"):
        assert np.array_equal(fresh_opt.state[k], opt.state[k])
    assert fresh_opt.step_count == 2
    assert meta["loader"] == {"epoch": 0, "step": 2} and meta["scheduler"] == {"base_lr": 1e-3}
    assert meta["param_names"] == list(model.flat.offsets)
    with h5py.File(path) as f:     # full tensors under their names, one sha256 each
        assert f["params/blocks.0.attn.qkv.weight"].shape == (48, 16)
        assert len(f["optim/exp_avg"]) == len(model.flat.offsets)
        assert len(f["params/head.weight"].attrs["sha256"]) == 64
    assert list(read_params(path)) == list(model.flat.offsets)


@pytest.mark.parametrize("change, message", [
    (dict(preset="vit-micro"), "checkpoint of model preset 'vit-nano', but this run builds "
                               "'vit-micro'"),
    (dict(dim=32, heads=2), "model_config.dim is 16 in the checkpoint, 32 in this run"),
    (dict(num_classes=7), "model_config.num_classes is 5 in the checkpoint, 7 in this run"),
    (dict(dtype="float64"), "parameter 'cls_token' has dtype float32 in the checkpoint, "
                            "expected float64"),
])
def test_first_mismatch_is_reported(tmp_path, change, message):
    model, _ = _trained()
    path = save_model(tmp_path / "c.h5", model, step=2, preset="vit-nano")
    change = dict(change)
    preset = change.pop("preset", "vit-nano")
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model(path, _model(**change), preset=preset)


def _write_params(path, params, **meta):
    """A checkpoint holding exactly ``params`` (name -> array), through the writer."""
    with ckpt.CheckpointWriter(path) as writer:
        for name, array in params.items():
            writer.write("params", name, array)
        return writer.commit({"step": 1, "preset": "vit-nano",
                              "model_config": vars(_model().config), **meta})


def test_missing_shape_and_unexpected_names(tmp_path):
    model, _ = _trained()
    good = model.flat.state_dict()
    missing = {k: v for k, v in good.items() if k != "blocks.1.mlp.fc2.bias"}
    with pytest.raises(CheckpointError, match="parameter 'blocks.1.mlp.fc2.bias' missing"):
        load_model(_write_params(tmp_path / "a.h5", missing), _model(), preset="vit-nano")
    shaped = dict(good, **{"blocks.1.mlp.fc2.bias": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match=r"'blocks.1.mlp.fc2.bias' has shape \(3,\) in the "
                                              r"checkpoint, expected \(16,\)"):
        load_model(_write_params(tmp_path / "b.h5", shaped), _model(), preset="vit-nano")
    extra = dict(good, **{"blocks.9.extra": np.zeros(2, np.float32)})
    with pytest.raises(CheckpointError, match="'blocks.9.extra' in the checkpoint is not in"):
        load_model(_write_params(tmp_path / "c.h5", extra), _model(), preset="vit-nano")
    # a shape mismatch comes before a missing name that follows it in model order
    both = {k: v for k, v in shaped.items() if k != "head.bias"}
    with pytest.raises(CheckpointError, match="'blocks.1.mlp.fc2.bias' has shape"):
        load_model(_write_params(tmp_path / "d.h5", both), _model(), preset="vit-nano")
    # any edit after sealing (here through h5py itself) fails the whole-file check
    path = _write_params(tmp_path / "e.h5", good)
    with h5py.File(path, "a") as f:
        f.attrs["step"] = "2"
    with pytest.raises(CheckpointError, match=r"expected \d+ \(truncated, extended or "
                                              r"damaged\)|file checksum mismatch"):
        CheckpointReader(path)


def _corrupt_dataset_bytes(path, name):
    with h5py.File(path) as f:
        offset = f[f"params/{name}"].id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(offset + 4)
        byte = fh.read(1)
        fh.seek(offset + 4)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_corrupt_and_truncated_files_fall_back_with_a_warning(tmp_path):
    model, opt = _trained()
    for step in (2, 4, 6):
        save_model(checkpoint_path(tmp_path, step), model, opt, step=step, preset="vit-nano")
    _corrupt_dataset_bytes(checkpoint_path(tmp_path, 6), "blocks.0.mlp.fc1.weight")
    size = checkpoint_path(tmp_path, 4).stat().st_size
    with open(checkpoint_path(tmp_path, 4), "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.warns(UserWarning) as record:
        assert latest_valid_checkpoint(tmp_path) == checkpoint_path(tmp_path, 2)
    messages = [str(w.message) for w in record]
    assert "step_0000006.h5: file checksum mismatch (corrupt bytes)" in messages[0]
    assert "step_0000004.h5" in messages[1] and "(truncated, extended or damaged)" in messages[1]
    with pytest.raises(CheckpointError, match="file checksum mismatch"):
        load_model(checkpoint_path(tmp_path, 6), _model(), preset="vit-nano")


def test_dataset_checksums_still_guard_each_tensor(tmp_path):
    """Below the whole-file seal, each dataset's sha256 names a damaged tensor
    (seen here by re-sealing a file whose tensor bytes were changed)."""
    model, _ = _trained()
    path = save_model(tmp_path / "x.h5", model, step=1, preset="vit-nano")
    _corrupt_dataset_bytes(path, "blocks.0.mlp.fc1.weight")
    ckpt._seal(path)
    with pytest.raises(CheckpointError, match="'params/blocks.0.mlp.fc1.weight' fails its "
                                              "sha256 checksum"):
        load_model(path, _model(), preset="vit-nano")


def test_incomplete_file_and_no_valid_checkpoint(tmp_path):
    # an unfinished write copied into place: its user block was never sealed
    writer = ckpt.CheckpointWriter(tmp_path / "w.h5")
    writer.write("params", "x", np.zeros(3, np.float32))
    writer._file.flush()
    checkpoint_path(tmp_path, 3).write_bytes(writer.tmp.read_bytes())
    writer.abort()
    with pytest.warns(UserWarning, match="no minivit checkpoint header .not a checkpoint, or a "
                                         "write that never finished"):
        assert latest_valid_checkpoint(tmp_path) is None
    checkpoint_path(tmp_path, 9).write_bytes(b"not hdf5 at all")
    with pytest.warns(UserWarning) as record:
        assert latest_valid_checkpoint(tmp_path) is None
    assert "step_0000009.h5: no minivit checkpoint header" in str(record[0].message)
    assert "step_0000003.h5: no minivit checkpoint header" in str(record[1].message)
    assert latest_valid_checkpoint(tmp_path / "missing") is None


def test_keep_last_prunes_oldest_and_stale_temporaries(tmp_path):
    model, _ = _trained()
    for step in (10, 20, 30, 40):
        save_model(checkpoint_path(tmp_path, step), model, step=step, preset="vit-nano")
    stale = tmp_path / ".step_0000050.h5.tmp-999"
    stale.write_bytes(b"partial")
    removed = prune_checkpoints(tmp_path, 2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [30, 40]
    assert stale in removed and not stale.exists()
    assert prune_checkpoints(tmp_path, 0) == [] and len(list_checkpoints(tmp_path)) == 2


def test_disk_full_keeps_the_previous_file(tmp_path, monkeypatch):
    model, opt = _trained()
    path = checkpoint_path(tmp_path, 2)
    save_model(path, model, opt, step=2, preset="vit-nano")
    before = path.read_bytes()
    calls = {"n": 0}
    original = ckpt.CheckpointWriter.write

    def full(self, group, name, array):
        calls["n"] += 1
        if calls["n"] >= 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, group, name, array)

    monkeypatch.setattr(ckpt.CheckpointWriter, "write", full)
    model.flat.data += 1
    with pytest.raises(OSError, match="No space left"):
        save_model(path, model, opt, step=2, preset="vit-nano")     # overwrite attempt
    with pytest.raises(OSError, match="No space left"):
        save_model(checkpoint_path(tmp_path, 4), model, opt, step=4, preset="vit-nano")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000002.h5"]
    assert latest_valid_checkpoint(tmp_path) == path


KILL_WRITER = """
import sys, time, numpy as np
from minivit import checkpoint as ckpt
path, = sys.argv[1:]
w = ckpt.CheckpointWriter(path)
for i in range(10_000):
    w.write("params", f"t{i}", np.full(50_000, i, np.float32))
    if i == 3:
        print("writing", flush=True)
    time.sleep(0.01)
w.commit({"step": 2})
"""


def test_sigkill_mid_save_leaves_previous_checkpoint_loadable(tmp_path):
    model, opt = _trained()
    first = save_model(checkpoint_path(tmp_path, 1), model, opt, step=1, preset="vit-nano")
    proc = subprocess.Popen([sys.executable, "-c", KILL_WRITER, str(checkpoint_path(tmp_path, 2))],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not checkpoint_path(tmp_path, 2).exists()      # never renamed into place
    assert list(tmp_path.glob(".step_0000002.h5.tmp-*"))  # the partial temporary is left over
    assert latest_valid_checkpoint(tmp_path) == first     # ... and never taken as valid
    fresh, fresh_opt = _model(), None
    fresh_opt = AdamW(fresh.flat)
    load_model(first, fresh, fresh_opt, preset="vit-nano")
    assert np.array_equal(fresh.flat.data, model.flat.data)
