"""minivit: Vision Transformer pre-training on formula-generated images.

Written from scratch in NumPy/Numba (model, hand-written backward passes,
optimizers) with mpi4py for the parallel layouts.  Subpackages:

- ``minivit.synth``: formula-driven image generators (FractalDB, VisualAtom, Newton).
- ``minivit.io``: WebDataset-compatible tar shards, reader and loader.
- ``minivit.parallel``: process grid, audited collectives, DP/ZeRO/TP/PP.

``minivit`` itself never imports mpi4py, ``minivit.parallel``, ``minivit.io`` or
``minivit.synth`` (DESIGN.md section 1), so the model runs in one process.
"""
__version__ = "0.1.0"

import os as _os
import sys as _sys

from .allocator import retain_freed_memory as _retain_freed_memory
from .threads import set_env_defaults as _set_env_defaults

# before NumPy loads OpenBLAS, which reads its thread settings once (minivit/threads.py)
NUMPY_BEFORE_THREAD_ENV = "numpy" in _sys.modules
THREAD_ENV_SET = _set_env_defaults(_os.environ)     # the keys minivit set, not the user
# before the first activation is allocated (minivit/allocator.py)
RETAINS_FREED_MEMORY = _retain_freed_memory(_os.environ)
