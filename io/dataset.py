"""``ShardDataset``: random access to samples inside tar shards by global index.

Nothing is extracted.  Each sample is one ``os.pread`` of the byte range from
its first header to the end of its last member, taken from one file
descriptor per shard (``pread`` carries its own offset, so threads share the
descriptors without locks).  Offsets come from the sample table in ``index.json``
or the ``SHARD.tar.idx`` sidecar when it matches the file size, else from a
header walk (``minivit.io.walk``).
"""
import os
import threading
import warnings
import zlib

import numpy as np

from .closing import Closeable
from .decode import DEFAULT_MAX_PIXELS, DecodeError, check_max_pixels, decode_image, parse_label
from .errors import CorruptSampleError, ShardError, ShardWarning, check_on_error
from .index import read_dataset_index, read_shard_index
from .walk import IMAGE_EXTS, walk_shard


def resolve_source(source):
    """``(shard paths, dataset index dict or None)`` for ``source``.

    ``source`` is an ``index.json`` path, a folder holding ``index.json`` (or
    else ``*.tar`` files, taken in sorted order), one ``.tar`` path, or a list
    of ``.tar`` paths.  Raises ``ValueError``/``FileNotFoundError``.
    """
    if isinstance(source, (list, tuple)):
        paths = [os.path.abspath(os.fspath(p)) for p in source]
        if not paths:
            raise ValueError("empty list of shard paths")
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"missing shard(s): {', '.join(missing[:5])}")
        return paths, None
    source = os.fspath(source)
    if os.path.isdir(source):
        index = os.path.join(source, "index.json")
        if os.path.isfile(index):
            source = index
        else:
            tars = sorted(f for f in os.listdir(source) if f.endswith(".tar"))
            if not tars:
                raise FileNotFoundError(f"{source}: no index.json and no .tar shards")
            return [os.path.join(os.path.abspath(source), f) for f in tars], None
    if source.endswith(".json"):
        meta, paths = read_dataset_index(source)
        if not paths:
            raise ValueError(f"{source}: the index lists no shards")
        return paths, meta
    if not os.path.isfile(source):
        raise FileNotFoundError(f"shard or index not found: {source}")
    return [os.path.abspath(source)], None


class ShardDataset(Closeable):
    """Samples of tar shards, addressed by a global index ``0 <= i < len(self)``.

    Args:
        source: see ``resolve_source``.
        on_error: ``"skip"`` (default) warns with ``ShardWarning`` naming the
            shard path and byte offset, counts the damage and goes on;
            ``"raise"`` raises ``ShardError`` at start-up for damage found
            while indexing.  Per-sample failures always raise
            ``CorruptSampleError`` from ``__getitem__``; the ``Loader`` applies
            the policy to them.
        max_pixels: images with more pixels are rejected (decompression bombs).
        verify_crc: check the writer's CRC-32 of each member when known.

    Attributes: ``problems`` (list of ``(path, offset, reason)`` found while
    indexing), ``labels`` (``int64 (N,)``, -1 where unknown before reading),
    ``num_classes`` (int or None), ``shard_paths``.
    """

    def __init__(self, source, on_error="skip", max_pixels=DEFAULT_MAX_PIXELS,
                 verify_crc=True):
        self.on_error = check_on_error(on_error)
        self.max_pixels = check_max_pixels(max_pixels)
        self.verify_crc = verify_crc
        self.shard_paths, meta = resolve_source(source)
        self.problems = []
        shard_of, entries, labels, crcs = [], [], [], []
        inline = [s.get("index") for s in meta["shards"]] if meta else [None] * len(
            self.shard_paths)
        for sid, path in enumerate(self.shard_paths):
            samples, sample_labels, sample_crcs = self._index_shard(path, inline[sid])
            shard_of.extend([sid] * len(samples))
            entries.extend(samples)
            labels.extend(sample_labels)
            crcs.extend(sample_crcs)
        self._shard_of = np.asarray(shard_of, dtype=np.int32)
        self._entries = entries
        self._crcs = crcs
        self.labels = np.asarray(labels, dtype=np.int64)
        known = self.labels[self.labels >= 0]
        self.num_classes = (meta or {}).get("num_classes") or (
            int(known.max()) + 1 if known.size == len(self.labels) and known.size else None)
        self.class_names = (meta or {}).get("class_names")
        self._fds = [None] * len(self.shard_paths)
        self._lock = threading.Lock()

    def _index_shard(self, path, inline=None):
        """``(entries, labels, crcs)`` of one shard: from the table inline in
        ``index.json``, else its sidecar, else a header walk."""
        size = os.path.getsize(path)
        side = path + ".idx"
        for where, exists in (("index.json", inline is not None),
                              (side, inline is None and os.path.isfile(side))):
            if not exists:
                continue
            try:
                idx = read_shard_index(where, inline)
                if idx["shard_bytes"] == size:
                    n = len(idx["samples"])
                    return (idx["samples"], idx["labels"] or [-1] * n,
                            idx["crc32"] or [None] * n)
                self._report(path, 0, f"index in {where} describes {idx['shard_bytes']} "
                                      f"bytes but the shard has {size}; re-indexing")
            except (ValueError, KeyError, TypeError) as e:
                self._report(path, 0, f"unusable index in {where} ({e}); re-indexing")
        samples, problems, _ = walk_shard(path)
        for p in problems:
            self._report(path, p.offset, p.reason)
        return samples, [-1] * len(samples), [None] * len(samples)

    def _report(self, path, offset, reason):
        if self.on_error == "raise":
            raise ShardError(path, offset, reason)
        self.problems.append((path, offset, reason))
        warnings.warn(f"{path}: byte {offset}: {reason}", ShardWarning, stacklevel=4)

    def __len__(self):
        return len(self._entries)

    def _fd(self, sid):
        fd = self._fds[sid]
        if fd is None:
            with self._lock:  # opened lazily: thousands of shards, few in use
                if self._fds[sid] is None:
                    self._fds[sid] = os.open(self.shard_paths[sid], os.O_RDONLY)
                fd = self._fds[sid]
        return fd

    def locate(self, i):
        """``(shard path, byte offset)`` of sample ``i``; raises ``IndexError``."""
        i = self._check_index(i)
        return self.shard_paths[self._shard_of[i]], self._entries[i]["offset"]

    def _check_index(self, i):
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"sample index must be an int, got {type(i).__name__}")
        n = len(self._entries)
        if not -n <= i < n:
            raise IndexError(f"sample index {i} out of range for {n} samples")
        return int(i) % n

    def read_sample(self, i):
        """Raw member bytes of sample ``i`` as ``{ext: bytes}`` plus ``__key__``,
        ``__url__`` (shard path) and ``__offset__`` (bytes).

        Raises ``CorruptSampleError`` for a short read or a CRC mismatch.
        """
        i = self._check_index(i)
        sid, entry = self._shard_of[i], self._entries[i]
        path, start, end = self.shard_paths[sid], entry["offset"], entry["end"]
        buf = os.pread(self._fd(sid), end - start, start)
        if len(buf) != end - start:
            raise CorruptSampleError(path, start, f"sample {entry['key']!r} truncated: read "
                                                  f"{len(buf)} of {end - start} bytes")
        view = memoryview(buf)
        out = {"__key__": entry["key"], "__url__": path, "__offset__": start}
        crcs = self._crcs[i] if self.verify_crc else None
        for ext, (off, size) in entry["members"].items():
            data = view[off - start:off - start + size]
            if crcs is not None and ext in crcs and zlib.crc32(data) != crcs[ext]:
                raise CorruptSampleError(path, off, f"member {entry['key']}.{ext}: CRC-32 "
                                                    "mismatch with the index")
            out[ext] = bytes(data)
        return out

    def __getitem__(self, i):
        """``(image uint8 (H, W, 3), label int)`` of sample ``i``.

        Raises ``CorruptSampleError`` (path and byte offset in the message)
        if the sample cannot be read or decoded.
        """
        raw = self.read_sample(i)
        path, offset = raw["__url__"], raw["__offset__"]
        ext = next((e for e in IMAGE_EXTS if e in raw), None)
        try:
            if ext is None:
                raise DecodeError(f"no image member among {sorted(raw)}")
            if "cls" not in raw:      # a hostile or foreign shard: no label member
                raise DecodeError(f"no cls member among {sorted(raw)}")
            image = decode_image(raw[ext], self.max_pixels)
            label = parse_label(raw["cls"])
        except DecodeError as e:
            raise CorruptSampleError(path, offset, f"sample {raw['__key__']!r}: {e}") from None
        return image, label

    def close(self):
        """Close the shard file descriptors (reopened on the next read)."""
        with self._lock:
            for sid, fd in enumerate(self._fds):
                if fd is not None:
                    os.close(fd)
                    self._fds[sid] = None
