"""Model-level checkpoint checks, and one-process save and load with ``minivit.checkpoint``.

For tools that run without MPI: ``run/export.py`` (safetensors export and
import), fine-tuning from a pre-trained file, tests.  The multi-rank path is
``minivit.parallel.runtime.checkpoint``; both write the same format, so a file from
either opens in the other.
"""
from dataclasses import asdict

import numpy as np

from .checkpoint import CheckpointError, CheckpointReader, CheckpointWriter

# model_config fields that change the tensors; dtype is checked per dataset instead
ARCH_FIELDS = ("image_size", "patch_size", "dim", "depth", "heads", "mlp_dim", "num_classes",
               "in_chans", "class_token")


def check_compatible(reader, preset, config, specs):
    """Raise CheckpointError for the FIRST way ``reader`` does not fit this model.

    preset: this run's preset name.  config: its ``ViTConfig`` (or a dict).
    specs: ``[(name, shape, dtype)]`` of the parameters in model order.
    Order of checks: preset, architecture fields, then per parameter
    presence, shape, dtype, then parameters the model does not have.
    """
    path = reader.path
    stored = reader.meta.get("preset")
    if stored != preset:
        raise CheckpointError(f"{path}: checkpoint of model preset {stored!r}, but this run "
                              f"builds {preset!r}: expected the same preset")
    cfg = config if isinstance(config, dict) else vars(config)
    saved = reader.meta.get("model_config", {})
    for field in ARCH_FIELDS:
        if field in saved and saved[field] != cfg.get(field):
            raise CheckpointError(f"{path}: model_config.{field} is {saved[field]!r} in the "
                                  f"checkpoint, {cfg.get(field)!r} in this run: expected equal")
    for name, shape, dtype in specs:
        got = reader.spec("params", name)
        if got is None:
            raise CheckpointError(f"{path}: parameter {name!r} missing from the checkpoint")
        if got[0] != tuple(shape):
            raise CheckpointError(f"{path}: parameter {name!r} has shape {got[0]} in the "
                                  f"checkpoint, expected {tuple(shape)}")
        if got[1] != np.dtype(dtype):
            raise CheckpointError(f"{path}: parameter {name!r} has dtype {got[1]} in the "
                                  f"checkpoint, expected {np.dtype(dtype)}")
    known = {name for name, _, _ in specs}
    extra = [n for n in reader.names("params") if n not in known]
    if extra:
        raise CheckpointError(f"{path}: parameter {extra[0]!r} in the checkpoint is not in "
                              "the model")


def param_specs(model):
    """``[(name, shape, dtype)]`` of ``model``'s parameters in model order (full shapes)."""
    dtype = np.dtype(model.config.dtype)
    return [(name, shape, dtype) for name, (_, _, shape) in model.flat.offsets.items()]


def _optimizer_groups(optimizer):
    if optimizer is None:
        return {}
    return {f"optim/{k}": buf for k, buf in optimizer.state.items()}


def save_model(path, model, optimizer=None, *, step, preset, **meta):
    """Write ``model``'s parameters (and ``optimizer``'s state, if given) to ``path``.

    model : ``minivit.model.ViT``; optimizer : ``AdamW``/``SGD`` over ``model.flat``.
    meta : other checkpoint metadata (scheduler, loader, rng, nonfinite, run_config).
    Returns the path.  Raises OSError from the file system; the previous
    content of ``path`` survives any failure (atomic replace).
    """
    flat = model.flat
    names = list(flat.offsets)
    opt_meta = None
    if optimizer is not None:
        opt_meta = {"type": type(optimizer).__name__.lower(), "step": optimizer.step_count,
                    "hyper": {k: v for k, v in optimizer._hyper().items() if k != "lr"}}
    with CheckpointWriter(path) as writer:
        for name, array in flat.named_arrays(flat.data).items():
            writer.write("params", name, array)
        for group, buf in _optimizer_groups(optimizer).items():
            for name, array in flat.named_arrays(buf).items():
                writer.write(group, name, array)
        full = dict(meta, step=int(step), preset=preset, model_config=asdict(model.config),
                    param_names=names, layout={"world": 1, "dp": 1, "tp": 1, "pp": 1, "zero": 0})
        if opt_meta is not None:
            full["optimizer"] = opt_meta
        return writer.commit(full)


def load_model(path, model, optimizer=None, *, preset, exclude=()):
    """Load ``path`` into ``model`` (and ``optimizer``); returns the checkpoint metadata.

    exclude : parameter names left at their current value and not required in
        the file (e.g. ``("head.weight", "head.bias")`` when fine-tuning with a new head;
        the preset's architecture check then skips ``num_classes``).
    Raises CheckpointError for the first mismatch (preset, architecture,
    name, shape, dtype), a corrupt dataset, or a file without optimizer state
    when an optimizer is given.
    """
    flat = model.flat
    specs = [s for s in param_specs(model) if s[0] not in exclude]
    config = asdict(model.config)
    with CheckpointReader(path) as reader:
        if exclude:
            # a replaced head may change num_classes; compare it through the head shapes only
            config["num_classes"] = reader.meta.get("model_config", {}).get("num_classes")
        check_compatible(reader, preset, config,
                         specs if not exclude else specs + _stored_extra(reader, exclude))
        views = flat.named_arrays(flat.data)
        for name, _, _ in specs:
            views[name][...] = reader.read("params", name)
        if optimizer is not None:
            for group, buf in _optimizer_groups(optimizer).items():
                bviews = flat.named_arrays(buf)
                for name, _, _ in specs:
                    bviews[name][...] = reader.read(group, name)
            optimizer.step_count = int(reader.meta.get("optimizer", {}).get("step",
                                                                          reader.step))
        return reader.meta


def _stored_extra(reader, exclude):
    """Specs of excluded names that the file has (so they are not reported as unexpected)."""
    out = []
    for name in exclude:
        spec = reader.spec("params", name)
        if spec is not None:
            out.append((name, spec[0], spec[1]))
    return out


def read_params(path):
    """``{name: array}`` of every parameter in the file, in model order (checksums verified)."""
    with CheckpointReader(path) as reader:
        names = reader.meta.get("param_names") or reader.names("params")
        return {name: np.asarray(reader.read("params", name)) for name in names}
