"""``ShardWriter``: samples -> WebDataset-compatible ustar shards + index.

A sample is a dict ``{"__key__": str, "png": bytes, "cls": int, "json": dict}``
(``jpg``/``jpeg``/``webp`` may replace ``png``; ``json`` is optional).  Its
members are written consecutively in the fixed order image, ``cls``, ``json``
with fixed header metadata, so the same samples always give the same bytes.

The writer finally writes the dataset's ``index.json`` with every shard's
sample table inline (see ``minivit.io.index``), and by default also a
sidecar ``SHARD.tar.idx`` per shard (needed to merge shards written by
several processes; ``sidecars=False`` halves the file count).  A shard is written under
``NAME.partial`` and renamed when complete, so a crash never leaves a
truncated file under a shard name.
"""
import json
import os
import zlib

from . import tarformat as tf
from .index import shard_index_dict, write_dataset_index, write_json

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
MEMBER_ORDER = IMAGE_EXTS + ("cls", "json")


def encode_sample(sample):
    """``(key, [(ext, bytes), ...], label)`` in the fixed member order.

    Raises ``ValueError`` for a missing key, unknown fields, no image or
    more than one image, or a ``cls`` that is not a non-negative integer.
    """
    if not isinstance(sample, dict) or "__key__" not in sample:
        raise ValueError("sample must be a dict with a '__key__' entry")
    key = tf.validate_key(sample["__key__"])
    unknown = sorted(set(sample) - set(MEMBER_ORDER) - {"__key__"})
    if unknown:
        raise ValueError(f"sample {key!r}: unknown fields {unknown}; "
                         f"expected some of {list(MEMBER_ORDER)}")
    images = [e for e in IMAGE_EXTS if e in sample]
    if len(images) != 1:
        raise ValueError(f"sample {key!r}: expected exactly one image field of "
                         f"{list(IMAGE_EXTS)}, got {images}")
    if "cls" not in sample:
        raise ValueError(f"sample {key!r}: missing 'cls' (class label)")
    label = sample["cls"]
    if isinstance(label, (bytes, str)):
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int) or label < 0:
        raise ValueError(f"sample {key!r}: cls must be an int >= 0, got {sample['cls']!r}")
    members = []
    for ext in MEMBER_ORDER:
        if ext not in sample:
            continue
        value = sample[ext]
        if ext == "cls":
            value = b"%d" % label
        elif ext == "json" and isinstance(value, dict):
            value = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        elif isinstance(value, str):
            value = value.encode("utf-8")
        elif isinstance(value, (bytearray, memoryview)):
            value = bytes(value)
        if not isinstance(value, bytes):
            raise ValueError(f"sample {key!r}: field {ext!r} must be bytes, str"
                             f"{' or dict' if ext == 'json' else ''}, got {type(value).__name__}")
        members.append((ext, value))
    return key, members, label


class ShardWriter:
    """Write samples into shards ``pattern % 0``, ``pattern % 1``, ...

    Args:
        pattern: path with one ``%d``-style placeholder, e.g. ``out/train-%06d.tar``.
        max_count: samples per shard (a new shard starts after this many).
        max_bytes: shard size limit in bytes (a new shard starts before a
            sample would cross it; a single larger sample gets its own shard).
        index: write the dataset ``index.json`` (sample tables inline).
        sidecars: also write ``SHARD.tar.idx`` next to every shard.
        index_path: where ``index.json`` goes (default: the shards' folder).
        class_names: optional list stored in ``index.json``.
        start_shard: number of the first shard (lets MPI ranks write disjoint
            shard ranges that ``write_dataset_index`` then merges).

    Raises ``ValueError`` for a bad pattern, limits, key or sample; keys must
    be unique across the whole writer (the reader rejects duplicates).
    """

    def __init__(self, pattern, max_count=1000, max_bytes=3_000_000_000, index=True,
                 sidecars=True, index_path=None, class_names=None, start_shard=0):
        pattern = os.fspath(pattern)
        try:
            first = pattern % start_shard
        except (TypeError, ValueError):
            raise ValueError(f"shard pattern {pattern!r} needs one %d placeholder, "
                             "e.g. 'out/train-%06d.tar'") from None
        if first == pattern % (start_shard + 1):
            raise ValueError(f"shard pattern {pattern!r} gives the same name for every shard")
        if not (isinstance(max_count, int) and max_count >= 1):
            raise ValueError(f"max_count must be an int >= 1, got {max_count!r}")
        if not max_bytes >= 3 * tf.RECORD:
            raise ValueError(f"max_bytes must be >= {3 * tf.RECORD}, got {max_bytes!r}")
        self.pattern, self.max_count, self.max_bytes = pattern, max_count, max_bytes
        self.index, self.sidecars = index, sidecars
        self._tables = []           # sidecar dicts of completed shards
        self.index_path = index_path or os.path.join(os.path.dirname(pattern) or ".",
                                                     "index.json")
        self.class_names = list(class_names) if class_names is not None else None
        self.shard_no = start_shard
        self.shards = []            # completed shard paths
        self._keys = set()
        self._file = None
        self._closed = False

    # -- context manager -------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:  # do not publish an index for a failed run; keep partial files visible
            self._abort()

    # -- writing -----------------------------------------------------------
    def write(self, sample):
        """Append one sample; returns its size in the shard, in bytes."""
        if self._closed:
            raise ValueError("write() on a closed ShardWriter")
        key, members, label = encode_sample(sample)
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r}")
        blocks = [(tf.member_name(key, ext), data) for ext, data in members]
        nbytes = sum(tf.BLOCK + len(d) + len(tf.padding(len(d))) for _, d in blocks)
        if self._file is not None and (
                self._count >= self.max_count
                or self._offset + nbytes + 2 * tf.BLOCK > self.max_bytes):
            self._finish_shard()
        if self._file is None:
            self._open_shard()
        start = self._offset
        entry = {"key": key, "offset": start, "members": {}}
        crcs = {}
        for (name, data), (ext, _) in zip(blocks, members):
            self._file.write(tf.encode_header(name, len(data)))
            entry["members"][ext] = [self._offset + tf.BLOCK, len(data)]
            crcs[ext] = zlib.crc32(data)
            self._file.write(data)
            self._file.write(tf.padding(len(data)))
            self._offset += tf.BLOCK + len(data) + len(tf.padding(len(data)))
        entry["end"] = self._offset
        self._samples.append(entry)
        self._labels.append(label)
        self._crcs.append(crcs)
        self._keys.add(key)
        self._count += 1
        return self._offset - start

    def _open_shard(self):
        self._path = self.pattern % self.shard_no
        os.makedirs(os.path.dirname(self._path) or ".", exist_ok=True)
        self._file = open(self._path + ".partial", "wb")
        self._offset, self._count = 0, 0
        self._samples, self._labels, self._crcs = [], [], []

    def _finish_shard(self):
        self._file.write(tf.end_of_archive(self._offset))
        size = self._file.tell()
        self._file.close()
        self._file = None
        os.replace(self._path + ".partial", self._path)
        table = shard_index_dict(self._samples, size, labels=self._labels, crc32=self._crcs)
        if self.sidecars:
            write_json(self._path + ".idx", table)
        self._tables.append(table)
        self.shards.append(self._path)
        self.shard_no += 1

    def _abort(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        self._closed = True

    def close(self):
        """Finish the open shard and write ``index.json``; idempotent."""
        if self._closed:
            return
        if self._file is not None:
            self._finish_shard()
        self._closed = True
        if self.index and self.shards:
            write_dataset_index(self.index_path, self.shards, class_names=self.class_names,
                                tables=self._tables)
