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
    shard_bytes = obj.get("shard_bytes")
    if not _is_int(shard_bytes) or shard_bytes < 0:
        raise ValueError(f"{path}: shard_bytes {shard_bytes!r}, expected an integer >= 0")
    samples = obj.get("samples")
    if not isinstance(samples, list):
        raise ValueError(f"{path}: samples is {type(samples).__name__}, expected a list")
    for i, entry in enumerate(samples):
        _check_entry(path, i, entry, shard_bytes)
    n = len(samples)
    for field, kind in (("labels", int), ("crc32", dict)):
        values = obj.get(field)
        if values is None:
            continue
        if not isinstance(values, list) or len(values) != n:
            raise ValueError(f"{path}: {field} has {_count(values)} entries, "
                             f"expected {n} (one per sample)")
        bad = next((v for v in values if not (_is_int(v) if kind is int
                                              else isinstance(v, dict))), None)
        if bad is not None:
            raise ValueError(f"{path}: {field} holds {bad!r}, expected {kind.__name__} values")
    return obj


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _count(values):
    return len(values) if isinstance(values, list) else type(values).__name__


def _check_entry(path, i, entry, shard_bytes):
    """Raise ValueError unless sample ``i`` lies inside the shard, members inside the sample.

    An index is read from disk and may be hostile: an offset past the file, or
    a size of terabytes, would otherwise reach ``os.pread`` (which allocates
    the size it is asked for) or read another sample's bytes.
    """
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
        raise ValueError(f"{path}: sample {i} is {entry!r:.80}, expected "
                         "{'key': str, 'offset', 'end', 'members'}")
    start, end, members = entry.get("offset"), entry.get("end"), entry.get("members")
    if not (_is_int(start) and _is_int(end) and 0 <= start <= end <= shard_bytes):
        raise ValueError(f"{path}: sample {i} spans bytes {start!r}..{end!r}, expected "
                         f"0 <= offset <= end <= shard_bytes {shard_bytes}")
    if not isinstance(members, dict) or not members:
        raise ValueError(f"{path}: sample {i} members {members!r:.80}, expected "
                         "{ext: [offset, size]}")
    for ext, span in members.items():
        ok = (isinstance(span, list) and len(span) == 2 and all(map(_is_int, span))
              and start <= span[0] and span[1] >= 0 and span[0] + span[1] <= end)
        if not ok:
            raise ValueError(f"{path}: sample {i} member {ext!r} at {span!r:.80}, expected "
                             f"[offset, size] inside the sample's bytes {start}..{end}")


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
