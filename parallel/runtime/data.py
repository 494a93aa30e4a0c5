"""The data of a run: per-step micro-batches, the held-out evaluator, and their state.

Which samples a rank reads is decided in one place, ``minivit.io.Loader``
(``batch_positions``): every source, ``--data random`` included, goes through
it.  ``LoaderSteps`` groups ``accum`` consecutive loader batches into one
optimizer step.  The checkpointed data state is the loader's ``(epoch, step,
seed)``, also kept in samples so another micro-batch x dp can resume it.
"""
from dataclasses import dataclass

from minivit.checkpoint import CheckpointError
from minivit.config import get_config
from minivit.io import Loader
from minivit.io.mixup import MixedSteps
from minivit.io.sources import LoaderSteps, open_data, spread_subset

from .evaluate import Evaluator


@dataclass
class RunData:
    """What a run trains and evaluates on, on this rank.

    config : the model's ``ViTConfig`` (its class count comes from the data).
    preset : the model preset name.  spec : the ``--data`` string.
    batches : iterator of ``(epoch, [(x, y), ...])`` per optimizer step.
    evaluator : held-out ``Evaluator``, or None (no evaluation).
    description : one line for the log.  num_classes : labels in the data.
    test_set : the test dataset (fine-tuning: evaluated once after training, never
        used to choose anything), or None.
    """
    config: object
    preset: str
    spec: str
    batches: object
    evaluator: object
    description: str
    num_classes: int
    test_set: object = None

    def close(self):
        """Stop the loader and evaluator threads."""
        if self.evaluator is not None:
            self.evaluator.close()
        loader = getattr(self.batches, "loader", None)   # a plain iterator has none
        if loader is not None:
            loader.close()


def pretrain_data(cfg, grid, resume=None):
    """``RunData`` of a validated ``PretrainConfig`` on this rank's dp slice.

    resume : ``(path, metadata)`` of the checkpoint to continue from, or None:
    the loader is moved to its saved position (CheckpointError if it cannot be exact).
    """
    preset = get_config(cfg.model)
    classes = cfg.classes
    if classes is None and (cfg.data.startswith("synthetic:") or cfg.data == "random"):
        classes = preset.num_classes
    splits = open_data(cfg.data, classes=classes, image_size=preset.image_size,
                       seed=cfg.data_seed, instances=cfg.instances, holdout=cfg.holdout,
                       eval_spec=cfg.eval_data, random_samples=cfg.random_samples,
                       random_seed=cfg.seed)
    config = get_config(cfg.model, num_classes=splits.num_classes, dtype=cfg.dtype)
    loader = Loader(splits.train, cfg.micro_batch, rank=grid.dp_rank, world_size=grid.dp,
                    seed=cfg.seed, augment=cfg.augment or None, image_size=config.image_size,
                    num_threads=cfg.loader_threads)
    if resume:
        restore_loader(loader, resume[1].get("loader", {}), cfg.global_batch, resume[0])
    heldout = splits.eval
    if heldout is not None and cfg.eval_samples:
        heldout = spread_subset(heldout, cfg.eval_samples)
    evaluator = (Evaluator(heldout, grid.dp_group, cfg.eval_batch, config.image_size,
                           cfg.dtype, num_threads=cfg.loader_threads)
                 if heldout is not None else None)
    return RunData(config, cfg.model, cfg.data, step_batches(cfg, loader, splits.num_classes),
                   evaluator, splits.description, splits.num_classes)


def step_batches(cfg, loader, num_classes):
    """Per-step micro-batches of ``loader``: ``LoaderSteps``, or ``MixedSteps`` (soft
    targets mixed over the global batch, seeded by (seed, epoch, step)) with
    ``--mixup``/``--cutmix``."""
    mixing = cfg.mixing()
    if mixing is None:
        return LoaderSteps(loader, cfg.accum, cfg.dtype)
    return MixedSteps(loader, cfg.accum, mixing, num_classes, cfg.dtype)


def data_state(batches, global_batch):
    """JSON-able position of the training data after the last step (``LoaderSteps``)."""
    state = batches.loader.state_dict()
    return {"kind": "loader", **state, "samples": state["step"] * batches.loader.global_batch,
            "global_batch": global_batch}


def restore_loader(loader, state, global_batch, path):
    """Move ``loader`` to the saved position; raises CheckpointError if it cannot be exact."""
    if state.get("kind") != "loader":
        raise CheckpointError(f"{path}: data state {state.get('kind')!r}, this run reads "
                              "through a Loader: expected a checkpoint of the same --data")
    if state.get("global_batch") != global_batch:
        raise CheckpointError(f"{path}: saved with global batch {state.get('global_batch')}, "
                              f"this run uses {global_batch}: expected the same --global-batch "
                              "to resume the data order exactly")
    if state["samples"] % loader.global_batch:
        raise CheckpointError(f"{path}: data position {state['samples']} samples is not a "
                              f"multiple of micro-batch x dp = {loader.global_batch}")
    loader.load_state_dict({"epoch": state["epoch"], "seed": state["seed"],
                            "step": state["samples"] // loader.global_batch})


def finetune_data(cfg, grid, preset, image_size):
    """``(RunData, steps per epoch)`` of a validated ``FinetuneConfig`` on this rank.

    preset, image_size : the architecture's preset name and input side (pixels).
    Raises ValueError when the training split holds no full global batch.
    """
    splits = open_data(cfg.data, image_size=image_size, holdout=cfg.holdout,
                       eval_spec=cfg.eval_data, split_seed=cfg.split_seed,
                       labels_per_class=cfg.labels_per_class, test_spec=cfg.test_data)
    loader = Loader(splits.train, cfg.micro_batch, rank=grid.dp_rank, world_size=grid.dp,
                    seed=cfg.seed, augment=cfg.augment or None, image_size=image_size,
                    num_threads=cfg.loader_threads)
    steps_per_epoch = len(loader) // cfg.accum
    if steps_per_epoch < 1:
        loader.close()
        raise ValueError(f"{len(splits.train)} training images give no full global batch of "
                         f"{cfg.global_batch}: lower --global-batch")
    heldout = splits.eval
    if cfg.eval_samples:
        heldout = spread_subset(heldout, cfg.eval_samples)
    evaluator = Evaluator(heldout, grid.dp_group, cfg.eval_batch, image_size, cfg.dtype,
                          num_threads=cfg.loader_threads)
    # config: set by the caller once the model (and its new head) is built
    return RunData(None, preset, cfg.data, step_batches(cfg, loader, splits.num_classes),
                   evaluator, splits.description, splits.num_classes,
                   splits.test), steps_per_epoch
