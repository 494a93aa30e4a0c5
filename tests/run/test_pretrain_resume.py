"""run/pretrain.py --save-every/--keep-last/--resume end to end (float32, vit-nano):
same-layout resume bitwise, cross-layout resume to 1e-6 (dp=2 ZeRO-3 -> 1 process;
1 process -> dp=2 through the Loader; ZeRO 0-2 in test_checkpoint_parallel.py),
fallback past a corrupt newest checkpoint, and the clear every-rank errors (no
valid checkpoint, another preset, non-finite loss)."""
import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from minivit.checkpoint import latest_valid_checkpoint

PRETRAIN = str(ROOT / "run" / "pretrain.py")
DRIVER = str(ROOT / "tests" / "support" / "resume_error_driver.py")
COMMON = ["--model", "vit-nano", "--data", "random", "--micro-batch", "4", "--global-batch",
          "16", "--steps", "6", "--warmup", "2", "--lr", "3e-3", "--random-samples", "64",
          "--threads", "1", "--no-progress", "--save-every", "2"]


def _losses(out):
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r.get("kind", "train") == "train"}


def _single(args, cwd=ROOT):
    return subprocess.run([sys.executable, PRETRAIN, *map(str, args)], capture_output=True,
                          text=True, timeout=180, cwd=cwd)


def test_resume_same_layout_bitwise_and_other_layout_close(run_mpi, tmp_path):
    full = tmp_path / "full"
    run_mpi(2, [PRETRAIN, *COMMON, "--zero", "3", "--keep-last", "2", "--out", full],
            timeout=180)
    assert sorted(p.name for p in (full / "ckpt").iterdir()) == ["step_0000004.h5",
                                                                   "step_0000006.h5"]
    reference = _losses(full)
    assert sorted(reference) == [1, 2, 3, 4, 5, 6]

    # an interrupted run: its newest checkpoint is corrupt, so resume falls back to step 4
    cut = tmp_path / "cut"
    (cut / "ckpt").mkdir(parents=True)
    shutil.copy(full / "ckpt" / "step_0000004.h5", cut / "ckpt")
    (cut / "ckpt" / "step_0000006.h5").write_bytes(
        (full / "ckpt" / "step_0000006.h5").read_bytes()[:5000])          # truncated
    lines = [ln for ln in (full / "metrics.jsonl").read_text().splitlines()
             if json.loads(ln).get("step", 0) <= 5]
    (cut / "metrics.jsonl").write_text("\n".join(lines) + "\n")          # died after step 5
    proc = run_mpi(2, [PRETRAIN, *COMMON, "--zero", "3", "--resume", cut], timeout=180)
    assert proc.stderr.count("skipping invalid checkpoint") == 1, proc.stderr   # rank 0 only
    assert "[minivit rank 0] warning: skipping invalid checkpoint" in proc.stderr
    assert "UserWarning" not in proc.stderr and "warnings.warn" not in proc.stderr
    assert "step_0000006.h5: 5000 bytes, expected" in proc.stderr
    assert "at step 4" in proc.stdout
    resumed = _losses(cut)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]                  # step 5 redone, not doubled
    assert [resumed[s] for s in (5, 6)] == [reference[s] for s in (5, 6)]     # bitwise
    assert latest_valid_checkpoint(cut / "ckpt") == cut / "ckpt" / "step_0000006.h5"

    # another layout: one process, plain AdamW, from the dp=2 x ZeRO-3 checkpoint of step 4
    other = tmp_path / "other"
    (other / "ckpt").mkdir(parents=True)
    shutil.copy(full / "ckpt" / "step_0000004.h5", other / "ckpt")
    proc = _single([*COMMON, "--resume", other])
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = _losses(other)
    np.testing.assert_allclose([got[5], got[6]], [reference[5], reference[6]], rtol=1e-6)


def test_resume_errors_on_every_rank(run_mpi, tmp_path):
    empty = tmp_path / "empty"
    (empty / "ckpt").mkdir(parents=True)
    (empty / "ckpt" / "step_0000002.h5").write_bytes(b"\x89HDF junk")
    proc = run_mpi(2, [PRETRAIN, *COMMON, "--resume", empty], timeout=120, check=False)
    assert proc.returncode != 0
    # agreed on every rank, printed once (by rank 0)
    assert proc.stderr.count(f"error: no valid checkpoint in {empty / 'ckpt'}") == 1, proc.stderr

    # a checkpoint of vit-nano resumed as vit-micro: the preset is the first mismatch,
    # printed once, and every rank returns 1 (each writes its code through the driver)
    run = tmp_path / "nano"
    proc = _single([*COMMON, "--steps", "2", "--out", run])
    assert proc.returncode == 0, proc.stderr[-3000:]
    micro = [a if a != "vit-nano" else "vit-micro" for a in COMMON]
    codes = tmp_path / "codes"
    codes.mkdir()
    proc = run_mpi(2, [DRIVER, run, codes, "--", *micro, "--resume", run], timeout=120,
                   check=False)
    assert proc.returncode != 0
    message = "checkpoint of model preset 'vit-nano', but this run builds 'vit-micro'"
    assert proc.stderr.count(message) == 1, proc.stderr
    assert [(codes / f"rank{r}").read_text() for r in (0, 1)] == ["1", "1"]

    # a checkpoint only rank 1 cannot read: every rank raises the same message, naming
    # rank 1 and its reason (so that rank 0 alone can print it for all)
    proc = run_mpi(2, [DRIVER, run, codes, "unreadable"], timeout=120)
    said = {(codes / f"rank{r}").read_text() for r in (0, 1)}
    assert said == {f"raised: rank 1: {run / 'ckpt' / 'step_0000002.h5'}: cannot read "
                    "(not mounted on this node)"}, said


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(run_mpi, tmp_path):
    out = tmp_path / "nan"
    args = [a for a in COMMON]
    args[args.index("--lr") + 1] = "1e30"          # the first update overflows the weights
    args[args.index("--save-every") + 1] = "1"
    proc = run_mpi(2, [PRETRAIN, *args, "--out", out], timeout=120, check=False)
    assert proc.returncode != 0
    good = out / "ckpt" / "step_0000001.h5"
    message = f"loss became nan at step 2; stopped, last good checkpoint: {good}"
    assert proc.stderr.count(message) == 1, proc.stderr[-3000:]     # once, by rank 0
    assert latest_valid_checkpoint(out / "ckpt") == good
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == ["step_0000001.h5"]


def test_resume_through_the_loader_on_another_layout(run_mpi, tmp_path):
    """On-the-fly FractalDB through minivit.io.Loader: the loader position is restored
    (saved by 1 process, resumed at dp=2: micro x dp differs, the sample position not)."""
    args = ["--model", "vit-nano", "--data", "synthetic:fractaldb", "--classes", "4",
            "--instances", "20", "--holdout", "0", "--micro-batch", "4", "--global-batch", "8",
            "--steps", "6", "--warmup", "1", "--threads", "1", "--no-progress",
            "--save-every", "2"]
    full = tmp_path / "full"
    proc = _single([*args, "--out", full])
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = _losses(full)
    resumed = tmp_path / "resumed"
    (resumed / "ckpt").mkdir(parents=True)
    shutil.copy(full / "ckpt" / "step_0000004.h5", resumed / "ckpt")
    shutil.copy(full / "config.toml", resumed)               # saved at dp=1
    proc = run_mpi(2, [PRETRAIN, *args, "--resume", resumed], timeout=180)
    # the layout is this launch's, not the run's: rank 0 says so once
    note = (f"resuming {resumed} in layout dp=2 (saved as one process); run it as one process "
            "(python run/pretrain.py, or mpirun -n 1) to keep it")
    assert proc.stdout.count(note) == 1, proc.stdout
    got = _losses(resumed)
    assert sorted(got) == [5, 6]
    np.testing.assert_allclose([got[5], got[6]], [reference[5], reference[6]], rtol=1e-6)


def _pretrain_module():
    spec = importlib.util.spec_from_file_location("pretrain_under_test", PRETRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resume_flag_layers(tmp_path):
    """defaults < RESUME/config.toml (minus resume/out/dp) < --config FILE < command line;
    with a resume, out is the resumed folder unless --out is typed."""
    pretrain = _pretrain_module()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text('model = "vit-nano"\nmicro-batch = 8\nglobal-batch = 16\n'
                                     'dp = 2\ntp = 2\nlr = 0.002\nout = "elsewhere"\n'
                                     'resume = "older"\n')
    args = pretrain.parse_args(pretrain.build_parser(), ["--resume", str(run)])
    assert (args.model, args.micro_batch, args.global_batch, args.lr) == ("vit-nano", 8, 16,
                                                                          0.002)
    assert (args.out, args.resume, args.dp, args.tp) == (str(run), str(run), None, 1)
    cfg = tmp_path / "cfg.toml"
    cfg.write_text('micro-batch = 4\nout = "cfg-out"\n')
    args = pretrain.parse_args(pretrain.build_parser(),
                               ["--config", str(cfg), "--resume", str(run), "--lr", "0.1"])
    assert (args.micro_batch, args.global_batch, args.lr, args.out) == (4, 16, 0.1, str(run))
    args = pretrain.parse_args(pretrain.build_parser(),
                               ["--resume", str(run), "--out", str(tmp_path / "fork")])
    assert args.out == str(tmp_path / "fork")
    args = pretrain.parse_args(pretrain.build_parser(), ["--resume", str(tmp_path)])
    assert args.micro_batch == 16 and args.out == str(tmp_path)   # no config.toml: defaults
    args = pretrain.parse_args(pretrain.build_parser(), ["--config", str(cfg)])
    assert args.out == "cfg-out"                                  # no resume: as before


def _usage_error(argv, world_size, capsys):
    pretrain = _pretrain_module()
    with pytest.raises(SystemExit) as exit_:
        pretrain.parse_config(pretrain.build_parser(), list(map(str, argv)), world_size)
    assert exit_.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_resumed_values_that_no_longer_fit_say_where_they_came_from(tmp_path, capsys):
    """A tp=2 run resumed by a plain 2-rank launch runs at dp=2, and its saved batch no
    longer divides: the error names the values taken from OUT/config.toml (not the ones
    typed) and the fixes that pass: another --micro-batch, or the saved layout."""
    run = tmp_path / "a"
    run.mkdir()
    (run / "config.toml").write_text('model = "vit-nano"\nmicro-batch = 8\n'
                                     'global-batch = 8\ndp = 1\ntp = 2\npp = 1\n')
    toml = run / "config.toml"
    err = _usage_error(["--resume", run], 2, capsys)
    assert err.split(": error: ")[1] == (
        "--global-batch 8 is not divisible by --micro-batch 8 x dp 2 = 16: "
        "expected a multiple of it (global = micro x accumulation x dp) (--global-batch 8 and "
        f"--micro-batch 8 from {toml}, the run being resumed: type --micro-batch 4, or --tp 2 "
        "to keep the saved layout)")
    # a typed value is the user's own: only the other one is attributed to the file
    err = _usage_error(["--resume", run, "--micro-batch", "8"], 2, capsys)
    assert f"(--global-batch 8 from {toml}, the run being resumed: type --tp 2 to" in err
    # another world size: the saved layout needs its own rank count
    err = _usage_error(["--resume", run], 4, capsys)
    assert "type --micro-batch 2, or --tp 2 on 2 ranks (mpirun -n 2) to keep the saved" in err
    # an error about typed values only is left as it was
    err = _usage_error(["--resume", run, "--micro-batch", "3", "--global-batch", "8"], 2,
                       capsys)
    assert err.endswith("(global = micro x accumulation x dp)") and str(toml) not in err
    # no fix is offered that would fail too
    (run / "config.toml").write_text('model = "vit-nano"\nmicro-batch = 4\n'
                                     'global-batch = 8\ndp = 1\ntp = 2\nlr = -1.0\n')
    err = _usage_error(["--resume", run], 2, capsys)
    assert err.endswith(f"--lr -1.0: expected a finite number >= 0 (--lr -1.0 from {toml}, "
                        "the run being resumed)"), err


def test_resumed_batch_error_under_mpirun_is_printed_once(run_mpi, tmp_path):
    run = tmp_path / "a"
    run.mkdir()
    (run / "config.toml").write_text('model = "vit-nano"\nmicro-batch = 8\n'
                                     'global-batch = 8\ndp = 1\ntp = 2\n')
    proc = run_mpi(2, [PRETRAIN, "--resume", run], timeout=120, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("type --micro-batch 4, or --tp 2 to keep the saved layout") == 1
    assert "Traceback" not in proc.stderr


def test_resume_alone_reloads_the_runs_flags(tmp_path):
    """--resume OUT alone continues a run of non-default --micro-batch/--global-batch with
    the losses of the uninterrupted run; the `out =` line of the TOML (here: the full run's
    folder) redirects neither --resume OUT nor --config FILE --resume OUT; --out forks."""
    flags = ["--model", "vit-nano", "--data", "random", "--micro-batch", "2",
             "--global-batch", "8", "--steps", "4", "--warmup", "1", "--lr", "3e-3",
             "--random-samples", "32", "--threads", "1", "--no-progress", "--save-every", "2",
             "--eval-every", "0"]
    full = tmp_path / "full"
    proc = _single([*flags, "--out", full])
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = _losses(full)
    assert sorted(reference) == [1, 2, 3, 4]
    snapshot = {p.name: p.read_bytes() for p in full.iterdir() if p.is_file()}

    def interrupted(name):      # stopped after step 3, last checkpoint at step 2
        cut = tmp_path / name
        (cut / "ckpt").mkdir(parents=True)
        shutil.copy(full / "ckpt" / "step_0000002.h5", cut / "ckpt")
        shutil.copy(full / "config.toml", cut)          # its `out` line names `full`
        lines = [ln for ln in (full / "metrics.jsonl").read_text().splitlines()
                 if json.loads(ln).get("step", 0) <= 3]
        (cut / "metrics.jsonl").write_text("\n".join(lines) + "\n")
        return cut

    # a fresh run's trend starts at step 1, implied; a resumed one names its steps
    r = reference
    assert f"after 4 steps: loss {r[1]:.4f} -> {r[4]:.4f} (" in proc.stdout, proc.stdout
    cut = interrupted("cut")
    proc = _single(["--resume", cut])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at step 2" in proc.stdout and " in layout " not in proc.stdout  # the same one
    assert (f"after 4 steps (resumed at step 2): loss {r[3]:.4f} at step 3 -> {r[4]:.4f} "
            "at step 4 (") in proc.stdout, proc.stdout
    got = _losses(cut)
    assert sorted(got) == [1, 2, 3, 4]
    assert got == reference                                      # bitwise, same process count
    assert (cut / "ckpt" / "step_0000004.h5").exists()

    cut2 = interrupted("cut2")
    proc = _single(["--config", full / "config.toml", "--resume", cut2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _losses(cut2) == reference

    cut3 = interrupted("cut3")
    cut_before = {p.name: p.read_bytes() for p in cut3.iterdir() if p.is_file()}
    fork = tmp_path / "fork"
    proc = _single(["--resume", cut3, "--out", fork])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _losses(fork) == reference              # steps 1-2 copied, 3-4 run in the fork
    assert {p.name: p.read_bytes() for p in cut3.iterdir() if p.is_file()} == cut_before
    assert sorted(p.name for p in (cut3 / "ckpt").iterdir()) == ["step_0000002.h5"]
    assert (fork / "ckpt" / "step_0000004.h5").exists()

    # nothing above wrote into the full run's folder
    assert {p.name: p.read_bytes() for p in full.iterdir() if p.is_file()} == snapshot
    assert sorted(p.name for p in (full / "ckpt").iterdir()) == ["step_0000002.h5",
                                                                   "step_0000004.h5"]


def test_no_valid_checkpoint_warns_and_errs_in_minivit_lines(tmp_path):
    """A damaged file is skipped with a `[minivit rank 0] warning:` line (not Python's
    warning with its source line); the error says what the folder held and that a run
    saves its last step by default (not only with --save-every)."""
    flags = ["--model", "vit-nano", "--data", "random", "--threads", "1"]
    damaged = tmp_path / "damaged"
    (damaged / "ckpt").mkdir(parents=True)
    (damaged / "ckpt" / "step_0000002.h5").write_bytes(b"\x89HDF junk")
    proc = _single([*flags, "--resume", damaged])
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("[minivit rank 0] warning: skipping invalid checkpoint "
                               f"{damaged / 'ckpt' / 'step_0000002.h5'}: "), proc.stderr
    assert lines[1] == (f"[minivit rank 0] error: no valid checkpoint in {damaged / 'ckpt'}: "
                        "its only step_XXXXXXX.h5 file did not open and verify (warning "
                        "above); a run saves one at its last step (and every K steps with "
                        "--save-every K) unless --save-every -1"), proc.stderr
    assert len(lines) == 2
    empty = tmp_path / "empty"
    (empty / "ckpt").mkdir(parents=True)
    proc = _single([*flags, "--resume", empty])
    assert proc.returncode == 1
    assert f"no valid checkpoint in {empty / 'ckpt'}: it holds no step_XXXXXXX.h5 file;" \
        in proc.stderr and "warning" not in proc.stderr


def test_refused_resume_leaves_the_run_untouched(tmp_path):
    run = tmp_path / "run"
    proc = _single([*COMMON, "--steps", "2", "--out", run])
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = {name: (run / name).read_bytes()
              for name in ("config.toml", "config.json", "metrics.jsonl")}
    proc = _single(["--resume", run, "--classes", "5"])     # the checkpoint has 10 classes
    assert proc.returncode != 0
    assert "error:" in proc.stderr and "class" in proc.stderr, proc.stderr[-3000:]
    assert {name: (run / name).read_bytes() for name in before} == before
    assert not list(run.glob("*.tmp.*"))


def test_resume_of_a_finished_run_says_so_and_changes_nothing(tmp_path):
    out = tmp_path / "done"
    _single([*COMMON, "--steps", "2", "--out", str(out)])
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    # a typed flag that config.toml would record: a launch that trains nothing writes nothing
    proc = _single(["--resume", str(out), "--lr", "0.5"])
    assert "already at step 2 of --steps 2: nothing to do" in proc.stdout
    # no second header in metrics.jsonl, and config.toml/json keep the run that ran
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert {"metrics.jsonl", "config.toml", "config.json"} <= set(before)


def test_summary_line_of_a_resumed_launch_names_its_steps():
    """A resumed launch has no step 1 and no step-0 evaluation: both trends say at which
    step they start, so "60% -> 62%" is not read as the whole run's progress."""
    from minivit.parallel.runtime.trainer import summary_line
    records = [{"step": 101, "loss": 2.0}, {"step": 150, "loss": 1.5}]
    evals = [{"step": 120, "accuracy": 0.6, "samples": 200},
             {"step": 150, "accuracy": 0.625, "samples": 200}]
    assert summary_line(records, evals, 10, resumed=True) == (
        "after 150 steps (resumed at step 100): loss 2.0000 at step 101 -> 1.5000 at step "
        "150 (-25%); held-out top-1 60.0% at step 120 -> 62.5% at step 150 on 10 classes "
        "(chance 10.0%, 200 images)")
    fresh = [{"step": 1, "loss": 2.0}, {"step": 50, "loss": 1.5}]
    evals[0]["step"] = 0
    assert summary_line(fresh, evals, 10) == (
        "after 50 steps: loss 2.0000 -> 1.5000 (-25%); held-out top-1 60.0% -> 62.5% on 10 "
        "classes (chance 10.0%, 200 images)")


def test_summary_line_prints_a_single_point_once():
    """A one-step resume and a launch with one evaluation have one point per trend: it is
    printed once, not compared with itself ("34.0% at step 9 -> 34.0% at step 9")."""
    from minivit.parallel.runtime.trainer import summary_line
    one = [{"step": 16, "loss": 2.0286}]
    evals = [{"step": 16, "accuracy": 0.34, "samples": 200}]
    assert summary_line(one, evals, 10, resumed=True) == (
        "after 16 steps (resumed at step 15): loss 2.0286 at step 16; held-out top-1 34.0% "
        "at step 16 on 10 classes (chance 10.0%, 200 images)")
    records = [{"step": 7, "loss": 2.0}, {"step": 9, "loss": 1.0}]
    line = summary_line(records, [{**evals[0], "step": 9}], 10, resumed=True)
    assert "loss 2.0000 at step 7 -> 1.0000 at step 9 (-50%); held-out top-1 34.0% at step " \
           "9 on 10 classes" in line, line
    assert "-> 34.0%" not in line
    # one step in all: "after 1 step", not "after 1 steps"
    assert summary_line([{"step": 1, "loss": 2.0}], [], 10).startswith("after 1 step: loss 2.0000")


@pytest.mark.parametrize("last, shown", [(2.004, "+0.2%"), (1.9966, "-0.2%"),
                                         (2.0, "+0.0%"), (1.5, "-25%"), (2.05, "+2%")])
def test_summary_line_small_changes_keep_one_decimal(last, shown):
    """|change| < 1% prints one decimal: a +0.2% change is not "(+0%)"."""
    from minivit.parallel.runtime.trainer import summary_line
    records = [{"step": 1, "loss": 2.0}, {"step": 50, "loss": last}]
    assert summary_line(records, [], 10) == f"after 50 steps: loss 2.0000 -> {last:.4f} ({shown})"


def test_layout_change_names_both_layouts_and_the_flags_to_keep_it(tmp_path):
    """--resume takes the run's flags but not its process layout; the line rank 0 prints
    names the layout it runs in, the saved one and what to type to keep that."""
    from minivit.parallel.runtime.cliconfig import write_toml
    from minivit.parallel.runtime.config import PretrainConfig
    from minivit.parallel.runtime.resume import layout_change
    run = tmp_path / "a"
    run.mkdir()

    def config(world, **layout):
        return PretrainConfig(model="vit-nano", data="random", micro_batch=2, global_batch=16,
                              resume=str(run), **layout).validate(world)

    assert layout_change(run, config(4)) is None                 # no config.toml: no claim
    write_toml(run / "config.toml", config(4, tp=2, pp=2).flags())
    assert layout_change(run, config(4)) == (
        f"resuming {run} in layout dp=4 (saved at tp=2 pp=2 schedule=1f1b); type --tp 2 "
        "--pp 2 to keep it")
    assert layout_change(run, config(4, tp=2, pp=2)) is None
    assert layout_change(run, config(8, tp=2, pp=2)) == (
        f"resuming {run} in layout dp=2 tp=2 pp=2 schedule=1f1b (saved at tp=2 pp=2 "
        "schedule=1f1b); run on 4 ranks (mpirun -n 4) to keep it")
    write_toml(run / "config.toml", config(4, pp=2, schedule="interleaved", virtual_stages=2,
                                           timeline="a.png").flags())
    assert layout_change(run, config(4, pp=2)) == (
        f"resuming {run} in layout dp=2 pp=2 schedule=1f1b (saved at dp=2 pp=2 "
        "schedule=interleaved virtual_stages=2 timeline=a.png); type --schedule interleaved "
        "--virtual-stages 2 --timeline a.png to keep it")
    write_toml(run / "config.toml", config(2, pp=2).flags())
    assert layout_change(run, config(2, pp=2, timeline="b.png")) is None   # only a new chart
    # saved by one process: no flag keeps that, the launch does
    write_toml(run / "config.toml", config(1).flags())
    assert layout_change(run, config(2, tp=2)) == (
        f"resuming {run} in layout tp=2 (saved as one process); run it as one process "
        "(python run/pretrain.py, or mpirun -n 1) to keep it")

