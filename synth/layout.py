"""Which sample goes in which shard, and which rank writes it.

Sample ``g`` of a dataset with C classes and K instances per class is class
``g % C``, instance ``g // C``: classes are interleaved, so every shard holds
all classes (a streaming reader that reads one shard sees a balanced mix).
Shard ``s`` holds samples ``[s * shard_size, (s + 1) * shard_size)`` and rank
``r`` of N writes shards ``r, r + N, r + 2N, ...``.  The content of a shard is
a function of ``s`` alone, so the output bytes do not depend on N.
"""
from dataclasses import dataclass

from .base import check_int


@dataclass(frozen=True)
class DatasetLayout:
    """classes: C >= 1; per_class: K >= 1 instances per class; shard_size: samples per shard."""
    classes: int
    per_class: int
    shard_size: int

    def __post_init__(self):
        check_int("classes", self.classes, 1)
        check_int("per_class", self.per_class, 1)
        check_int("shard_size", self.shard_size, 1)

    @property
    def num_samples(self):
        return self.classes * self.per_class

    @property
    def num_shards(self):
        return -(-self.num_samples // self.shard_size)

    def sample(self, g):
        """Global sample index -> ``(class_id, instance_id)``."""
        return g % self.classes, g // self.classes

    def shard_samples(self, shard):
        """range of global sample indices in ``shard``."""
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_samples))

    def rank_shards(self, rank, world_size):
        """Shards written by ``rank`` of ``world_size`` (round robin)."""
        check_int("world_size", world_size, 1)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        return list(range(rank, self.num_shards, world_size))

    def rank_classes(self, rank, world_size):
        """Classes whose category search ``rank`` runs (round robin)."""
        return list(range(rank, self.classes, world_size))

    @staticmethod
    def key(class_id, instance_id):
        """WebDataset sample key, e.g. ``c00003_i000017`` (sorts by class, then instance)."""
        return f"c{class_id:05d}_i{instance_id:06d}"
