"""minivit.io: WebDataset-compatible tar shards, random-access reader and loader.

Imports nothing from ``minivit`` model code, ``minivit.parallel`` or mpi4py
(DESIGN.md section 1): the loader is given ``rank`` and ``world_size`` as integers.
"""
