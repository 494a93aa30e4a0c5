"""Periodic checkpoints, ``--keep-last`` pruning and ``--resume`` for a training run.

``CheckpointManager`` owns the run's ``OUT/ckpt`` directory; ``Trainer.fit``
asks it after every step whether a save is due.  The loop raises on a
non-finite step before asking, so a checkpoint is only ever written after a
step whose loss was finite.  The write itself is atomic
(``minivit.checkpoint.CheckpointWriter``: a temporary file, fsync, rename).
"""
import dataclasses
import json
import math
import re
import tomllib
from pathlib import Path

from minivit.checkpoint import CheckpointError, CheckpointReader, checkpoint_path, prune_checkpoints

from .checkpoint import (agreed_error, find_resume_checkpoint, load_checkpoint,
                         save_checkpoint)


class CheckpointManager:
    """Save every ``save_every`` steps (and at the last step) into ``directory``.

    adapter : state adapter (``parallel.checkpoint.DataParallelState``).
    world : world :class:`Communicator`.  preset, config : the run's model.
    save_every : steps between checkpoints (the final step is always saved);
        0 saves only the final step; < 0 never saves.
    keep_last : keep only the newest K files (0 = all).
    Raises ValueError for keep_last < 0.
    """

    def __init__(self, directory, adapter, world, *, preset, config, save_every=0,
                 keep_last=0):
        if keep_last < 0:
            raise ValueError(f"keep_last={keep_last}: expected >= 0 (0 keeps every checkpoint)")
        self.directory = Path(directory)
        self.adapter, self.world = adapter, world
        self.preset, self.config = preset, config
        self.save_every, self.keep_last = save_every, keep_last
        self.last_path = None

    def load(self, path):
        """Load checkpoint ``path`` into every rank's state; returns its metadata.

        Raises CheckpointError on every rank when it does not fit the model
        (the first mismatch is named: preset, architecture, name, shape, dtype).
        """
        meta = load_checkpoint(path, self.adapter, self.world, preset=self.preset,
                               config=self.config)
        self.last_path = Path(path)
        return meta

    def save_due(self, step, steps):
        """True after step ``step`` (1-based) of ``steps`` when a checkpoint is due."""
        if self.save_every < 0:
            return False
        return step == steps or (self.save_every > 0 and step % self.save_every == 0)

    def save(self, step, meta):
        """Write ``ckpt/step_XXXXXXX.h5`` from every rank's state, then prune.

        meta : the run's metadata at this step (scheduler, loader, rng, nonfinite,
        run_config); collective over the world.  Returns the path.
        """
        path = checkpoint_path(self.directory, step)
        save_checkpoint(path, self.adapter, self.world,
                        dict(meta, step=step, preset=self.preset,
                             model_config=vars(self.config)))
        self.last_path = path
        if self.world.rank == 0:
            prune_checkpoints(self.directory, self.keep_last)
        return path


def resume_point(run_dir, world):
    """``(path, metadata)`` of the newest valid checkpoint in ``run_dir/ckpt``, on every rank.

    Raises CheckpointError on every rank, with the same message, when there is none
    or when a rank cannot read it (a folder some node does not see).
    """
    path = find_resume_checkpoint(Path(run_dir) / "ckpt", world)
    meta, local = None, ""
    try:
        with CheckpointReader(path) as reader:
            meta = reader.meta
    except CheckpointError as exc:
        local = str(exc)
    error = agreed_error(world, local)     # every rank raises, none waits in a collective
    if error:
        raise CheckpointError(error)
    return path, meta


def skipped_nonfinite(meta, path):
    """Non-finite steps the checkpointed run had skipped (``meta["nonfinite"]["skipped"]``).

    meta : checkpoint metadata; path : its file, for the message.  Checkpoints
    written before the count was stored have no ``nonfinite`` entry: 0.
    Raises CheckpointError for a count that is not an integer >= 0.
    """
    state = meta.get("nonfinite", {"skipped": 0})
    count = state.get("skipped") if isinstance(state, dict) else None
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise CheckpointError(f"{path}: nonfinite {state!r:.80}, expected "
                              "{'skipped': integer >= 0}")
    return count


def fork_metrics(source, dest, step):
    """Start ``dest`` (a fork's ``metrics.jsonl``) with ``source``'s records up to ``step``.

    ``source`` is only read.  An existing ``dest`` is left alone (``truncate_metrics``
    trims it); a missing ``source`` starts nothing.
    """
    source, dest = Path(source), Path(dest)
    if dest.exists() or not source.exists():
        return
    keep = [line for line in source.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    dest.write_text("".join(line + "\n" for line in keep))


def truncate_metrics(path, step):
    """Drop ``metrics.jsonl`` records of steps after ``step`` (they are about to be redone)."""
    path = Path(path)
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep))



# the process layout's flags and their defaults (dp: world / (tp x pp))
LAYOUT_DEFAULTS = {"dp": 1, "tp": 1, "pp": 1, "schedule": "1f1b", "virtual_stages": 1,
                   "timeline": None}


def describe_layout(flags):
    """``{flag dest: value}`` of the process layout in ``flags`` (a config's fields or a
    ``config.toml``'s keys).  The pipeline-only keys (schedule, virtual stages,
    timeline) are there with pp > 1 only; dp only when ``flags`` has it."""
    layout = {k: flags.get(k, LAYOUT_DEFAULTS[k]) for k in ("dp", "tp", "pp")}
    if layout["pp"] > 1:
        layout.update({k: flags.get(k, LAYOUT_DEFAULTS[k])
                       for k in ("schedule", "virtual_stages", "timeline")})
    if flags.get("dp") is None:
        del layout["dp"]
    return layout


def _layout_text(layout):
    """``tp=2 pp=2 schedule=1f1b``: the values that are not defaults (the schedule with
    pp > 1 always); ``one process`` when all are defaults."""
    shown = [f"{k}={v}" for k, v in layout.items()
             if k == "schedule" or v != LAYOUT_DEFAULTS[k]]
    return " ".join(shown) or "one process"


def layout_change(run_dir, cfg):
    """The line that says ``--resume run_dir`` runs in another process layout than the
    run's ``config.toml`` holds, with the flags that keep the saved one; None when the
    layout is the same or the file is missing.

    cfg : this launch's validated config.  ``--resume`` takes every flag of the run but
    its layout (a checkpoint resumes in any layout), so without this line a run saved at
    ``--tp 2 --pp 2`` and resumed with ``mpirun -n 4`` would quietly train at dp=4.
    """
    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        return None
    old, new = describe_layout(_saved_flags(path)), describe_layout(vars(cfg))
    if "dp" not in old:
        del new["dp"]               # a hand-written file: nothing to compare dp with
    if old.get("timeline") is None:   # a chart only this launch draws changes no layout
        old.pop("timeline", None)
        new.pop("timeline", None)
    if old == new:
        return None
    world = old["dp"] * old["tp"] * old["pp"] if "dp" in old else None
    if world == 1:      # a one-process run: no layout flag keeps it, the launch does
        return (f"resuming {run_dir} in layout {_layout_text(new)} (saved as one process); "
                "run it as one process (python run/pretrain.py, or mpirun -n 1) to keep it")
    flags = _keep_flags(old, new)
    how = [f"type {' '.join(flags)}"] if flags else ["run"]
    if world is not None and world != cfg.dp * cfg.tp * cfg.pp:
        how.append(f"on {world} ranks (mpirun -n {world})")
    return (f"resuming {run_dir} in layout {_layout_text(new)} (saved at "
            f"{_layout_text(old)}); {' '.join(how)} to keep it")


def _saved_flags(path):
    with open(path, "rb") as f:     # already read and checked as the flags' base layer
        return {k.replace("-", "_"): v for k, v in tomllib.load(f).items()}


def _keep_flags(old, new):
    """The flags that turn layout ``new`` into the saved ``old`` (dp follows from the
    world size and tp x pp; the other keys are typed again)."""
    return [f"--{k.replace('_', '-')} {v}" for k, v in old.items()
            if k != "dp" and v is not None and v != new.get(k, LAYOUT_DEFAULTS[k])]


def explain_resumed_values(message, run_dir, resumed, cfg, world_size):
    """``message`` (a flag check's error) followed by which of the values it names this
    launch took from ``run_dir/config.toml`` (not typed, not in ``--config``) and what to
    type instead; ``message`` unchanged when it names none of them.

    resumed : ``{flag dest: value}`` taken from the saved config.  cfg : this launch's
    config before validation (its ``dp`` may be None).  A run saved at ``--tp 2`` and
    resumed by a plain ``mpirun -n 2`` runs at dp=2, so its saved ``--global-batch 8``
    and ``--micro-batch 8`` no longer fit: the user typed neither, so say where they
    came from, and how to keep them.  A fix is offered only when the config passes
    with it: another ``--micro-batch`` in this launch, or the saved layout.
    """
    named = []
    for name in re.findall(r"--([a-z][a-z0-9-]*)", message):
        dest = name.replace("-", "_")
        if dest in resumed and dest not in named:
            named.append(dest)
    if not named:
        return message
    path = Path(run_dir) / "config.toml"
    values = " and ".join(f"--{d.replace('_', '-')} {resumed[d]}" for d in named)
    fixes = []
    dp = cfg.dp or world_size // max(1, cfg.tp * cfg.pp)
    if "micro_batch" in named and cfg.global_batch and dp and cfg.global_batch % dp == 0:
        micro = math.gcd(cfg.micro_batch, cfg.global_batch // dp)
        if _passes(dataclasses.replace(cfg, micro_batch=micro), world_size):
            fixes.append(f"type --micro-batch {micro}")
    saved = describe_layout(_saved_flags(path)) if path.is_file() else {}
    keep = _keep_flags(saved, describe_layout(vars(cfg)))
    world = saved["dp"] * saved["tp"] * saved["pp"] if "dp" in saved else world_size
    layout = {k: v for k, v in saved.items() if k != "dp"}
    if keep and _passes(dataclasses.replace(cfg, dp=None, **layout), world):
        ranks = f" on {world} ranks (mpirun -n {world})" if world != world_size else ""
        fixes.append(f"{'or ' if fixes else 'type '}{' '.join(keep)}{ranks} to keep the "
                     "saved layout")
    how = f": {', '.join(fixes)}" if fixes else ""
    return f"{message} ({values} from {path}, the run being resumed{how})"


def _passes(cfg, world_size):
    try:
        cfg.validate(world_size)
    except ValueError:
        return False
    return True
