"""Fine-tune a pre-trained ViT on a labelled dataset and report held-out top-1.

    python run/finetune.py --checkpoint runs/pre/ckpt/step_0000750.h5 --data digits --epochs 10
    python run/finetune.py --checkpoint runs/pre --data digits --epochs 10 --from-scratch
    python run/finetune.py --model vit-micro --data digits --epochs 10 --from-scratch
    mpirun -n 2 python run/finetune.py --checkpoint CKPT --data shards/train \\
        --eval-data shards/test --epochs 5

The checkpoint's classifier head is replaced by a new ``K``-way head (K from
the data) and every parameter is trained (Dosovitskiy et al. 2021, sec. 3.2);
``--linear-probe`` trains only the new head on the frozen backbone.
``--data fashion-mnist --labels-per-class 100`` fine-tunes on 1,000 labelled
Fashion-MNIST images; validation is carved from its training set, and the
10k test set is evaluated once, at the end (``test_top1``).
``--from-scratch`` trains the same architecture from its random
initialisation with the same data, steps, schedule and seed: the baseline.
``--data digits`` is scikit-learn's bundled handwritten digits, upsampled to
the model's image size, split stratified 80/20 with ``--split-seed``; shard
folders come from ``run/pack.py`` (digits, CIFAR binary batches, ImageFolder).

Outputs in --out (world rank 0): metrics.jsonl (header, per-step train
records, an eval record after every epoch), result.json (``val_top1`` on the
validation split, ``test_top1`` on the test set or null, and the settings)
and config.toml (resolved flags).  The flags are the
fields of ``minivit.parallel.runtime.config.FinetuneConfig``; the loop is
``minivit.parallel.runtime.trainer.Trainer.fit``, as for pre-training.
"""
import argparse
import dataclasses
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from minivit.checkpoint import CheckpointError
from minivit.config import get_config
from minivit.model import ViT
from minivit.parallel.grid import ProcessGrid
from minivit.parallel.runtime.cliconfig import parse_with_config
from minivit.parallel.runtime.config import FinetuneConfig, add_flags
from minivit.parallel.runtime.data import finetune_data
from minivit.parallel.runtime.evaluate import Evaluator
from minivit.parallel.runtime.guard import install_guard, usage_from_rank0
from minivit.parallel.runtime.launch import announce, default_threads, open_world
from minivit.parallel.runtime.trainer import Trainer
from minivit.threads import limit_threads
from minivit.transfer import LinearProbe, load_backbone, open_pretrained, pretrained_config


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None,
                   help="TOML file of flags (keys = flag names); command-line flags override it")
    return add_flags(p, FinetuneConfig)


def build_model(cfg, reader, num_classes):
    """``(model config, ViT with a num_classes head, origin text)``: the backbone from
    ``reader`` unless --from-scratch (``reader`` None: the --model preset)."""
    scratch = f"from scratch (random init, seed {cfg.seed})"
    if reader is None:
        config = get_config(cfg.model, num_classes=num_classes, dtype=cfg.dtype)
        return config, ViT(config, seed=cfg.seed), scratch
    config = pretrained_config(reader, num_classes, cfg.dtype)
    model = ViT(config, seed=cfg.seed)
    if cfg.from_scratch:
        return config, model, scratch
    loaded, kept = load_backbone(model, reader)
    return config, model, (f"{len(loaded)} tensors from {reader.path} (step {reader.step}), "
                           f"new head {', '.join(kept)}")


def finetune(cfg, world_comm, guard):
    grid = ProcessGrid(world_comm, dp=cfg.dp)
    guard.label = grid.coords
    with (open_pretrained(cfg.checkpoint) if cfg.checkpoint else nullcontext()) as reader:
        if reader is None:
            preset, image_size = cfg.model, get_config(cfg.model).image_size
        else:
            preset = reader.meta.get("preset")
            image_size = int(reader.meta["model_config"]["image_size"])
        data, per_epoch = finetune_data(cfg, grid, preset, image_size)
        data.config, model, origin = build_model(cfg, reader, data.num_classes)
    steps = cfg.epochs * per_epoch
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps)
    cfg = dataclasses.replace(cfg, steps=steps, eval_every=per_epoch)  # one eval per epoch
    mode = "scratch" if cfg.from_scratch else "pretrained"
    protocol = "linear" if cfg.linear_probe else "finetune"
    trainable = None
    if cfg.linear_probe:
        model = LinearProbe(model)
        trainable = model.trainable
        origin += "; linear probe: backbone frozen, head trained"
    out = Path(cfg.out or Path("runs") / time.strftime(f"finetune-{mode}-%Y%m%d-%H%M%S",
                                                       time.gmtime()))
    trainer = Trainer(cfg, grid, model, data, out=out, script="finetune",
                      steps_per_epoch=per_epoch, trainable=trainable,
                      header={"mode": mode, "checkpoint": cfg.checkpoint, "origin": origin,
                              "preset": preset, "epochs": cfg.epochs, "data": cfg.data,
                              "protocol": protocol},
                      intro=f"fine-tune {mode}: {origin}\n{data.description}; {cfg.epochs} "
                            f"epochs x {per_epoch} steps of {cfg.global_batch} images")
    records = trainer.fit()
    test = None
    if data.test_set is not None and not cfg.skip_test:   # once, after training
        evaluator = Evaluator(data.test_set, grid.dp_group, cfg.eval_batch, image_size,
                              cfg.dtype, num_threads=cfg.loader_threads)
        try:
            test = evaluator.evaluate(model)
        finally:
            evaluator.close()
    if grid.rank == 0:
        first, final = trainer.runlog.evals[0], trainer.runlog.evals[-1]
        result = {"mode": mode, "protocol": protocol, "val_top1": final["accuracy"],
                  "val_samples": final["samples"],
                  "test_top1": test["accuracy"] if test else None,
                  "test_loss": test["loss"] if test else None,
                  "test_samples": test["samples"] if test else 0,
                  "labels_per_class": cfg.labels_per_class,
                  "top1": final["accuracy"], "heldout_loss": final["loss"],
                  "heldout_samples": final["samples"], "top1_before": first["accuracy"],
                  "train_loss_last": records[-1]["loss"], "epochs": cfg.epochs, "steps": steps,
                  "global_batch": cfg.global_batch, "lr": cfg.lr, "seed": cfg.seed,
                  "checkpoint": cfg.checkpoint, "origin": origin, "data": cfg.data,
                  "data_description": data.description, "split_seed": cfg.split_seed}
        (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
        tested = (f"; test top-1 {test['accuracy']:.2%} ({test['samples']} images)"
                  if test else "")
        print(f"{mode} {protocol}: validation top-1 {final['accuracy']:.2%} "
              f"({final['samples']} images, loss {final['loss']:.4f}){tested} after {steps} "
              f"steps ({steps / per_epoch:g} epochs)\n"
              f"wrote {out / 'result.json'} and {out / 'metrics.jsonl'}", flush=True)
    grid.free()


def main(argv=None):
    world_comm = open_world("finetune.py")   # exit 2 when N tasks each see a world of 1
    guard = install_guard(world_comm)   # an exception on one rank ends every rank
    # every rank reaches the same parser.error; one copy of the message is enough
    parser = usage_from_rank0(build_parser(), world_comm)
    args = parse_with_config(parser, argv)
    try:
        cfg = FinetuneConfig.from_namespace(args).validate(world_comm.Get_size())
    except ValueError as exc:
        parser.error(str(exc))
    announce(world_comm)      # the first line: which MPI ran, and the world size
    threads = cfg.threads or default_threads(world_comm)   # cores / ranks on the node
    try:
        with limit_threads(threads):
            finetune(cfg, world_comm, guard)
    except CheckpointError as exc:
        # every rank reads the same file and fails the same way: a clean exit, no abort
        print(f"finetune.py: error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
