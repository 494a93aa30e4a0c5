"""Held-out evaluation over the data-parallel group: top-1 accuracy and mean loss.

Each dp rank runs the forward pass on its slice of the held-out set and the
per-rank sums ``(loss, correct, count)`` are all-reduced once, so the result
is the exact mean over every held-out sample (no sample counted twice).

The slices come from a ``minivit.io.Loader`` with ``shuffle=False`` and
``drop_last=False``: it pads the last global batch by repeating the first
samples, which keeps every rank running the same number of forwards (needed
under ZeRO-3, whose forward all-gathers each unit); the padded positions
(``>= len(dataset)``) are masked out of the sums.
"""
import numpy as np

from minivit.io import Loader

from ..pipeline import PipelineForward


def topk_correct(logits, labels, k=1):
    """Number of rows of ``logits`` (B, K) whose label (B,) is among the top ``k``; an int."""
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"logits {logits.shape} and labels {labels.shape}: expected (B, K) "
                         "and (B,)")
    if k == 1:
        return int((logits.argmax(axis=1) == labels).sum())
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return int((top == labels[:, None]).any(axis=1).sum())


def per_sample_xent(logits, labels):
    """Cross-entropy of each row, float64 (B,) in nats (log-sum-exp stabilised)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return lse - z[np.arange(len(labels)), labels]


class Evaluator:
    """Evaluate ``model`` on ``dataset`` over ``comm`` (the dp communicator).

    dataset : ``len`` and ``ds[i] -> (uint8 (H, W, 3), int)`` (e.g. a held-out
        ``SyntheticSource`` or ``Subset`` of shards).
    batch_size : images per forward per rank (lowered so every rank gets one).
    image_size : side the images are resized to (the model's).
    dtype : model dtype ("float32" or "float64").

    ``evaluate(model) -> {"loss": float nats, "accuracy": float in [0, 1],
    "samples": int}``; every rank of ``comm`` must call it together.
    Raises ValueError for an empty dataset.
    """

    def __init__(self, dataset, comm, batch_size, image_size, dtype="float32", num_threads=1,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)):
        n = len(dataset)
        if n < 1:
            raise ValueError("held-out dataset is empty: expected at least one sample")
        self.comm, self.dtype, self.num_samples = comm, np.dtype(dtype), n
        # a rank may get no real sample only if n < dp; then everyone's slice is 1 image
        batch = max(1, min(batch_size, n // comm.size))
        if n < comm.size:
            raise ValueError(f"held-out set of {n} samples is smaller than dp={comm.size}: "
                             "expected at least one sample per rank")
        self.loader = Loader(dataset, batch, rank=comm.rank, world_size=comm.size, seed=0,
                             shuffle=False, drop_last=False, augment=None,
                             image_size=image_size, mean=mean, std=std, prefetch=1,
                             num_threads=num_threads)

    def evaluate(self, model):
        sums = np.zeros(3, dtype=np.float64)   # loss sum, correct, count
        for step in range(len(self.loader)):
            valid = self.loader.batch_positions(step) < self.num_samples
            x, y = self.loader.next_batch()
            logits, _ = model.forward(x.astype(self.dtype, copy=False))
            if valid.all():
                sums += (per_sample_xent(logits, y).sum(), topk_correct(logits, y), len(y))
            elif valid.any():
                sums += (per_sample_xent(logits[valid], y[valid]).sum(),
                         topk_correct(logits[valid], y[valid]), int(valid.sum()))
        self.comm.allreduce(sums)
        return {"loss": float(sums[0] / sums[2]), "accuracy": float(sums[1] / sums[2]),
                "samples": int(sums[2])}

    def close(self):
        self.loader.close()


def eval_model(engine):
    """The object the Evaluator calls ``forward`` on (pipelined forward when pp > 1)."""
    if engine.grid.pp > 1:
        return PipelineForward(engine.model, engine.grid)
    return engine.model
