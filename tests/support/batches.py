"""Per-step micro-batches for the MPI drivers: ``--data random`` through the Loader.

The same path as ``run/pretrain.py --data random`` (``minivit.io.RandomImages``
read by ``minivit.io.Loader``, grouped by ``LoaderSteps``), so the drivers
exercise the one rule for which samples a rank reads.
"""
from minivit.io import Loader
from minivit.io.random_images import RandomImages
from minivit.io.sources import LoaderSteps


def random_steps(config, global_batch, micro_batch, dp_rank=0, dp=1, samples=32, seed=1):
    """Iterator of ``(epoch, [(x, y), ...])``: this dp rank's micro-batches per step.

    config : ``ViTConfig`` (image size, classes, dtype of x).  No loader threads
    (``prefetch=0``), so nothing needs closing.
    """
    data = RandomImages(samples, config.image_size, config.num_classes, seed=seed)
    loader = Loader(data, micro_batch, rank=dp_rank, world_size=dp, seed=seed,
                    image_size=config.image_size, prefetch=0)
    return LoaderSteps(loader, global_batch // (micro_batch * dp), config.dtype)
