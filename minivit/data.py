"""``--data random``: a deterministic in-memory stand-in dataset, and batch arithmetic.

Sample ``i`` of a ``RandomImages`` set has the fixed label ``i % num_classes``
and the image ``prototype[label] + noise_i``, where both the per-class
prototype and the per-sample noise are standard normal draws seeded by
``(seed, name)`` (see ``minivit.params.init_tensor``'s seeding).  Because the
class signal is as strong as the noise, the loss falls within tens of steps,
which is what a smoke test of the training loop needs; nothing is stored, so
any image size works.

The epoch order is a seeded permutation of the sample indices that does not
depend on the number of ranks; rank ``r`` of ``world_size`` takes the r-th
contiguous slice of each global batch (the loader contract of DESIGN.md
section 4), so every rank runs the same number of steps.
"""
import numpy as np

from .params import name_seed


def accumulation_steps(global_batch, micro_batch, world_size=1):
    """Micro-batches per optimizer step per rank: global / (micro * world).

    Raises ValueError (naming the values) if the global batch is not a
    multiple of micro_batch * world_size, or any value is < 1.
    """
    for name, v in (("global_batch", global_batch), ("micro_batch", micro_batch),
                    ("world_size", world_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}={v!r}: expected a positive integer")
    if global_batch % (micro_batch * world_size):
        raise ValueError(
            f"global_batch={global_batch} is not divisible by micro_batch={micro_batch} x "
            f"world_size={world_size}: expected a multiple of {micro_batch * world_size}")
    return global_batch // (micro_batch * world_size)


def _rng(seed, name):
    return np.random.Generator(np.random.PCG64(name_seed(seed, name)))


class RandomImages:
    """Deterministic random images ``(C, H, W)`` with fixed labels; see module docstring.

    num_samples: dataset size (one epoch).  image_size, in_chans, num_classes:
    as in ViTConfig.  dtype: float32 or float64.
    """

    def __init__(self, num_samples, image_size, in_chans, num_classes, seed=0,
                 dtype="float32"):
        if num_samples < 1 or num_classes < 1:
            raise ValueError(f"num_samples={num_samples}, num_classes={num_classes}: "
                             "expected positive integers")
        self.num_samples, self.num_classes = int(num_samples), int(num_classes)
        self.shape = (int(in_chans), int(image_size), int(image_size))
        self.seed, self.dtype = seed, np.dtype(dtype)

    def label(self, index):
        return index % self.num_classes

    def image(self, index):
        k = self.label(index)
        proto = _rng(self.seed, f"prototype/{k}").standard_normal(self.shape)
        noise = _rng(self.seed, f"sample/{index}").standard_normal(self.shape)
        return (proto + noise).astype(self.dtype)

    def batch(self, indices):
        """Images (B, C, H, W) and int64 labels (B,) for sample ``indices``."""
        x = np.stack([self.image(int(i)) for i in indices])
        y = np.array([self.label(int(i)) for i in indices], dtype=np.int64)
        return x, y

    def epoch_order(self, epoch):
        """Permutation of all sample indices for ``epoch``; the same for any rank count."""
        return _rng(self.seed, f"epoch/{epoch}").permutation(self.num_samples)


class StepBatches:
    """Per optimizer step, this rank's list of ``(x, y)`` micro-batches, plus the epoch.

    ``for epoch, micro_batches in StepBatches(...).iterate(start_step)``; a
    step never straddles epochs (the tail of each epoch is dropped), so the
    state is just the step number.
    Raises ValueError if the dataset is smaller than one global batch.
    """

    def __init__(self, dataset, global_batch, micro_batch, rank=0, world_size=1):
        self.accum = accumulation_steps(global_batch, micro_batch, world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank}: expected 0 <= rank < world_size={world_size}")
        self.steps_per_epoch = dataset.num_samples // global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"dataset of {dataset.num_samples} samples is smaller than "
                             f"global_batch={global_batch}: expected at least one batch")
        self.dataset, self.global_batch, self.micro_batch = dataset, global_batch, micro_batch
        self.rank, self.world_size = rank, world_size

    def iterate(self, start_step=0):
        step = start_step
        while True:
            epoch, within = divmod(step, self.steps_per_epoch)
            order = self.dataset.epoch_order(epoch)
            per_rank = self.global_batch // self.world_size
            lo = within * self.global_batch + self.rank * per_rank
            mine = order[lo:lo + per_rank]
            yield epoch, [self.dataset.batch(mine[i:i + self.micro_batch])
                          for i in range(0, per_rank, self.micro_batch)]
            step += 1
