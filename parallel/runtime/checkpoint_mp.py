"""Layout-free checkpoints for tensor- and pipeline-parallel runs.

The state adapter of ``parallel/checkpoint.py`` for a ``ModelShard`` trainer:
the file holds full tensors by serial name, so a run saved at
``(dp, tp, pp) = (2, 2, 2)`` resumes at ``(1, 1, 1)`` or any other layout,
interleaved (``--virtual-stages``) or not.

gather(u): the stage owning unit ``u`` gathers each tensor over dp (ZeRO
shards, through ``DataParallelState(local=True)``), all-gathers the tp slices
and assembles the full tensor on its (tp 0, dp 0) rank, which sends it to
world rank 0 (blocking point-to-point on the audited world communicator;
ranks of other stages return at once).  load(u): every rank of the owning
stage reads the full tensor and keeps its tp slice (and ZeRO shard).
"""
import numpy as np

from .checkpoint import DataParallelState
from ..model_parallel import virtual_stage_units
from ..cost import vit_param_specs
from ..tensor_parallel import shard_index


class ModelParallelState:
    """State adapter (see ``parallel/checkpoint.py``) for a tp/pp ``StepEngine``."""

    def __init__(self, trainer):
        self.trainer, self.grid = trainer, trainer.grid
        self.model, self.config = trainer.model, trainer.model.config
        self.local = DataParallelState(trainer, local=True)
        self.groups, self.kind = self.local.groups, self.local.kind
        self.specs = vit_param_specs(self.config)
        # global unit index -> index among this rank's units (its chunks' units, in
        # order; absent: another stage), and -> the pp rank owning it (virtual stage
        # k is chunk k // pp of rank k % pp), so every unit is written exactly once
        self.local_index = {u: i for i, u in enumerate(self.model.global_units)}
        self.owner = {u: k % self.grid.pp
                      for k, units in enumerate(virtual_stage_units(self.model.stages))
                      for u in units}

    def units(self):
        return [list(u) for u in self.specs]

    def _leader(self, stage):
        """World rank of (tp 0, dp 0) of ``stage``."""
        return stage * self.grid.tp * self.grid.dp

    def gather(self, u, group):
        grid, world = self.grid, self.grid.world
        stage = self.owner[u]
        leader = self._leader(stage)
        full = None
        if u in self.local_index:
            parts = self.local.gather(self.local_index[u], group)   # on dp rank 0 only
            if grid.dp_rank == 0:
                full = self._assemble(parts, u)
        if grid.rank == leader and leader != 0:
            for name, _ in self.specs[u]:
                world.send(np.ascontiguousarray(full[name]), 0, tag=u)
            return None
        if grid.rank == 0 and leader != 0:
            dtype = np.dtype(self.config.dtype)
            full = {name: world.recv(np.empty(shape, dtype), leader, tag=u)
                    for name, shape in self.specs[u]}
        return full if grid.rank == 0 else None

    def _assemble(self, parts, u):
        """Full tensors from this rank's tp slices (all-gather over tp); tp rank 0 keeps them."""
        grid = self.grid
        if grid.tp == 1:
            return parts
        out = {}
        for name, value in parts.items():
            index = shard_index(name, self.config, grid.tp, 0)
            if isinstance(index, slice):       # replicated: every tp rank holds it all
                out[name] = value
                continue
            value = np.ascontiguousarray(value)
            slices = grid.tp_group.allgather(value, np.empty((grid.tp,) + value.shape,
                                                             value.dtype))
            shape = dict(self.specs[u])[name]
            full = np.empty(shape, value.dtype)
            for r in range(grid.tp):
                full[shard_index(name, self.config, grid.tp, r)] = slices[r]
            out[name] = full
        return out

    def load(self, u, group, read):
        if u not in self.local_index:
            return
        cfg, grid = self.config, self.grid
        self.local.load(self.local_index[u], group,
                        lambda name: np.ascontiguousarray(
                            read(name)[shard_index(name, cfg, grid.tp, grid.tp_rank)]))

    def optimizer_meta(self):
        return self.local.optimizer_meta()

    def set_step(self, step):
        self.local.set_step(step)

    def layout(self):
        g = self.grid
        return {"world": g.world_size, "dp": g.dp, "tp": g.tp, "pp": g.pp,
                "virtual_stages": self.model.virtual_stages, "zero": self.trainer.zero}
