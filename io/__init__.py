"""minivit.io: WebDataset-compatible tar shards, random-access reader and loader.

Imports nothing from ``minivit`` model code, ``minivit.parallel`` or mpi4py
(DESIGN.md section 1): the loader is given ``rank`` and ``world_size`` as integers.
"""
from .augment import Augment
from .dataset import ShardDataset
from .errors import CorruptSampleError, ShardError, ShardWarning
from .loader import Loader
from .mixup import Mixup, mix_batch
from .index import read_dataset_index, read_shard_index, write_dataset_index
from .synthetic import SyntheticSource
from .writer import ShardWriter

__all__ = ["ShardWriter", "ShardDataset", "Loader", "Augment", "Mixup", "mix_batch", "SyntheticSource", "ShardError", "CorruptSampleError",
           "ShardWarning", "write_dataset_index", "read_dataset_index", "read_shard_index"]
