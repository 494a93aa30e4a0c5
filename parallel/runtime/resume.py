"""Periodic checkpoints, ``--keep-last`` pruning and ``--resume`` for a training run.

``CheckpointManager`` owns the run's ``OUT/ckpt`` directory.  The training
loop is run in chunks that end at checkpoint steps (``run_in_chunks``), so a
checkpoint is written only after a step whose loss was finite; a non-finite
loss stops the run on every rank and names the last good checkpoint.
"""
from pathlib import Path

import json

from minivit.checkpoint import CheckpointError, CheckpointReader, checkpoint_path, prune_checkpoints

from .checkpoint import find_resume_checkpoint, load_checkpoint, save_checkpoint


class CheckpointManager:
    """Save every ``save_every`` steps (and at the last step) into ``directory``.

    adapter : state adapter (``parallel.checkpoint.DataParallelState``).
    world : world :class:`Communicator`.  preset, config : the run's model.
    save_every : steps between checkpoints (the final step is always saved);
        0 saves only the final step; < 0 never saves.
    keep_last : keep only the newest K files (0 = all).
    meta : ``f(step) -> dict`` of the extra metadata (scheduler, loader, rng,
        nonfinite, run_config) at the moment of saving.
    Raises ValueError for keep_last < 0.
    """

    def __init__(self, directory, adapter, world, *, preset, config, save_every=0,
                 keep_last=0, meta=lambda step: {}):
        if keep_last < 0:
            raise ValueError(f"keep_last={keep_last}: expected >= 0 (0 keeps every checkpoint)")
        self.directory = Path(directory)
        self.adapter, self.world = adapter, world
        self.preset, self.config = preset, config
        self.save_every, self.keep_last, self.meta = save_every, keep_last, meta
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

    def boundaries(self, start, steps):
        """Steps (1-based counts) in ``(start, steps]`` that end a chunk; the last is ``steps``."""
        if start >= steps:
            return []
        if self.save_every > 0:
            marks = list(range((start // self.save_every + 1) * self.save_every, steps,
                               self.save_every))
        else:
            marks = []
        return marks + [steps]

    def should_save(self, step, steps):
        if self.save_every < 0:
            return False
        return step == steps or (self.save_every > 0 and step % self.save_every == 0)

    def save(self, step):
        """Write ``ckpt/step_XXXXXXX.h5`` from every rank's state, then prune."""
        path = checkpoint_path(self.directory, step)
        save_checkpoint(path, self.adapter, self.world,
                        dict(self.meta(step), step=step, preset=self.preset,
                             model_config=vars(self.config)))
        self.last_path = path
        if self.world.rank == 0:
            prune_checkpoints(self.directory, self.keep_last)
        return path


def run_in_chunks(train, manager, start, steps, preempted=None):
    """Call ``train(chunk_start, chunk_stop)`` up to each checkpoint boundary and save there.

    Returns the list of records ``train`` returned, concatenated.  A
    FloatingPointError (non-finite loss, raised on every rank) is re-raised
    naming the last good checkpoint, which is kept.
    preempted : optional ``f() -> bool``, True on every rank alike once the ranks
        agreed to stop (``parallel.preempt.Preemption.stopped``); ``train`` then
        returned early, and a checkpoint is written at the last completed step
        (even with ``--save-every -1``: preemption must not lose the work) before
        returning.
    """
    records, current = [], start
    for stop in manager.boundaries(start, steps):
        try:
            chunk = train(current, stop)
        except FloatingPointError as exc:
            kept = manager.last_path or "none saved yet"
            raise FloatingPointError(f"{exc}; stopped, last good checkpoint: {kept}") from None
        records += chunk
        early = preempted is not None and preempted()
        current = chunk[-1]["step"] if chunk else current
        if manager.should_save(current, steps) or (early and current > start):
            manager.save(current)
        if early:
            break
    return records


def add_checkpoint_flags(parser):
    """``--save-every``, ``--keep-last`` and ``--resume`` on an argparse parser."""
    parser.add_argument("--save-every", type=int, default=0,
                        help="write OUT/ckpt/step_XXXXXXX.h5 every K optimizer steps and after "
                             "the last; 0: only after the last; -1: never")
    parser.add_argument("--keep-last", type=int, default=0,
                        help="keep only the newest K checkpoints (0 keeps all)")
    parser.add_argument("--resume", default=None, metavar="OUT",
                        help="continue the run in OUT from its newest valid checkpoint "
                             "(any layout; corrupt files are skipped with a warning); "
                             "its OUT/config.toml is the base layer of the flags (below --config "
                             "and the command line; its resume/out and layout keys ignored); "
                             "--out defaults to OUT (another --out forks into a new folder)")


def check_checkpoint_flags(args, parser):
    """Flag arithmetic only (identical verdict on every rank); parser.error exits 2."""
    if args.save_every < -1:
        parser.error(f"--save-every {args.save_every}: expected >= 1, 0 (final only) or -1")
    if args.keep_last < 0:
        parser.error(f"--keep-last {args.keep_last}: expected >= 0 (0 keeps all)")
    if args.resume is not None and not Path(args.resume).is_dir():
        parser.error(f"--resume {args.resume}: no such run directory")


def resume_point(run_dir, world):
    """``(path, metadata)`` of the newest valid checkpoint in ``run_dir/ckpt``, on every rank.

    Raises CheckpointError on every rank when there is none.
    """
    path = find_resume_checkpoint(Path(run_dir) / "ckpt", world)
    with CheckpointReader(path) as reader:
        return path, reader.meta


def data_state(batches, global_batch):
    """JSON-able position of the training data after the last step.

    A ``minivit.io.Loader`` (``batches.loader``) stores its ``state_dict``; the
    position is also kept in samples so another micro-batch x dp can resume it.
    The in-memory ``StepBatches`` is a pure function of the step.
    """
    loader = getattr(batches, "loader", None)
    if loader is None:
        return {"kind": "steps", "global_batch": global_batch}
    state = loader.state_dict()
    return {"kind": "loader", **state, "samples": state["step"] * loader.global_batch,
            "global_batch": global_batch}


def restore_loader(loader, state, global_batch, path):
    """Move ``loader`` to the saved position; raises CheckpointError if it cannot be exact."""
    if state.get("kind") != "loader":
        raise CheckpointError(f"{path}: data state {state.get('kind')!r}, this run reads "
                              "through a Loader: expected the same --data")
    check_global_batch(state, global_batch, path)
    if state["samples"] % loader.global_batch:
        raise CheckpointError(f"{path}: data position {state['samples']} samples is not a "
                              f"multiple of micro-batch x dp = {loader.global_batch}")
    loader.load_state_dict({"epoch": state["epoch"], "seed": state["seed"],
                            "step": state["samples"] // loader.global_batch})


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


def check_global_batch(state, global_batch, path):
    if state.get("global_batch") != global_batch:
        raise CheckpointError(f"{path}: saved with global batch {state.get('global_batch')}, "
                              f"this run uses {global_batch}: expected the same --global-batch "
                              "to resume the data order exactly")


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
