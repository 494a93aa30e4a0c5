"""Usability defects found by a new-user trial of ``run/pretrain.py``, each shown fixed
through the command line or the public API (docs/reliability.md, rows 44 onwards).
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN_PY = ROOT / "run" / "pretrain.py"


def _pretrain_module():
    spec = importlib.util.spec_from_file_location("pretrain_usability", PRETRAIN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PRETRAIN = _pretrain_module()


# ------------------------------------------------------------ TOML types of flags
def test_toml_string_for_an_int_flag_exits_2_naming_key_file_and_types(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('steps = "10"\n')
    proc = subprocess.run([sys.executable, str(PRETRAIN_PY), "--config", str(cfg),
                           "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (
        f"pretrain.py: error: --config '{cfg}': key 'steps' = '10' is a TOML string: "
        "expected an integer")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("line, given, expected", [
    ('steps = "10"', "'10' is a TOML string", "an integer"),
    ("steps = true", "True is a TOML boolean", "an integer"),
    ("steps = 1.0", "1.0 is a TOML float", "an integer"),
    ('lr = "0.1"', "'0.1' is a TOML string", "a number (integer or float)"),
    ("lr = false", "False is a TOML boolean", "a number (integer or float)"),
    ("model = 3", "3 is a TOML integer", "a string"),
    ("out = 1979-05-27", "datetime.date(1979, 5, 27) is a TOML date/time (date)", "a string"),
    ('audit = "true"', "'true' is a TOML string", "true or false (a boolean)"),
    ("audit = 1", "1 is a TOML integer", "true or false (a boolean)"),
])
def test_toml_value_of_another_type_is_refused(tmp_path, capsys, line, given, expected):
    cfg = tmp_path / "run.toml"
    cfg.write_text(line + "\n")
    key = line.split(" = ")[0]
    parser = PRETRAIN.build_parser()
    with pytest.raises(SystemExit) as exc:
        PRETRAIN.parse_args(parser, ["--config", str(cfg)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"{parser.prog}: error: --config '{cfg}': key '{key}' = {given}: expected {expected}")


def test_toml_values_of_the_flag_type_are_taken(tmp_path):
    cfg = tmp_path / "run.toml"
    # an integer for a float flag is a number too
    cfg.write_text('steps = 10\nlr = 1\nmin-lr = 0.5e-4\nmodel = "vit-nano"\naudit = true\n')
    args = PRETRAIN.parse_args(PRETRAIN.build_parser(), ["--config", str(cfg)])
    assert (args.steps, args.lr, args.min_lr, args.model, args.audit) == \
        (10, 1.0, 0.5e-4, "vit-nano", True)
    assert type(args.lr) is float
    # a boolean the file switches on, the command line switches off again (--no-X)
    args = PRETRAIN.parse_args(PRETRAIN.build_parser(), ["--config", str(cfg), "--no-audit"])
    assert args.audit is False and args.steps == 10


# ------------------------------------------------------- re-indexed truncated shard
def _write_two_shards(root):
    from io_support import write_shards
    write_shards(str(root / "s-%06d.tar"), 20, 10, num_classes=2)   # 000000..000019
    return root / "s-000001.tar", json.loads((root / "s-000001.tar.idx").read_text())


def _cut(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def test_member_cut_in_its_padding_is_not_listed_and_held_out_set_reads(tmp_path):
    from minivit.io import ShardWarning
    from minivit.io.sources import open_data
    shard, idx = _write_two_shards(tmp_path)
    cls_off, cls_size = idx["samples"][-1]["members"]["cls"]
    cut = cls_off + cls_size + 100          # the label byte is there, its padding is cut
    _cut(shard, cut)
    with pytest.warns(ShardWarning) as caught:
        splits = open_data(str(tmp_path), holdout=0.2)   # index.json is stale: re-walked
    full = splits.train.dataset
    assert [full.read_sample(i)["__key__"] for i in range(len(full))] == \
        [f"{j:06d}" for j in range(19)]
    messages = [str(w.message) for w in caught]
    assert f"{shard}: byte {cls_off - 512}: truncated: member '000019.cls' needs 1 bytes + " \
           f"511 padding at {cls_off}, file has {cut}" in messages
    assert f"{shard}: byte {idx['samples'][-1]['offset']}: sample '000019' is incomplete " \
           "(members ['png'])" in messages
    # the last 20% of each label (-1: the re-walked shard's unread labels) are held out;
    # before, that took the cut sample 000019, which failed at every evaluation
    held = splits.eval
    assert held.indices.tolist() == [8, 9, 17, 18]
    assert [held[i][1] for i in range(len(held))] == [0, 1, 1, 0]   # all read back


def test_optional_member_cut_in_its_padding_leaves_a_readable_sample(tmp_path):
    from minivit.io import ShardDataset, ShardWarning
    shard, idx = _write_two_shards(tmp_path)
    last = idx["samples"][-1]
    json_off, json_size = last["members"]["json"]
    _cut(shard, json_off + json_size)                     # all data, no padding
    with pytest.warns(ShardWarning) as caught:    # the stale sidecar, then the cut
        ds = ShardDataset(str(shard))
    assert any("truncated: member '000019.json'" in str(w.message) for w in caught)
    assert len(ds) == 10
    raw = ds.read_sample(9)
    assert raw["__key__"] == "000019" and sorted(raw) == [
        "__key__", "__offset__", "__url__", "cls", "png"]
    assert ds[9][1] == 19 % 2


# ------------------------------------------------------------ usage errors under MPI
def test_usage_error_under_mpirun_is_printed_once_and_every_rank_exits_2(run_mpi, tmp_path):
    proc = run_mpi(4, [PRETRAIN_PY, "--tp", "3", "--out", tmp_path / "x"], timeout=60,
                   check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    error = ("pretrain.py: error: --dp/--tp/--pp: process grid dp=1 x tp=3 x pp=1 = 3 ranks, "
             "but the world has 4 ranks: expected dp*tp*pp == world size")
    lines = proc.stderr.splitlines()
    assert lines.count(error) == 1 and lines[-1] == error, proc.stderr
    assert proc.stderr.count("usage: pretrain.py") == 1
    # every rank left through argparse's exit: no abort, no traceback, no mpirun report
    assert "Traceback" not in proc.stderr and "BAD TERMINATION" not in proc.stdout
    assert proc.stdout == "" and not (tmp_path / "x").exists()


def test_help_under_mpirun_is_printed_once(run_mpi):
    proc = run_mpi(2, [PRETRAIN_PY, "--help"], timeout=60)
    assert proc.stdout.count("usage: pretrain.py") == 1
    assert proc.stdout.count("--skip-nonfinite SKIP_NONFINITE") == 2   # usage + option list
    assert proc.stderr == ""


def test_finetune_usage_error_under_mpirun_is_printed_once(run_mpi, tmp_path):
    proc = run_mpi(2, [ROOT / "run" / "finetune.py", "--model", "vit-nano",
                       "--out", tmp_path / "x"], timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("usage: finetune.py") == 1
    assert proc.stderr.count("--checkpoint is required") == 1, proc.stderr


# ----------------------------------------------- --skip-nonfinite count in checkpoints
NANO = ["--model", "vit-nano", "--data", "random", "--micro-batch", "4", "--steps", "4",
        "--warmup", "0", "--random-samples", "64", "--threads", "1", "--no-progress",
        "--holdout", "0"]


def _pretrain(*args):
    return subprocess.run([sys.executable, str(PRETRAIN_PY), *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def _skipped_totals(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r.get("skipped_total") for r in map(json.loads, lines)
            if r["kind"] == "train"}


def _nonfinite(path):
    from minivit.checkpoint import CheckpointReader
    with CheckpointReader(path) as reader:
        return reader.meta.get("nonfinite")


def _without_nonfinite(path):
    """Rewrite the checkpoint ``path`` as one written before the count was stored."""
    from minivit.checkpoint import CheckpointReader, CheckpointWriter
    with CheckpointReader(path) as reader:
        meta = {k: v for k, v in reader.meta.items() if k != "nonfinite"}
        groups = ["params"] + [f"optim/{s}" for s in reader.names("optim")]
        tensors = {(g, n): reader.read(g, n) for g in groups for n in reader.names(g)}
    path.unlink()
    with CheckpointWriter(path) as writer:
        for (group, name), array in tensors.items():
            writer.write(group, name, array)
        writer.commit(meta)


def test_skip_budget_is_stored_in_checkpoints_and_counted_on_after_resume(tmp_path):
    out = tmp_path / "a"
    # lr 1e18: step 1 leaves huge but finite weights, so steps 2-4 are non-finite and
    # skipped (parameters unchanged), and the checkpoints can still be written
    proc = _pretrain(*NANO, "--lr", "1e18", "--skip-nonfinite", "3", "--save-every", "2",
                     "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # one count over the chunks that end at checkpoints (it restarted at 0 after step 2)
    assert _skipped_totals(out) == {1: None, 2: 1, 3: 2, 4: 3}
    ckpt = out / "ckpt"
    assert _nonfinite(ckpt / "step_0000002.h5") == {"skipped": 1}
    assert _nonfinite(ckpt / "step_0000004.h5") == {"skipped": 3}
    # resume at step 2 with a budget of 2: steps 3 and 4 are the 2nd and 3rd skipped
    (ckpt / "step_0000004.h5").unlink()
    proc = _pretrain("--resume", out, "--skip-nonfinite", "2")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1] == (
        "[minivit rank 0] error: loss became nan at step 4 (non-finite step 3, "
        f"--skip-nonfinite allows 2); stopped, last good checkpoint: {ckpt / 'step_0000002.h5'}")
    assert _skipped_totals(out) == {1: None, 2: 1, 3: 2, 4: 3}


def test_checkpoint_without_the_count_resumes_with_0(tmp_path):
    out = tmp_path / "old"
    proc = _pretrain(*NANO, "--lr", "1e18", "--skip-nonfinite", "1", "--steps", "2",
                     "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = out / "ckpt" / "step_0000002.h5"
    _without_nonfinite(path)
    assert _nonfinite(path) is None
    proc = _pretrain("--resume", out, "--steps", "4", "--skip-nonfinite", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _skipped_totals(out) == {1: None, 2: 1, 3: 1, 4: 2}
    assert _nonfinite(out / "ckpt" / "step_0000004.h5") == {"skipped": 2}


@pytest.mark.parametrize("stored", [{"skipped": -1}, {"skipped": 1.0}, {"skipped": True},
                                    {"skipped": "2"}, {}, 3, None])
def test_bad_stored_count_is_a_checkpoint_error(stored):
    from minivit.checkpoint import CheckpointError
    from minivit.parallel.runtime.resume import skipped_nonfinite
    assert skipped_nonfinite({"step": 2}, "f.h5") == 0
    assert skipped_nonfinite({"nonfinite": {"skipped": 4}}, "f.h5") == 4
    with pytest.raises(CheckpointError, match=r"^f\.h5: nonfinite .*, expected "
                                              r"\{'skipped': integer >= 0\}$"):
        skipped_nonfinite({"nonfinite": stored}, "f.h5")


# ------------------------------------------------------------------ Ctrl-C (SIGINT)
def _start(cmd, out, env=None):
    """Popen of ``cmd`` writing stdout/stderr into files next to ``out``."""
    import os

    from conftest import SINGLE_THREAD_ENV
    out.parent.mkdir(parents=True, exist_ok=True)
    logs = (open(out.parent / "stdout.txt", "w"), open(out.parent / "stderr.txt", "w"))
    proc = subprocess.Popen(list(map(str, cmd)), stdout=logs[0], stderr=logs[1], cwd=ROOT,
                            env={**os.environ, **SINGLE_THREAD_ENV, **(env or {})})
    for f in logs:
        f.close()
    return proc


def _wait_for(predicate, proc, timeout=240, what=""):
    import time
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"exited {proc.returncode} before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.01)


def _train_steps(out):
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [r["step"] for r in map(json.loads, path.read_text().splitlines())
            if r["kind"] == "train"]


def _outputs(out):
    return ((out.parent / "stdout.txt").read_text(), (out.parent / "stderr.txt").read_text())


LONG = [*NANO[:NANO.index("--steps")], "--steps", "100000", *NANO[NANO.index("--steps") + 2:],
        "--save-every", "-1", "--log-every", "100000"]
HINT = ("[minivit] Ctrl-C: stopping after this step with a checkpoint; press Ctrl-C again "
        "to abort without one")


def _ctrl_c_after_two_steps(cmd, out):
    """Run ``cmd``, send one SIGINT after two logged steps, expect exit 0.

    Returns ``(stdout, stderr, last step, its checkpoint path)``.
    """
    import signal
    proc = _start(cmd, out)
    try:
        _wait_for(lambda: len(_train_steps(out)) >= 2, proc, what="two steps")
        proc.send_signal(signal.SIGINT)     # to mpirun: hydra forwards it to every rank
        assert proc.wait(timeout=120) == 0, _outputs(out)
    finally:
        proc.kill()
    last = _train_steps(out)[-1]
    return (*_outputs(out), last, out / "ckpt" / f"step_{last:07d}.h5")


def test_ctrl_c_checkpoints_at_the_step_boundary_and_exits_0(tmp_path):
    out = tmp_path / "run" / "out"
    stdout, stderr, last, path = _ctrl_c_after_two_steps(
        [sys.executable, PRETRAIN_PY, *LONG, "--out", out], out)
    assert stdout.splitlines()[-1] == (f"interrupted by SIGINT (Ctrl-C) after step {last}: "
                                       f"wrote {path}; continue with --resume {out}")
    assert stderr.splitlines() == [HINT]            # no KeyboardInterrupt traceback
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == [path.name]
    from minivit.checkpoint import CheckpointReader
    with CheckpointReader(path) as reader:
        assert reader.step == last


def test_second_ctrl_c_ends_the_run_at_once_without_a_checkpoint(tmp_path):
    import signal
    out = tmp_path / "run" / "out"
    # steps of a few seconds, so the second Ctrl-C lands well inside the step
    slow = [*LONG, "--model", "vit-micro", "--micro-batch", "128", "--random-samples", "256"]
    proc = _start([sys.executable, PRETRAIN_PY, *slow, "--out", out], out)
    try:
        _wait_for(lambda: len(_train_steps(out)) >= 1, proc, what="the first step")
        proc.send_signal(signal.SIGINT)
        _wait_for(lambda: HINT in _outputs(out)[1], proc, what="the Ctrl-C hint")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == -signal.SIGINT, _outputs(out)
    finally:
        proc.kill()
    assert _train_steps(out) == [1] and not (out / "ckpt").exists()
    assert "Traceback" not in _outputs(out)[1]


def test_ctrl_c_to_mpirun_checkpoints_on_every_rank_and_exits_0(tmp_path):
    from conftest import mpi_command
    out = tmp_path / "run" / "out"
    stdout, stderr, last, path = _ctrl_c_after_two_steps(
        mpi_command(2, [PRETRAIN_PY, *LONG, "--zero", "1", "--out", out]), out)
    assert stdout.count("interrupted by SIGINT (Ctrl-C) after step") == 1
    assert f"after step {last}: wrote {path}; continue with --resume {out}" in stdout
    assert stderr.count(HINT) == 1 and "Traceback" not in stderr
    from minivit.checkpoint import CheckpointReader
    with CheckpointReader(path) as reader:
        assert reader.step == last and reader.meta["layout"]["zero"] == 1


def test_no_recompute_on_resume_drops_the_saved_granularity(tmp_path):
    """A run saved with --recompute --recompute-granularity selective, resumed with
    --no-recompute: the saved granularity went with the saved recompute, so it is
    dropped rather than refused ("granularity without --recompute")."""
    from minivit.parallel.runtime.cliconfig import write_toml
    run = tmp_path / "a"
    run.mkdir()
    write_toml(run / "config.toml", {"model": "vit-nano", "recompute": True,
                                     "recompute-granularity": "selective"})
    cfg = PRETRAIN.parse_config(PRETRAIN.build_parser(),
                                ["--resume", str(run), "--no-recompute"], 1)
    assert cfg.recompute is False and cfg.recompute_granularity is None
    kept = PRETRAIN.parse_config(PRETRAIN.build_parser(), ["--resume", str(run)], 1)
    assert kept.recompute is True and kept.recompute_granularity == "selective"
    # typed by the user, the contradiction is still an error
    with pytest.raises(SystemExit) as exc:
        PRETRAIN.parse_config(PRETRAIN.build_parser(), ["--resume", str(run), "--no-recompute",
                                                        "--recompute-granularity", "full"], 1)
    assert exc.value.code == 2
