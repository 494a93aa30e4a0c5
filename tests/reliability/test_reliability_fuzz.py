"""Hostile inputs, fuzzed with hypothesis for a bounded number of examples: the shard
index sidecar, checkpoints (bytes and structure), and the TOML config.

Allowed outcomes only (no other exception, no hang, no unbounded allocation):

* shard index: ``ShardDataset`` opens (a bad index is reported with a
  ``ShardWarning`` and the shard re-indexed by walking headers, or
  ``ShardError`` under ``on_error="raise"``); each sample reads back exactly
  or raises ``CorruptSampleError``.
* checkpoint: ``CheckpointError`` (a ``ValueError``) naming the file, or a
  successful load whose arrays equal what was written.
* TOML config: a parsed Namespace or ``SystemExit(2)`` from ``parser.error``.
"""
import importlib.util
import json
import os
import warnings

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import ROOT
from minivit.checkpoint import (CheckpointError, CheckpointReader, CheckpointWriter,
                                latest_valid_checkpoint)
from minivit.checkpoint_state import check_compatible
from minivit.io import CorruptSampleError, ShardDataset, ShardError, ShardWarning
from io_support import image, write_shards

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70)
                    | st.floats(allow_nan=True) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)


class Blob(bytes):
    """Fixture bytes with a short repr (hypothesis prints fixtures of failing examples)."""

    def __repr__(self):
        return f"<{len(self)} bytes>"


def _paths(obj, prefix=()):
    """Every path (tuple of keys/indices) into a JSON tree."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _mutate(obj, path, value, delete):
    """Copy of ``obj`` with the node at ``path`` replaced by ``value`` (or deleted)."""
    obj = json.loads(json.dumps(obj))
    if not path:
        return value
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return obj


# ------------------------------------------------------------------ shard index
N = 4


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    root = tmp_path_factory.mktemp("idx")
    write_shards(str(root / "s-%06d.tar"), N, N)
    path = root / "s-000000.tar"
    return Blob(path.read_bytes()), json.loads((root / "s-000000.tar.idx").read_text())


@FUZZ
@given(st.data(), JSON, st.booleans())
def test_fuzzed_shard_index_only_documented_outcomes(shard, tmp_path_factory, data, value,
                                                     delete):
    tar, sidecar = shard
    paths = list(_paths(sidecar))
    path = data.draw(st.sampled_from(paths))
    bad = _mutate(sidecar, path, value, delete and bool(path))
    root = tmp_path_factory.mktemp("fz")
    tar_path = str(root / "s-000000.tar")
    with open(tar_path, "wb") as f:
        f.write(tar)
    with open(tar_path + ".idx", "w") as f:
        json.dump(bad, f)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = ShardDataset(tar_path)
    assert all(issubclass(w.category, ShardWarning) for w in caught)
    for i in range(len(ds)):
        try:
            img, label = ds[i]
        except CorruptSampleError as e:
            assert e.path == tar_path
            continue
        j = int(ds._entries[i]["key"]) if ds._entries[i]["key"].isdigit() else -1
        if not caught and j >= 0:          # index accepted: the CRCs vouch for the bytes
            np.testing.assert_array_equal(img, image(j))
    try:
        ShardDataset(tar_path, on_error="raise")
    except ShardError as e:
        assert e.path == tar_path


# ------------------------------------------------------------------ checkpoints
PRESET = "tiny"
CONFIG = {"image_size": 8, "dim": 4}
TENSORS = {"a.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
           "a.bias": np.linspace(-1, 1, 4).astype(np.float32),
           "b.weight": np.full((2, 2), 0.5, np.float32)}
SPECS = [(n, a.shape, a.dtype) for n, a in TENSORS.items()]


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "step_0000003.h5"
    writer = CheckpointWriter(path)
    for name, array in TENSORS.items():
        writer.write("params", name, array)
        writer.write("optim/exp_avg", name, array * 0.1)
    writer.commit({"step": 3, "preset": PRESET, "model_config": CONFIG,
                   "param_names": list(TENSORS)})
    return Blob(path.read_bytes())


def _load(directory):
    """The resume path: newest valid file, compatibility check, every tensor read."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        path = latest_valid_checkpoint(directory)
    if path is None:
        return None
    with CheckpointReader(path) as reader:
        check_compatible(reader, PRESET, CONFIG, SPECS)
        return {n: reader.read("params", n) for n in TENSORS}


def _check_loaded(got):
    if got is not None:
        for name, array in TENSORS.items():
            np.testing.assert_array_equal(got[name], array)


byte_damage = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True), st.just(0)),
    st.tuples(st.just("zero_block"), st.floats(0, 1, exclude_max=True), st.integers(1, 64)),
)


@FUZZ
@given(byte_damage)
def test_fuzzed_checkpoint_bytes_only_checkpoint_error(checkpoint_bytes, tmp_path_factory,
                                                       damage):
    kind, where, value = damage
    data = bytearray(checkpoint_bytes)
    pos = int(where * len(data))
    if kind == "flip":
        data[pos] ^= value
    elif kind == "truncate":
        del data[pos:]
    else:
        data[pos:pos + 8 * value] = bytes(len(data[pos:pos + 8 * value]))
    directory = tmp_path_factory.mktemp("ckb")
    (directory / "step_0000003.h5").write_bytes(bytes(data))
    try:
        got = _load(directory)
    except CheckpointError as e:
        assert "step_0000003.h5" in str(e)
    else:
        _check_loaded(got)


ATTRS = ["format", "format_version", "checksum", "step", "preset", "model_config",
         "param_names"]
edits = st.one_of(
    st.tuples(st.just("attr"), st.sampled_from(ATTRS), JSON.map(json.dumps)),
    st.tuples(st.just("attr_raw"), st.sampled_from(ATTRS), st.integers(-5, 5)),
    st.tuples(st.just("delete"), st.sampled_from(["params/a.weight", "params/b.weight",
                                                  "optim/exp_avg/a.bias"]), st.none()),
    st.tuples(st.just("retype"), st.sampled_from(["params/a.bias", "optim/exp_avg/b.weight"]),
              st.sampled_from(["float64", "int8", "str", "compound", "bomb", "shape"])),
)


def _edit(path, kind, key, value):
    with h5py.File(path, "r+") as f:
        if kind in ("attr", "attr_raw"):
            f.attrs[key] = value
        elif kind == "delete":
            del f[key]
        else:
            digest = f[key].attrs["sha256"]
            del f[key]
            if value == "str":
                ds = f.create_dataset(key, data=np.array(["x", "yy"], dtype=object),
                                      dtype=h5py.string_dtype())
            elif value == "compound":
                ds = f.create_dataset(key, data=np.zeros(4, dtype=[("a", "f4"), ("b", "i4")]))
            elif value == "bomb":      # 40 GB of zeros in a few KB: must never be read
                ds = f.create_dataset(key, shape=(10**10,), dtype="float32", chunks=(2**20,),
                                      compression="gzip", fillvalue=0.0)
            elif value == "shape":
                ds = f.create_dataset(key, data=np.zeros((5, 5), np.float32))
            else:
                ds = f.create_dataset(key, data=np.zeros(4, dtype=value))
            ds.attrs["sha256"] = digest


@FUZZ
@given(edits)
def test_fuzzed_checkpoint_structure_only_checkpoint_error(checkpoint_bytes, tmp_path_factory,
                                                           edit):
    directory = tmp_path_factory.mktemp("cks")
    path = directory / "step_0000003.h5"
    path.write_bytes(checkpoint_bytes)
    _edit(path, *edit)
    try:
        got = _load(directory)
    except CheckpointError as e:
        assert "step_0000003.h5" in str(e)
    else:
        _check_loaded(got)
    # the reader alone (no verify): a bomb or a string dataset is refused before reading
    try:
        with CheckpointReader(path) as reader:
            for group in ("params", "optim/exp_avg"):
                for name in reader.names(group):
                    reader.read(group, name, verify=False)
    except CheckpointError as e:
        assert "step_0000003.h5" in str(e)


# ------------------------------------------------------------------ TOML config
def _pretrain():
    spec = importlib.util.spec_from_file_location("pretrain_under_fuzz",
                                                  ROOT / "run" / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PRETRAIN = _pretrain()
FLAGS = sorted(a.dest for a in PRETRAIN.build_parser()._actions
               if a.dest not in ("help", "config"))
toml_scalar = (st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True)
               | st.text(max_size=10))


def _toml_literal(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else ("inf" if value == float("inf") else
                                            "-inf" if value == float("-inf") else repr(value))
    if isinstance(value, str):
        return json.dumps(value)          # a JSON string is a valid TOML basic string
    return str(value)


toml_docs = st.one_of(
    st.binary(max_size=80),                                     # arbitrary bytes
    st.dictionaries(st.sampled_from(FLAGS) | st.text(max_size=8), toml_scalar,
                    max_size=4).map(lambda d: "\n".join(
                        f"{json.dumps(k)} = {_toml_literal(v)}" for k, v in d.items()).encode()),
)


@FUZZ
@given(toml_docs)
@example(b"\x80")                              # not UTF-8 (tomllib: UnicodeDecodeError)
@example(b"lr = nan")                           # NaN slips through "x < y" range checks
@example(b"clip = -inf")
@example(b"timeout = inf")
@example(b"[model]\nname = 1")                 # a table
@example(b"steps = 1e400")                      # float for an int flag
@example(b'"offload_dir" = true')               # bool for a string flag (was a TypeError)
def test_fuzzed_toml_config_parses_or_exits_2(tmp_path_factory, document):
    path = tmp_path_factory.mktemp("toml") / "run.toml"
    path.write_bytes(document)
    parser = PRETRAIN.build_parser()
    try:
        args = PRETRAIN.parse_config(parser, ["--config", str(path)], world_size=1)
    except SystemExit as e:
        assert e.code == 2
        return
    for flag in ("lr", "min_lr", "weight_decay", "clip", "timeout", "label_smoothing"):
        assert np.isfinite(getattr(args, flag)), (flag, getattr(args, flag))
    assert args.min_lr <= args.lr      # else WarmupCosine raised at the first step (a traceback)
    assert args.steps >= 1 and args.micro_batch >= 1 and args.global_batch >= 1
