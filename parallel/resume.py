"""Periodic checkpoints, ``--keep-last`` pruning and ``--resume`` for a training run.

``CheckpointManager`` owns the run's ``OUT/ckpt`` directory.  The training
loop is run in chunks that end at checkpoint steps (``run_in_chunks``), so a
checkpoint is written only after a step whose loss was finite; a non-finite
loss stops the run on every rank and names the last good checkpoint.
"""
from pathlib import Path

from minivit.checkpoint import checkpoint_path, prune_checkpoints

from .checkpoint import find_resume_checkpoint, load_checkpoint, save_checkpoint


class CheckpointManager:
    """Save every ``save_every`` steps (and at the last step) into ``directory``.

    adapter : state adapter (``parallel.checkpoint.DataParallelState``).
    world : world :class:`Communicator`.  preset, config : the run's model.
    save_every : steps between checkpoints (the final step is always saved);
        0 saves only the final step; < 0 never saves.  keep_last : keep only the newest K files (0 = all).
    meta : ``f(step) -> dict`` of the extra metadata (scheduler, loader, rng,
        run_config) at the moment of saving.
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

    def resume(self, run_dir):
        """Load the newest valid checkpoint of ``run_dir/ckpt``; returns its metadata.

        Raises CheckpointError on every rank when there is none, or it does not
        fit the model (first mismatch named).
        """
        path = find_resume_checkpoint(Path(run_dir) / "ckpt", self.world)
        meta = load_checkpoint(path, self.adapter, self.world, preset=self.preset,
                               config=self.config)
        self.last_path = Path(path)
        return meta

    def boundaries(self, start, steps):
        """Steps (1-based counts) in ``(start, steps]`` after which to save; always ends at steps."""
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


def run_in_chunks(train, manager, start, steps):
    """Call ``train(chunk_start, chunk_stop)`` up to each checkpoint boundary and save there.

    Returns the list of records ``train`` returned, concatenated.  A
    FloatingPointError (non-finite loss, raised on every rank) is re-raised
    naming the last good checkpoint, which is kept.
    """
    records, current = [], start
    for stop in manager.boundaries(start, steps):
        try:
            records += train(current, stop)
        except FloatingPointError as exc:
            kept = manager.last_path or "none saved yet"
            raise FloatingPointError(f"{exc}; stopped, last good checkpoint: {kept}") from None
        current = stop
        if manager.should_save(stop, steps):
            manager.save(stop)
    return records
