"""Transfer learning: a pre-trained checkpoint's backbone with a new classifier head.

The fine-tuning recipe of Dosovitskiy et al. (ICLR 2021, section 3.2): drop
the pre-trained prediction head and attach a freshly initialised ``K``-way
linear layer; every other parameter (patch embedding, class token, position
embedding, blocks, final LayerNorm) starts from the checkpoint and all of
them are trained.  The new head is initialised exactly as ``ViT`` does it
(deterministic from ``(seed, name)``), so a from-scratch baseline built with
the same seed has the *same* head.

Checkpoints are the layout-free HDF5 files of ``minivit.checkpoint``.
"""
from dataclasses import replace
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError, CheckpointReader, latest_valid_checkpoint
from .config import ViTConfig

HEAD_PREFIX = "head."


def resolve_checkpoint(path):
    """The checkpoint file for ``path``: a ``step_*.h5`` file, a ``ckpt`` folder
    or a run folder (``OUT`` of ``run/pretrain.py``, newest valid ``OUT/ckpt/step_*.h5``).

    Raises CheckpointError (naming the path) when nothing valid is there.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"--checkpoint {str(path)!r}: no such file or directory")
    for folder in (path / "ckpt", path):
        found = latest_valid_checkpoint(folder)
        if found is not None:
            return found
    raise CheckpointError(f"--checkpoint {str(path)!r}: no valid step_XXXXXXX.h5 in it or in "
                          "its ckpt/ folder")


def pretrained_config(reader, num_classes, dtype="float32"):
    """``ViTConfig`` of the checkpoint's backbone with a ``num_classes``-way head and ``dtype``.

    Raises CheckpointError when the checkpoint stores no model_config.
    """
    saved = dict(reader.meta.get("model_config") or {})
    if not saved:
        raise CheckpointError(f"{reader.path}: no model_config in the checkpoint")
    fields = {k: v for k, v in saved.items() if k in ViTConfig.__dataclass_fields__}
    return replace(ViTConfig(**fields), num_classes=int(num_classes), dtype=dtype)


def load_backbone(model, reader, head_prefix=HEAD_PREFIX):
    """Copy every checkpoint parameter except the head into ``model`` (in place).

    model : a ``ViT`` whose config matches the checkpoint's except ``num_classes``
        and ``dtype`` (values are cast to the model dtype).
    Returns ``(loaded, kept)``: names read from the checkpoint, and the head
    names left at their fresh initialisation.
    Raises CheckpointError (first mismatch named) for a missing parameter, a
    shape that differs, or a corrupt dataset (sha256 checked on read).
    """
    views = model.flat.named_arrays(model.flat.data)
    loaded, kept = [], []
    for name, view in views.items():
        if name.startswith(head_prefix):
            kept.append(name)
            continue
        spec = reader.spec("params", name)
        if spec is None:
            raise CheckpointError(f"{reader.path}: parameter {name!r} missing from the "
                                  "checkpoint")
        if spec[0] != view.shape:
            raise CheckpointError(f"{reader.path}: parameter {name!r} has shape {spec[0]} in "
                                  f"the checkpoint, the model expects {view.shape}")
        view[...] = reader.read("params", name).astype(view.dtype, copy=False)
        loaded.append(name)
    if not np.isfinite(model.flat.data).all():
        raise CheckpointError(f"{reader.path}: non-finite values in the loaded parameters")
    return loaded, kept


def open_pretrained(path):
    """``CheckpointReader`` of ``resolve_checkpoint(path)`` (caller closes it)."""
    return CheckpointReader(resolve_checkpoint(path))


class LinearProbe:
    """A ``ViT`` whose backward stops at the classifier: a linear probe's frozen backbone.

    forward(x) is the model's; backward(dlogits, ctx) accumulates only the
    gradients of the last linear layer (``head.weight`` (K, D), ``head.bias``
    (K,)) and returns None: nothing below the head needs a gradient, so the
    backbone's backward (about 2/3 of a training step) is not run.  Every other
    attribute is the model's.  ``trainable`` is the ``(start, stop)`` slice of
    the flat buffer holding the head's linear layer, for the optimizer
    (``StepEngine(trainable=...)``), which then leaves the rest bitwise unchanged.
    The features the head sees are LN(class token) of the frozen backbone, as in
    the linear evaluation of Dosovitskiy et al. (2021, appendix B.1.3 / D.4).
    """

    def __init__(self, model, head_prefix=HEAD_PREFIX):
        names = [n for n in model.flat.offsets if n.startswith(head_prefix)]
        if not names:
            raise ValueError(f"no parameter named {head_prefix}*: expected a ViT")
        spans = sorted(model.flat.offsets[n][:2] for n in names)
        for (_, stop), (start, _) in zip(spans, spans[1:]):
            if stop != start:
                raise ValueError(f"{names}: the head's parameters are not contiguous in the "
                                 "flat buffer")
        self.model = model
        self.trainable = (spans[0][0], spans[-1][1])

    def __getattr__(self, name):      # units, flat, config, unit_ranges, num_params ...
        return getattr(self.model, name)

    def forward(self, x):
        return self.model.forward(x)

    def backward(self, dlogits, ctx):
        # forward: logits = fc(LN(pool(blocks(embed(x))))); only fc's parameters train
        head = self.model.units[-1]
        head.fc.backward(dlogits, ctx[-1][2])
        return None
