"""Run logging shared by ``run/pretrain.py`` and ``run/finetune.py``.

World rank 0 alone writes ``metrics.jsonl`` and draws the tqdm bar; the other
ranks get no-op calls, so scripts call the logger unconditionally.  Records
carry a ``kind`` key:

* ``header`` (first line): run settings and the BLAS peak measured at start-up
  (``blas_peak_gflops``, all ranks measured at the same time and summed,
  since they share the cores);
* ``train`` (one per optimizer step): step, epoch, loss, accuracy (train
  batch top-1), lr, grad_norm, step_time_s, images_per_s, gflops_per_s (model
  FLOPs / s), mfu (gflops_per_s / BLAS peak), comm_bytes, comm_s;
* ``eval``: step, epoch, loss, accuracy (held-out top-1), samples, seconds.
"""
import json
import time

from tqdm import tqdm

from minivit.flops import measure_gemm_peak

from .. import cost


def blas_peak(world, dtype):
    """Aggregate GEMM FLOP/s of all ranks of ``world`` (a Communicator), measured at once.

    Each rank times 512 x 512 GEMMs of ``dtype`` at the same moment and the
    rates are summed: on a shared CPU that is what the ranks can do together.
    """
    world.barrier()
    return world.allreduce_scalar(measure_gemm_peak(512, dtype, repeats=5))


class MetricsWriter:
    """Appends one JSON object per line to ``path`` (``metrics.jsonl``), flushed each record."""

    def __init__(self, path):
        self.path = path
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record):
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self):
        self._file.close()


def param_count_text(model):
    """``"N parameters"``, plus this rank's share when the model is split over tp/pp."""
    total = sum(cost.vit_unit_sizes(model.config))
    if model.num_params == total:
        return f"{total:,} parameters"
    return f"{total:,} parameters ({model.num_params:,} on this rank)"


class RunLog:
    """metrics.jsonl + tqdm progress + printed lines on rank 0.

    root : True on the writing rank.  path : metrics.jsonl path (None: no file).
    steps : total optimizer steps (bar length).  peak : FLOP/s for ``mfu``.
    log_every : print a train line every N steps (and at the first and last).
    progress : False: never draw the bar.  stream : where the bar goes (default
        stderr, as tqdm's).

    The bar is drawn only when ``stream`` is a terminal (tqdm's ``disable=None``).
    Redirected, as in a batch job or under a launcher that pipes the output, its
    carriage-return frames would bury the log, so only the plain lines are written.
    """

    def __init__(self, root, path, steps, peak, log_every=10, progress=True, stream=None):
        self.root, self.steps, self.peak, self.log_every = root, steps, peak, log_every
        self.writer = MetricsWriter(path) if root and path is not None else None
        self.bar = tqdm(total=steps, disable=None if root and progress else True, unit="step",
                        dynamic_ncols=True, file=stream)
        self.evals = []

    def say(self, text):
        """Print on rank 0 without breaking the bar."""
        if not self.root:
            return
        if self.bar.disable:
            print(text, flush=True)
        else:
            self.bar.write(text)

    def header(self, **fields):
        if self.writer is not None:
            self.writer.write({"kind": "header", "blas_peak_gflops": self.peak / 1e9,
                               "blas_peak_note": "float GEMM 512x512, all ranks at once, summed",
                               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               **fields})

    def train(self, record):
        """Log one ``runtime.trainer.Trainer`` record (adds kind and mfu)."""
        if not self.root:
            return record
        record = {"kind": "train", **record, "mfu": record["gflops_per_s"] * 1e9 / self.peak}
        if self.writer is not None:
            self.writer.write(record)
        self.bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.2f}",
                             img_s=f"{record['images_per_s']:.0f}", refresh=False)
        self.bar.update(1)
        step = record["step"]
        if step % self.log_every == 0 or step in (1, self.steps):
            self.say(f"step {step:>5}/{self.steps} epoch {record['epoch']} "
                     f"loss {record['loss']:.4f} acc {record['accuracy']:.1%} "
                     f"lr {record['lr']:.2e} {record['images_per_s']:.1f} img/s "
                     f"{record['gflops_per_s']:.2f} GFLOP/s MFU {record['mfu']:.1%} "
                     f"comm {record['comm_bytes'] / 2**20:.2f} MiB")
        return record

    def eval(self, step, epoch, result, seconds):
        """Log a held-out evaluation ``result`` (``Evaluator.evaluate``'s dict)."""
        record = {"kind": "eval", "step": step, "epoch": epoch, **result, "seconds": seconds}
        self.evals.append(record)
        if self.writer is not None:
            self.writer.write(record)
        self.say(f"eval  {step:>5}/{self.steps} held-out loss {record['loss']:.4f} "
                 f"top-1 {record['accuracy']:.1%} ({record['samples']} images)")
        return record

    def close(self):
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
