"""Save any parallel layout to one layout-free checkpoint, and load it into any other.

The file (``minivit.checkpoint``) holds full tensors by name, so resuming in a
different layout needs no conversion tool: writing *gathers* each tensor to
one writer, loading lets every rank read the full tensor and keep its slice.
This is the "consolidated state dict" route (PyTorch FSDP ``FULL_STATE_DICT``;
Zhao et al. 2023, section 4; DeepSpeed's ``zero_to_fp32``), done unit by unit
so ZeRO-3 never holds more than one unit's full tensors at once.

A layout plugs in through a *state adapter* with this interface:

``groups``            tensor groups, e.g. ``["params", "optim/exp_avg", "optim/exp_avg_sq"]``
``units()``           ``[[(name, full_shape), ...] per unit]`` in model order (global names)
``gather(u, group)``  collective over every rank; returns ``{name: full array}`` on world
                      rank 0 and ``None`` elsewhere
``load(u, group, read)``  ``read(name)`` returns the full array; the adapter copies the
                      part this rank holds (a ZeRO shard, a tensor-parallel slice, ...)
``optimizer_meta()``, ``set_step(step)``, ``layout()``

:class:`DataParallelState` implements it for data parallelism with ZeRO 0-3;
a tensor- or pipeline-parallel adapter only changes *where* the slices live.
"""
import json
import os
import sys
import warnings

import numpy as np

from minivit.checkpoint import (CheckpointError, CheckpointReader, CheckpointWriter,
                                latest_valid_checkpoint, list_checkpoints)
from minivit.checkpoint_state import check_compatible


def broadcast_text(comm, text, root=0):
    """``text`` of group rank ``root`` on every rank (two broadcasts via the audited wrapper)."""
    data = np.frombuffer(text.encode(), dtype=np.uint8) if comm.rank == root else None
    size = np.array([0 if data is None else data.size], dtype=np.int64)
    comm.broadcast(size, root)
    buf = np.zeros(int(size[0]), dtype=np.uint8)
    if comm.rank == root:
        buf[...] = data
    if buf.size:
        comm.broadcast(buf, root)
    return buf.tobytes().decode()


def agreed_error(world, local):
    """One error text for a step that ranks may fail alone, the same on every rank.

    local : this rank's message, "" when it succeeded.  Returns "" on every rank when
    no rank failed; else the lowest failing rank's message (prefixed by that rank when
    the world has several), so that one rank can print it for all and none loses the
    reason.  Collective over ``world``.
    """
    failed = int(world.allreduce_scalar(world.rank if local else world.size, "min"))
    if failed == world.size:
        return ""
    text = broadcast_text(world, local, root=failed)
    return f"rank {failed}: {text}" if world.size > 1 else text


class DataParallelState:
    """State adapter for a ``StepEngine`` with dp and ZeRO stage 0-3 (tp = pp = 1).

    Stages 0-2 keep full parameters on every dp rank, so rank 0 writes its own
    copy with no communication; stage 3 all-gathers one unit at a time (the
    same collective as its forward).  Optimizer state is full at stage 0 and
    gathered per unit from the shards at stages 1-3.
    """

    def __init__(self, trainer, local=False):
        # local=True: the adapter of this rank's own tensors (its stage and tp slice)
        # inside ``checkpoint_mp.ModelParallelState``; gather returns on dp rank 0
        if not local and (trainer.grid.tp != 1 or trainer.grid.pp != 1):
            raise ValueError(f"tp={trainer.grid.tp}, pp={trainer.grid.pp}: DataParallelState "
                             "expects tp = pp = 1 (ModelParallelState handles tp/pp)")
        self.trainer, self.model, self.comm = trainer, trainer.model, trainer.comm
        self.stage = trainer.zero
        self.root = (trainer.grid.dp_rank if local else trainer.grid.rank) == 0
        opt = trainer.optimizer
        self.kind = opt.kind            # "adamw" or "sgd"
        names = ("momentum_buffer",) if self.kind == "sgd" else ("exp_avg", "exp_avg_sq")
        self.groups = ["params"] + [f"optim/{k}" for k in names]
        offsets = self.model.flat.offsets
        self._ranges = self.model.unit_ranges()
        self._units = []
        for a, b in self._ranges:
            self._units.append([(n, s) for n, (lo, hi, s) in offsets.items() if a <= lo < b])

    def units(self):
        return [list(u) for u in self._units]

    def _buffer(self, group):
        """The local 1-D buffer of ``group`` and whether it is a ZeRO shard vector."""
        opt = self.trainer.optimizer
        if group == "params":
            if self.stage == 3:
                return opt.param_shard, True
            return self.model.flat.data, False
        key = group.split("/", 1)[1]
        if self.stage == 0:
            return opt.state[key], False
        return getattr(opt, key), True

    def _unit_flat(self, u, group):
        """Unit ``u``'s full 1-D slice of ``group`` (all-gathered if sharded)."""
        buf, sharded = self._buffer(group)
        a, b = self._ranges[u]
        if not sharded:
            return buf[a:b]
        return self.trainer.optimizer.layout.gather_unit(self.comm, buf, u)[:b - a]

    def gather(self, u, group):
        flat = self._unit_flat(u, group)
        if not self.root:
            return None
        a = self._ranges[u][0]
        offsets = self.model.flat.offsets
        return {n: flat[offsets[n][0] - a:offsets[n][1] - a].reshape(s).copy()
                for n, s in self._units[u]}

    def load(self, u, group, read):
        buf, sharded = self._buffer(group)
        offsets = self.model.flat.offsets
        if not sharded:
            for name, shape in self._units[u]:
                lo, hi, _ = offsets[name]
                buf[lo:hi] = read(name).ravel()
            return
        layout = self.trainer.optimizer.layout
        own_lo, own_hi = layout.owned(u)
        view = layout.shard_view(buf, u)
        view[...] = 0                              # padding stays zero
        for name, shape in self._units[u]:
            lo, hi, _ = offsets[name]
            a, b = max(lo, own_lo), min(hi, own_hi)
            if a < b:                              # only tensors overlapping this rank's block
                view[a - own_lo:b - own_lo] = read(name).ravel()[a - lo:b - lo]

    def optimizer_meta(self):
        opt = self.trainer.optimizer
        hyper = opt._hyper() if hasattr(opt, "_hyper") else {
            "betas": [opt.hyper["beta1"], opt.hyper["beta2"]], "eps": opt.hyper["eps"],
            "weight_decay": opt.hyper["weight_decay"]}
        hyper.pop("lr", None)                      # the schedule owns the learning rate
        return {"type": self.kind, "step": self.trainer.step_count, "hyper": hyper}

    def set_step(self, step):
        self.trainer.step_count = int(step)
        if hasattr(self.trainer.optimizer, "step_count"):
            self.trainer.optimizer.step_count = int(step)

    def layout(self):
        g = self.trainer.grid
        return {"world": g.world_size, "dp": g.dp, "tp": g.tp, "pp": g.pp, "zero": self.stage}


def save_checkpoint(path, adapter, world, meta):
    """Gather ``adapter``'s state unit by unit and write it at ``path`` from world rank 0.

    world : the world :class:`Communicator`.  meta : checkpoint metadata
    (``step``, ``preset``, ...; optimizer, layout and param_names are added).
    All ranks agree on the outcome: on success every rank returns ``path``; if
    the writer fails (e.g. OSError ENOSPC) every rank raises CheckpointError,
    and the temporary file is removed, so earlier checkpoints are untouched.
    Non-finite parameters raise FloatingPointError on every rank, nothing written.
    """
    root = world.rank == 0
    writer, error = None, None
    if root:
        try:
            writer = CheckpointWriter(path)
        except Exception as exc:   # noqa: BLE001 - reported to every rank below
            error = ("io", f"{type(exc).__name__}: {exc}")
    names = []
    for u, unit in enumerate(adapter.units()):
        names += [n for n, _ in unit]
        for group in adapter.groups:
            tensors = adapter.gather(u, group)     # collective: every rank takes part
            if not root or error is not None:
                continue
            try:
                for name, array in tensors.items():
                    if group == "params" and not np.isfinite(array).all():
                        error = ("nan", f"parameter {name} is not finite")
                        break
                    writer.write(group, name, array)
            except Exception as exc:   # noqa: BLE001 - e.g. OSError(ENOSPC) from HDF5
                error = ("io", f"{type(exc).__name__}: {exc}")
            del tensors                            # at most one unit's tensors alive
    if root and error is None:
        full = dict(meta, optimizer=adapter.optimizer_meta(), layout=adapter.layout(),
                    param_names=names)
        try:
            writer.commit(full)
        except Exception as exc:   # noqa: BLE001
            error = ("io", f"{type(exc).__name__}: {exc}")
    if root and error is not None and writer is not None:
        writer.abort()
    kind, message = json.loads(broadcast_text(world, json.dumps(error or ["", ""])))
    if kind == "nan":
        raise FloatingPointError(f"step {meta['step']}: {message}; checkpoint {path} not "
                                 "written, earlier checkpoints kept")
    if kind:
        raise CheckpointError(f"saving checkpoint {path} failed: {message}; earlier "
                              "checkpoints are intact")
    return path


def find_resume_checkpoint(directory, world):
    """Path of the newest valid checkpoint in ``directory``, chosen by rank 0, on every rank.

    Invalid newer files are skipped with a ``[minivit rank 0] warning: ...`` line each on
    stderr (printed once, by rank 0).  Raises CheckpointError on every rank if none is valid.
    """
    path, found = "", 0
    if world.rank == 0:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            best = latest_valid_checkpoint(directory)
        for w in caught:        # the library's UserWarning, in the runtime's own words
            print(f"[minivit rank 0] warning: {w.message}", file=sys.stderr, flush=True)
        path = "" if best is None else str(best)
        found = len(list_checkpoints(directory)) if os.path.isdir(directory) else -1
    path, found = json.loads(broadcast_text(world, json.dumps([path, found])))
    if not path:
        what = {-1: "no such folder", 0: "it holds no step_XXXXXXX.h5 file",
                1: "its only step_XXXXXXX.h5 file did not open and verify (warning above)"}.get(
            found, f"none of its {found} step_XXXXXXX.h5 files opened and verified "
                   "(warnings above)")
        raise CheckpointError(f"no valid checkpoint in {directory}: {what}; a run saves one "
                              "at its last step (and every K steps with --save-every K) "
                              "unless --save-every -1")
    return path


def load_checkpoint(path, adapter, world, *, preset, config, groups=None):
    """Load ``path`` into ``adapter``'s layout; returns the checkpoint's metadata dict.

    Rank 0 first checks the file against the model (preset, architecture,
    names, shapes, dtypes, optimizer type: the FIRST mismatch is reported) and
    every rank raises the same CheckpointError.  Then each rank reads the full
    tensors and keeps its part.  groups : subset of ``adapter.groups``
    (default all; ``["params"]`` for weights only).
    """
    groups = list(adapter.groups if groups is None else groups)
    error = ""
    if world.rank == 0:
        try:
            with CheckpointReader(path) as reader:
                specs = [(n, s, np.dtype(config.dtype)) for unit in adapter.units()
                         for n, s in unit]
                check_compatible(reader, preset, config, specs)
                saved = reader.meta.get("optimizer", {}).get("type")
                if any(g.startswith("optim/") for g in groups) and saved != adapter.kind:
                    raise CheckpointError(f"{path}: optimizer {saved!r} in the checkpoint, "
                                          f"this run uses {adapter.kind!r}")
        except CheckpointError as exc:
            error = str(exc)
    error = broadcast_text(world, error)
    if error:
        raise CheckpointError(error)
    local = ""
    try:
        with CheckpointReader(path) as reader:
            for u in range(len(adapter.units())):
                for group in groups:
                    adapter.load(u, group, lambda name, g=group: reader.read(g, name))
            meta = reader.meta
    except CheckpointError as exc:
        local = str(exc)
    error = agreed_error(world, local)
    if error:
        raise CheckpointError(error)
    if any(g.startswith("optim/") for g in groups):
        adapter.set_step(meta.get("optimizer", {}).get("step", meta["step"]))
    return meta


def state_adapter(engine):
    """Checkpoint adapter for the engine's layout: dp/ZeRO only, or tp/pp."""
    from .checkpoint_mp import ModelParallelState
    if engine.grid.tp == 1 and engine.grid.pp == 1:
        return DataParallelState(engine)
    return ModelParallelState(engine)
