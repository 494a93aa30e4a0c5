"""``Loader``: seeded, rank-sliced, prefetching mini-batches from a dataset.

Sample order (DESIGN.md section 4).  Epoch ``e`` uses the permutation
``default_rng([seed, e]).permutation(N)`` of all ``N`` sample indices; it
does not depend on the world size.  With global batch ``G = world_size *
batch_size``, step ``s`` covers positions ``[s*G, (s+1)*G)`` of that order and
rank ``r`` takes the contiguous slice ``[s*G + r*B, s*G + (r+1)*B)``.  So:

* ``drop_last=True`` (default): ``N // G`` steps; the last ``N % G`` samples
  of each epoch's order are dropped (different samples every epoch).
* ``drop_last=False``: ``ceil(N / G)`` steps; the order is padded by
  repeating its first ``ceil(N/G)*G - N`` entries (DistributedSampler-style).

Every rank therefore runs the same number of steps, with no communication.
Augmentation randomness is keyed by ``(seed, epoch, position)``, so a sample
is transformed identically for any world size or thread count.

Iteration: ``len(loader)`` is steps per epoch; ``next_batch()`` returns the
next ``(images, labels)`` and runs on across epochs (for a training loop with
a fixed step budget); ``for images, labels in loader.epoch_iter()`` (or
``for ... in loader``) yields the rest of the current epoch.
"""
import math
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .augment import Augment, Transform
from .closing import Closeable
from .errors import CorruptSampleError, ShardWarning, check_on_error


def _positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


class Loader(Closeable):
    """Mini-batches ``(images float32 (B, 3, S, S), labels int64 (B,))``.

    Args:
        dataset: ``len(dataset)`` and ``dataset[i] -> (uint8 (H, W, 3), int)``
            (a ``ShardDataset`` or ``SyntheticSource``).
        batch_size: micro-batch size ``B`` per rank.
        rank, world_size: this rank's data-parallel coordinates (ints).
        seed: seeds the permutation and the augmentation.
        shuffle: permute each epoch (else identity order).
        drop_last: drop or pad policy, see the module docstring.
        augment: ``True`` or an ``Augment`` for random-resized-crop + flip;
            ``None``/``False`` for a central square resized to ``S``.
        image_size: ``S``; default: the size of sample 0 (then all samples must
            match).
        mean, std: per-channel normalisation in [0, 1] units.
        prefetch: batches decoded ahead of the one returned (loader memory at
            most ``(prefetch + 1) * B*3*S*S*4`` bytes).
        num_threads: decoding threads (Pillow releases the GIL while decoding).
        on_error: ``"skip"`` or ``"raise"`` for ``CorruptSampleError`` from the
            dataset; default ``dataset.on_error`` (else ``"raise"``).  Under
            ``skip`` a warning names the shard path and byte offset,
            ``self.skipped`` counts it, and the slot is refilled from the next
            indices ``i+1, i+2, ...`` (at most ``max_substitutes`` tries).

    Raises ``ValueError`` for bad arguments or a dataset with fewer than
    ``world_size * batch_size`` samples.
    """

    def __init__(self, dataset, batch_size, rank=0, world_size=1, seed=0, shuffle=True,
                 drop_last=True, augment=None, image_size=None, mean=(0.5, 0.5, 0.5),
                 std=(0.5, 0.5, 0.5), prefetch=2, num_threads=2, on_error=None,
                 max_substitutes=16):
        self.batch_size = _positive_int("batch_size", batch_size)
        self.world_size = _positive_int("world_size", world_size)
        self.rank = _positive_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank {rank} must be < world_size {world_size}")
        self.seed = _positive_int("seed", seed, 0)
        self.prefetch = _positive_int("prefetch", prefetch, 0)
        self.num_threads = _positive_int("num_threads", num_threads)
        self.max_substitutes = _positive_int("max_substitutes", max_substitutes, 0)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.on_error = check_on_error(on_error or getattr(dataset, "on_error", "raise"))
        self.dataset, self.num_samples = dataset, len(dataset)
        self.global_batch = self.batch_size * self.world_size
        if self.num_samples < self.global_batch:
            raise ValueError(f"dataset has {self.num_samples} samples, fewer than "
                             f"world_size * batch_size = {self.world_size} * {self.batch_size}"
                             f" = {self.global_batch}; every rank needs a full batch")
        steps = self.num_samples / self.global_batch
        self.steps_per_epoch = int(steps) if self.drop_last else math.ceil(steps)
        if augment is True:
            augment = Augment()
        if augment is not None and augment is not False and not isinstance(augment, Augment):
            raise ValueError(f"augment must be None, a bool or an Augment, got {augment!r}")
        self.image_size = (_positive_int("image_size", image_size) if image_size is not None
                           else self._probe_size())
        self.transform = Transform(self.image_size, augment or None, mean, std)
        self.epoch, self.step, self.skipped = 0, 0, 0
        self._orders = {}
        self._pending = deque()   # (epoch, step, images, labels, futures)
        self._pool = None

    def _probe_size(self):
        size = getattr(self.dataset, "image_size", None)
        if size is not None:
            return int(size)
        tries = min(self.num_samples, 1 + (self.max_substitutes if self.on_error == "skip" else 0))
        for i in range(tries):   # under "skip" a damaged sample 0 must not stop us
            try:
                h, w = self.dataset[i][0].shape[:2]
            except CorruptSampleError:
                if i == tries - 1:
                    raise
                continue
            if h != w:
                raise ValueError(f"sample {i} is {h}x{w}, not square: pass image_size=")
            return h

    # -- sample order --------------------------------------------------------
    def __len__(self):
        return self.steps_per_epoch

    def order(self, epoch):
        """Sample indices of ``epoch`` in global order, padded if ``drop_last=False``."""
        if epoch not in self._orders:
            n = self.num_samples
            order = (np.random.default_rng([self.seed, epoch]).permutation(n)
                     if self.shuffle else np.arange(n))
            total = self.steps_per_epoch * self.global_batch
            if total > n:
                order = np.concatenate([order, order[:total - n]])
            # keep two epochs (prefetch runs across the boundary): memory O(N)
            self._orders = {e: o for e, o in self._orders.items() if e == epoch - 1}
            self._orders[epoch] = order
        return self._orders[epoch]

    def batch_positions(self, step):
        """Positions in the epoch order of this rank's samples at ``step``."""
        start = step * self.global_batch + self.rank * self.batch_size
        return np.arange(start, start + self.batch_size)

    def batch_indices(self, epoch, step):
        """Dataset indices of this rank's batch at ``(epoch, step)``, ``int64 (B,)``."""
        return self.order(epoch)[self.batch_positions(step)]

    # -- decoding --------------------------------------------------------------
    def _load_into(self, index, epoch, position, images, labels, slot):
        image, label = self.dataset[int(index)]
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"sample {index}: image shape {image.shape}, expected (H, W, 3)")
        rng = (np.random.default_rng([self.seed, epoch, int(position)])
               if self.transform.augment is not None else None)
        self.transform(image, rng, images[slot])
        labels[slot] = label

    def _work(self, epoch, indices, positions, images, labels, slots):
        failures = []
        for slot in slots:
            try:
                self._load_into(indices[slot], epoch, positions[slot], images, labels, slot)
            except CorruptSampleError as e:
                failures.append((slot, e))
        return failures

    def _submit(self, epoch, step):
        s = self.image_size
        images = np.empty((self.batch_size, 3, s, s), dtype=np.float32)
        labels = np.empty(self.batch_size, dtype=np.int64)
        indices, positions = self.batch_indices(epoch, step), self.batch_positions(step)
        chunks = np.array_split(np.arange(self.batch_size), self.num_threads)
        if self.prefetch == 0:
            futures = [_Done(self._work(epoch, indices, positions, images, labels, c))
                       for c in chunks if len(c)]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.num_threads, "minivit-loader")
            futures = [self._pool.submit(self._work, epoch, indices, positions,
                                         images, labels, c) for c in chunks if len(c)]
        self._pending.append((epoch, step, images, labels, futures))

    def _advance(self, epoch, step):
        step += 1
        return (epoch + 1, 0) if step == self.steps_per_epoch else (epoch, step)

    def next_batch(self):
        """The next ``(images float32 (B, 3, S, S), labels int64 (B,))``.

        Advances ``(epoch, step)``; crosses epoch boundaries.  Raises
        ``CorruptSampleError`` under ``on_error="raise"`` (the position is
        not advanced).
        """
        if not self._pending:
            self._submit(self.epoch, self.step)
        nxt = self._pending[-1][:2]
        while len(self._pending) < self.prefetch + 1:   # ``prefetch`` stay ahead
            nxt = self._advance(*nxt)
            self._submit(*nxt)
        epoch, step, images, labels, futures = self._pending[0]
        try:
            failures = [f for fut in futures for f in fut.result()]
            if failures:
                self._repair(epoch, step, images, labels, failures)
        except BaseException:
            self._drain()   # the next call starts over at the same position
            raise
        self._pending.popleft()
        self.epoch, self.step = self._advance(epoch, step)
        return images, labels

    def _repair(self, epoch, step, images, labels, failures):
        if self.on_error == "raise":
            raise failures[0][1]
        positions = self.batch_positions(step)
        for slot, err in failures:
            index = int(self.batch_indices(epoch, step)[slot])
            for k in range(1, self.max_substitutes + 2):
                self.skipped += 1
                warnings.warn(f"{err}; skipped (total {self.skipped})", ShardWarning,
                              stacklevel=4)
                if k > self.max_substitutes:
                    raise RuntimeError(f"{self.max_substitutes} substitutes for sample "
                                       f"{index} failed too; data too damaged") from err
                try:
                    self._load_into((index + k) % self.num_samples, epoch,
                                    positions[slot], images, labels, slot)
                    break
                except CorruptSampleError as e:
                    err = e

    def epoch_iter(self):
        """Yield the remaining batches of the current epoch."""
        epoch = self.epoch
        while self.epoch == epoch:
            yield self.next_batch()

    __iter__ = epoch_iter

    # -- state -----------------------------------------------------------------
    def state_dict(self):
        """``{"epoch", "step", "seed"}`` of the next batch to be returned."""
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed}

    def load_state_dict(self, state):
        """Resume at ``state``; the next batch equals the uninterrupted one."""
        epoch = _positive_int("epoch", state["epoch"], 0)
        step = _positive_int("step", state["step"], 0)
        if step >= self.steps_per_epoch:
            raise ValueError(f"step {step} out of range: {self.steps_per_epoch} steps per epoch")
        self._drain()
        self.seed = _positive_int("seed", state["seed"], 0)
        self._orders = {}
        self.epoch, self.step = epoch, step

    def _drain(self):
        for *_, futures in self._pending:
            for fut in futures:
                fut.cancel()
        for *_, futures in self._pending:
            for fut in futures:
                if not fut.cancelled():
                    fut.exception()   # wait, so no worker writes after we return
        self._pending.clear()

    def close(self):
        """Stop the decoding threads; the loader can be used again afterwards."""
        self._drain()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class _Done:
    """A finished future (for ``prefetch=0``: decode in the calling thread)."""

    def __init__(self, value):
        self._value = value

    def result(self):
        return self._value

    def cancel(self):
        return False

    def cancelled(self):
        return False

    def exception(self):
        return None
