"""Index files: the per-shard sidecar ``SHARD.tar.idx`` and the dataset ``index.json``.

Sidecar (JSON)::

    {"format": "minivit.shard-index", "version": 1,
     "shard_bytes": 20480,                       # file size the index describes
     "samples": [{"key": "000000", "offset": 0, "end": 2048,
                  "members": {"png": [512, 1234], "cls": [2048, 1]}}, ...],
     "labels": [3, ...] | null,                  # cls values (writer only)
     "crc32": [{"png": 123, "cls": 456}, ...] | null}   # zlib.crc32 (writer only)

``offset`` is the byte offset of the sample's first header, ``end`` the end
of its last member's padding; ``members`` maps extension to
``[data offset, data size]`` in bytes.  An index built by walking headers has
``labels`` and ``crc32`` null (the walk never reads member data).

Dataset index (JSON)::

    {"format": "minivit.dataset-index", "version": 1,
     "shards": [{"path": "train-000000.tar", "samples": 1000, "bytes": 123,
                 "index": {...sidecar dict...}}],      # "index" optional
     "num_samples": 1000, "num_classes": 10, "class_counts": [...],
     "class_names": [...] | null}

Shard paths are relative to the folder of ``index.json``.  With the sample
tables inline, ``index.json`` alone makes every shard random-access and the
sidecars are optional: shards + 1 file, the smallest file count.
"""
import json
import os

SHARD_FORMAT = "minivit.shard-index"
DATASET_FORMAT = "minivit.dataset-index"
VERSION = 1


def write_json(path, obj):
    """Write ``obj`` as JSON atomically (temporary file, then rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
    os.replace(tmp, path)


def shard_index_dict(samples, shard_bytes, labels=None, crc32=None):
    """The sidecar dict for one shard (see module docstring)."""
    return {"format": SHARD_FORMAT, "version": VERSION, "shard_bytes": int(shard_bytes),
            "samples": samples, "labels": labels, "crc32": crc32}


def read_shard_index(path, obj=None):
    """Load and check a sidecar (or check ``obj``, an inline table from
    ``path``); raises ``ValueError`` naming ``path``."""
    if obj is None:
        with open(path) as f:
            try:
                obj = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not a JSON shard index ({e})") from None
    if not isinstance(obj, dict) or obj.get("format") != SHARD_FORMAT:
        raise ValueError(f"{path}: expected format {SHARD_FORMAT!r}")
    if obj.get("version") != VERSION:
        raise ValueError(f"{path}: unsupported shard index version {obj.get('version')!r}")
    n = len(obj["samples"])
    for field in ("labels", "crc32"):
        if obj.get(field) is not None and len(obj[field]) != n:
            raise ValueError(f"{path}: {field} has {len(obj[field])} entries, "
                             f"expected {n} (one per sample)")
    return obj


def write_dataset_index(index_path, shard_paths, class_names=None, tables=None, inline=True):
    """Write ``index.json`` for ``shard_paths``.

    ``tables``: the shards' sidecar dicts in the same order; default: read
    the ``SHARD.tar.idx`` sidecars (how shards written by several processes
    are merged).  ``inline`` stores the sample tables in ``index.json``.
    Shards are listed in the given order.  Raises ``ValueError`` if a sidecar
    is missing or has no labels.  Returns the dict written.
    """
    root = os.path.dirname(os.path.abspath(index_path))
    shards, counts = [], []
    for k, shard in enumerate(shard_paths):
        side = os.fspath(shard) + ".idx"
        if tables is not None:
            idx = tables[k]
        elif not os.path.exists(side):
            raise ValueError(f"{shard}: no sidecar {side}; write shards with sidecars=True")
        else:
            idx = read_shard_index(side)
        if idx["labels"] is None:
            raise ValueError(f"{side}: has no labels (built by a header walk?)")
        for label in idx["labels"]:
            if label >= len(counts):
                counts.extend([0] * (label + 1 - len(counts)))
            counts[label] += 1
        shards.append({"path": os.path.relpath(os.path.abspath(shard), root),
                       "samples": len(idx["samples"]), "bytes": idx["shard_bytes"]})
        if inline:
            shards[-1]["index"] = idx
    num_classes = len(counts)
    if class_names is not None:
        class_names = list(class_names)
        if len(class_names) < num_classes:
            raise ValueError(f"{len(class_names)} class names for labels up to "
                             f"{num_classes - 1}")
        num_classes = len(class_names)
        counts.extend([0] * (num_classes - len(counts)))
    obj = {"format": DATASET_FORMAT, "version": VERSION, "shards": shards,
           "num_samples": sum(s["samples"] for s in shards), "num_classes": num_classes,
           "class_counts": counts, "class_names": class_names}
    write_json(index_path, obj)
    return obj


def read_dataset_index(path):
    """``(index dict, [absolute shard paths])``; every shard must exist.

    Raises ``ValueError`` naming ``path`` for a bad file and
    ``FileNotFoundError`` naming every missing shard (checked at start-up,
    before any sample is read).
    """
    with open(path) as f:
        try:
            obj = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a JSON dataset index ({e})") from None
    if not isinstance(obj, dict) or obj.get("format") != DATASET_FORMAT:
        raise ValueError(f"{path}: expected format {DATASET_FORMAT!r}")
    root = os.path.dirname(os.path.abspath(path))
    paths = [os.path.normpath(os.path.join(root, s["path"])) for s in obj["shards"]]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"{path}: {len(missing)} shard(s) listed in the index "
                                f"are missing: {', '.join(missing[:5])}"
                                f"{' ...' if len(missing) > 5 else ''}")
    return obj, paths
