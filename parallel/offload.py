"""Optimizer-state offload to local disk through ``numpy.memmap``.

The CPU-only analogue of ZeRO-Offload (Ren et al. 2021, "ZeRO-Offload:
Democratizing Billion-Scale Model Training", section 4: optimizer state and
fp32 master weights off the accelerator) and ZeRO-Infinity (Rajbhandari et
al. 2021, section 5: NVMe offload): here the "slow tier" is a file and the
"fast tier" is the process's resident memory.

What moves to ``DIR/rank{R}.{name}.bin``:

==========  ============================================================
optimizer   arrays
==========  ============================================================
AdamW       ``exp_avg``, ``exp_avg_sq`` (8 bytes/param at fp32)
SGD         ``momentum_buffer``
ZeRO 1-2    the Adam moment shards
ZeRO 3      the moment shards and the fp32 master parameter shard
==========  ============================================================

The arithmetic is unchanged (the same kernels read and write the mapped
pages), so results are bitwise equal to the run without offload.  After every
optimizer step the mappings are flushed and ``madvise(MADV_DONTNEED)`` drops
their pages from this process's resident set; the next step faults them back
in from the page cache or the disk.  The drop is visible in ``RssAnon`` /
``VmRSS`` of ``/proc/self/status`` (:func:`rss_bytes`).
"""
import mmap
import os
from pathlib import Path

import numpy as np


def rss_bytes():
    """``{"rss", "anon", "file"}`` resident bytes of this process (Linux /proc), or {} elsewhere."""
    keys = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file"}
    out = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                name, _, rest = line.partition(":")
                if name in keys:
                    out[keys[name]] = int(rest.split()[0]) * 1024
    except OSError:
        return {}
    return out


class Offload:
    """Move a trainer's optimizer state into memory-mapped files under ``directory``.

    trainer : ``StepEngine`` (any ZeRO stage, AdamW or SGD), or None: then
        build the engine with ``allocate=offload.allocate`` (ZeRO 1-3: the
        shards are created in the files, never on the heap) and call
        :meth:`attach` after.
    directory : existing or creatable local folder; one file per array and rank.
    rank : world rank, part of the file names so ranks never share a file.

    Attributes: ``files`` (list of Path), ``nbytes`` (bytes moved off the heap).
    The optimizer's ``step`` is wrapped (on the instance) so the pages are
    released after each update.  Raises ValueError if ``directory`` is an
    existing file.
    """

    def __init__(self, trainer, directory, rank):
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"--offload-dir {directory}: exists and is not a directory; "
                             "expected a folder on local disk")
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.rank = directory, rank
        self.maps, self.files, self.nbytes = [], [], 0
        if trainer is not None:
            self.attach(trainer)

    def allocate(self, name, n, dtype, values=None):
        """A 1-D array of ``n`` elements of ``dtype`` in the file of ``name``:
        ``values`` copied in, or zeros (a new file reads as zeros: nothing is
        written).  The ``allocate`` of ``zero.ZeroOptimizer``."""
        return self._map(name, (n,), dtype, values)

    def attach(self, trainer):
        """Map the optimizer state not already in files, and release pages after each step."""
        opt, mapped = trainer.optimizer, {path.name for path in self.files}
        if hasattr(opt, "state"):                       # minivit.optim AdamW / SGD
            names = list(opt.state)
        else:                                           # ZeroOptimizer
            names = ["exp_avg", "exp_avg_sq"] + (["param_shard"] if opt.stage == 3 else [])
        for key in names:
            if self._path(key).name in mapped:
                continue
            array = opt.state[key] if hasattr(opt, "state") else getattr(opt, key)
            moved = self._map(key, array.shape, array.dtype, array)
            if hasattr(opt, "state"):
                opt.state[key] = moved
            else:
                setattr(opt, key, moved)
        step = opt.step

        def step_then_release(*args, **kwargs):
            out = step(*args, **kwargs)
            self.release()
            return out
        opt.step = step_then_release   # instance attribute: the class stays unchanged
        self.release()

    def _path(self, name):
        return self.directory / f"rank{self.rank}.{name}.bin"

    def _map(self, name, shape, dtype, values):
        path = self._path(name)
        mm = np.memmap(path, dtype=dtype, mode="w+", shape=shape)
        if values is not None:
            mm[...] = values
        self.maps.append(mm)
        self.files.append(path)
        self.nbytes += mm.nbytes
        return np.asarray(mm)      # plain ndarray view of the mapping (Numba-friendly)

    def release(self):
        """Write dirty pages back and drop every mapping from the resident set."""
        for mm in self.maps:
            mm.flush()
            raw = getattr(mm, "_mmap", None)
            if raw is not None and hasattr(mmap, "MADV_DONTNEED"):
                raw.madvise(mmap.MADV_DONTNEED)

    def close(self, remove=True):
        """Flush, and delete the files (``remove``); the optimizer must not step afterwards."""
        self.release()
        if remove:
            for path in self.files:
                if path.exists():
                    os.unlink(path)
