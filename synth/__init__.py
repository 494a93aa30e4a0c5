"""minivit.synth: formula-driven image generators.

Every generator is a pure function ``(dataset_seed, class_id, instance_id) ->
uint8 image (H, W, 3)``.  Imports nothing from ``minivit`` model code,
``minivit.parallel`` or mpi4py (DESIGN.md section 1).
"""
