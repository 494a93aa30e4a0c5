"""Layout-independent training checkpoints in HDF5 (h5py), written atomically.

One file ``step_XXXXXXX.h5`` holds the *full* (unsharded) state by parameter
name, so any parallel layout can write it and any other can read it::

    /params/<name>            full parameter, model dtype, e.g. params/blocks.0.attn.qkv.weight
    /optim/<state>/<name>     optimizer state of that parameter (AdamW: exp_avg, exp_avg_sq;
                              SGD: momentum_buffer), same shape and dtype
    root attributes           format, format_version, step, preset, model_config (JSON),
                              param_names (JSON list, model order), optimizer, scheduler,
                              loader, rng, nonfinite, run_config, layout (JSON),
                              checksum (sha256 hex)

Every dataset carries a ``sha256`` attribute of its bytes; the root
``checksum`` is the SHA-256 of the manifest (each dataset's path, dtype, shape
and digest, sorted) plus the metadata, and it is written last: a file without
it never finished.  The first 512 bytes (an HDF5 user block, ignored by
HDF5) hold ``MINIVIT-CHECKPOINT``, the length and the SHA-256 of the rest of
the file, checked before h5py opens it.  Saving follows the usual crash-safe recipe (write a
temporary file in the same directory, flush, ``fsync``, ``os.replace``,
``fsync`` the directory), so a crash or SIGKILL mid-save leaves at worst a
stray temporary file, never a damaged ``step_*.h5``.  No pickle anywhere: a
checkpoint is plain arrays and JSON text.  Format details: docs/checkpoints.md.
"""
import hashlib
import json
import os
import re
import warnings
from pathlib import Path

import h5py
import numpy as np

FORMAT = "minivit-checkpoint"
FORMAT_VERSION = 1
# HDF5 user block: bytes the HDF5 library skips.  After the file is closed the
# writer puts MAGIC, the length and the SHA-256 of everything after the block
# there, so a reader checks the whole file with hashlib *before* the HDF5
# parser sees a byte: damaged metadata can crash libhdf5 (segfault), not just
# raise, so damaged bytes must never reach it.
USERBLOCK = 512
MAGIC = b"MINIVIT-CHECKPOINT\n"
STEP_FILE = re.compile(r"^step_(\d{7,})\.h5$")
META_KEYS = ("step", "preset", "model_config", "param_names", "optimizer", "scheduler",
             "loader", "rng", "nonfinite", "run_config", "layout")


class CheckpointError(ValueError):
    """A checkpoint that is unreadable, incomplete, corrupt or does not fit the model."""


def checkpoint_path(directory, step):
    """``directory/step_XXXXXXX.h5`` (7-digit zero-padded optimizer step)."""
    return Path(directory) / f"step_{int(step):07d}.h5"


def array_digest(array):
    """SHA-256 hex digest of an array's C-order bytes."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _json(value):
    def default(obj):
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, (np.ndarray, tuple, set)):
            return list(obj.tolist() if isinstance(obj, np.ndarray) else obj)
        if isinstance(obj, Path):
            return str(obj)
        raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
    return json.dumps(value, sort_keys=True, default=default)


def _manifest_digest(entries, meta_json):
    """entries: {dataset path: (dtype str, shape tuple, sha256 hex)}; meta_json: {key: JSON str}."""
    h = hashlib.sha256()
    for path in sorted(entries):
        dtype, shape, digest = entries[path]
        h.update(f"{path}\0{dtype}\0{list(shape)}\0{digest}\n".encode())
    for key in sorted(meta_json):
        h.update(f"{key}\0{meta_json[key]}\n".encode())
    return h.hexdigest()


def _fsync_path(path, directory=False):
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _seal(path):
    """Write MAGIC, the body length and the body's SHA-256 into the user block."""
    length, digest = _body_digest(path)
    header = MAGIC + f"{length} {digest}\n".encode()
    with open(path, "r+b") as fh:
        fh.write(header.ljust(USERBLOCK, b"\0"))


HASH_BUFFER = 256 << 10   # bytes; one reused buffer, so hashing adds no memory per model size


def _body_digest(path):
    """``(bytes after the user block, their sha256 hex)``, read through one buffer."""
    h, length = hashlib.sha256(), 0
    buf = bytearray(HASH_BUFFER)
    view = memoryview(buf)
    with open(path, "rb") as fh:
        fh.seek(USERBLOCK)
        while n := fh.readinto(buf):
            h.update(view[:n])
            length += n
    return length, h.hexdigest()


def check_file(path):
    """Raise CheckpointError unless ``path``'s bytes are exactly those its writer sealed.

    Pure Python (no HDF5): catches truncation, appended bytes, any flipped
    byte, a file that is not a minivit checkpoint and an unfinished write
    (whose user block is still zeros).
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            block = fh.read(USERBLOCK)
        size = path.stat().st_size
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc})") from None
    if not block.startswith(MAGIC):
        raise CheckpointError(f"{path}: no minivit checkpoint header (not a checkpoint, or a "
                              "write that never finished)")
    try:
        length, digest = block[len(MAGIC):].split(b"\n", 1)[0].decode().split()
        length = int(length)
    except ValueError:
        raise CheckpointError(f"{path}: damaged checkpoint header") from None
    if size != USERBLOCK + length:
        raise CheckpointError(f"{path}: {size} bytes, expected {USERBLOCK + length} "
                              "(truncated, extended or damaged)")
    if _body_digest(path)[1] != digest:
        raise CheckpointError(f"{path}: file checksum mismatch (corrupt bytes)")


class CheckpointWriter:
    """Stream tensors into a temporary HDF5 file; ``commit(meta)`` makes it ``path`` atomically.

    ``write(group, name, array)`` stores one full tensor (e.g. ``"params"``,
    ``"blocks.0.mlp.fc1.weight"``), so a caller gathering unit by unit never
    holds more than one unit.  Used as a context manager, an exception before
    ``commit`` removes the temporary file and leaves ``path`` untouched.
    Raises OSError from the file system (e.g. ENOSPC) unchanged.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(self.tmp, "w", userblock_size=USERBLOCK)
        self._entries = {}

    def write(self, group, name, array):
        array = np.ascontiguousarray(array)
        key = f"{group}/{name}"
        if key in self._entries:
            raise ValueError(f"dataset {key!r} written twice: expected each tensor once")
        digest = array_digest(array)
        ds = self._file.create_dataset(key, data=array)
        ds.attrs["sha256"] = digest
        self._entries[key] = (array.dtype.str, array.shape, digest)

    def commit(self, meta):
        """Write ``meta`` (keys of META_KEYS, JSON-able values) and the checksum, then rename.

        Returns the final path.  Raises ValueError for an unknown or missing key.
        """
        unknown = sorted(set(meta) - set(META_KEYS))
        if unknown or "step" not in meta:
            raise ValueError(f"checkpoint metadata keys {unknown}: expected 'step' and only "
                             f"keys of {META_KEYS}")
        meta_json = {k: _json(v) for k, v in meta.items()}
        attrs = self._file.attrs
        attrs["format"], attrs["format_version"] = FORMAT, FORMAT_VERSION
        for key, text in meta_json.items():
            attrs[key] = text
        attrs["checksum"] = _manifest_digest(self._entries, meta_json)   # last: marks completion
        self._file.flush()
        self._file.close()
        self._file = None
        _seal(self.tmp)                       # whole-file length + sha256 in the user block
        _fsync_path(self.tmp)                 # data on disk before the name points at it
        os.replace(self.tmp, self.path)
        _fsync_path(self.path.parent, directory=True)   # the rename itself is durable
        return self.path

    def abort(self):
        """Close and delete the temporary file (errors ignored: we are already failing)."""
        try:
            if self._file is not None:
                self._file.close()
        except Exception:   # noqa: BLE001 - a broken file handle must not mask the real error
            pass
        self._file = None
        try:
            self.tmp.unlink()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None or self._file is not None:
            self.abort()
        return False


class CheckpointReader:
    """Open a checkpoint read-only and check that it is complete.

    ``meta`` holds the decoded root attributes (``step`` int, others as stored).
    ``read(group, name)`` returns one array after checking its sha256;
    ``verify()`` re-hashes every dataset and the manifest.
    Raises CheckpointError naming the file and the reason (no minivit header,
    truncated, file checksum mismatch, not HDF5, wrong format, no checksum =
    unfinished write, corrupt dataset).
    """

    def __init__(self, path):
        self.path = Path(path)
        check_file(self.path)          # before libhdf5 parses anything
        try:
            self._file = h5py.File(self.path, "r")
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{self.path}: not a readable HDF5 file, truncated or "
                                  f"damaged ({exc})") from None
        try:
            attrs = dict(self._file.attrs)
            if attrs.get("format") != FORMAT:
                raise CheckpointError(f"{self.path}: format {attrs.get('format')!r}, expected "
                                      f"{FORMAT!r}")
            if int(attrs.get("format_version", -1)) != FORMAT_VERSION:
                raise CheckpointError(f"{self.path}: format_version "
                                      f"{attrs.get('format_version')}, expected {FORMAT_VERSION}")
            if "checksum" not in attrs:
                raise CheckpointError(f"{self.path}: no checksum attribute (the write never "
                                      "finished)")
            self.checksum = str(attrs["checksum"])
            self._meta_json = {k: str(attrs[k]) for k in META_KEYS if k in attrs}
            self.meta = {k: json.loads(v) for k, v in self._meta_json.items()}
        except CheckpointError:
            self.close()
            raise
        except Exception as exc:   # noqa: BLE001 - any decode failure means a damaged file
            self.close()
            raise CheckpointError(f"{self.path}: unreadable metadata ({exc})") from None

    @property
    def step(self):
        return int(self.meta["step"])

    def _damaged(self, what, call):
        """``call()``, with any HDF5 error on a damaged file turned into CheckpointError."""
        try:
            return call()
        except CheckpointError:
            raise
        except Exception as exc:   # noqa: BLE001 - HDF5 raises RuntimeError, KeyError, OSError
            raise CheckpointError(f"{self.path}: {what} unreadable, damaged file "
                                  f"({type(exc).__name__}: {exc})") from None

    def names(self, group):
        """Dataset names inside ``group`` (empty list if the group is absent)."""
        def names():
            g = self._file.get(group)
            return [] if g is None else list(g.keys())
        return self._damaged(f"group {group!r}", names)

    def spec(self, group, name):
        """``(shape, dtype)`` of a stored tensor, or None when it is absent."""
        def spec():
            ds = self._file.get(f"{group}/{name}")
            return None if ds is None else (tuple(ds.shape), ds.dtype)
        return self._damaged(f"dataset {group}/{name}", spec)

    def read(self, group, name, verify=True):
        key = f"{group}/{name}"
        ds = self._damaged(f"dataset {key!r}", lambda: self._file.get(key))
        if not isinstance(ds, h5py.Dataset):
            raise CheckpointError(f"{self.path}: dataset {key!r} missing")
        try:
            # Hostile-file limits, checked before any byte is read: only plain numeric
            # arrays (no object, string or compound dtypes), and no more bytes than
            # the file holds -- the writer stores tensors uncompressed, so a larger
            # claim is a compression bomb or a forged shape, not a checkpoint.
            if ds.dtype.kind not in "biufc" or ds.dtype.fields is not None:
                raise CheckpointError(f"{self.path}: dataset {key!r} has dtype {ds.dtype}, "
                                      "expected a numeric array")
            if ds.size * ds.dtype.itemsize > self.path.stat().st_size:
                raise CheckpointError(f"{self.path}: dataset {key!r} claims shape {ds.shape} "
                                      f"({ds.size * ds.dtype.itemsize} bytes), more than "
                                      "the file holds")
            array = ds[()]
            digest = ds.attrs.get("sha256")
        except CheckpointError:
            raise
        except Exception as exc:   # noqa: BLE001 - HDF5 raises assorted errors on damage
            raise CheckpointError(f"{self.path}: dataset {key!r} unreadable ({exc})") from None
        if verify and digest is None:
            raise CheckpointError(f"{self.path}: dataset {key!r} has no sha256 attribute")
        if verify and array_digest(array) != str(digest):
            raise CheckpointError(f"{self.path}: dataset {key!r} fails its sha256 checksum "
                                  "(corrupt)")
        return np.asarray(array)

    def verify(self):
        """Re-hash every dataset and the manifest; raises CheckpointError on the first failure."""
        entries = {}
        keys = []
        self._damaged("object tree", lambda: self._file.visititems(
            lambda k, obj: keys.append(k) if isinstance(obj, h5py.Dataset) else None))
        for key in keys:
            group, name = key.split("/", 1) if "/" in key else ("", key)
            array = self.read(group, name)
            entries[key] = (array.dtype.str, array.shape, array_digest(array))
        if _manifest_digest(entries, self._meta_json) != self.checksum:
            raise CheckpointError(f"{self.path}: manifest checksum mismatch (datasets or "
                                  "metadata changed, added or lost)")

    def close(self):
        if getattr(self, "_file", None) is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def list_checkpoints(directory):
    """``[(step, path)]`` of ``step_*.h5`` files in ``directory``, ascending step."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), directory / f.name) for f in directory.iterdir()
             if (m := STEP_FILE.match(f.name))]
    return sorted(found)


def latest_valid_checkpoint(directory, verify=True):
    """Path of the newest checkpoint in ``directory`` that opens and verifies, or None.

    Each newer file that fails is skipped with a ``UserWarning`` naming the
    file and the reason, so the run falls back to the previous checkpoint.
    Temporary files of an interrupted save (``.step_*.h5.tmp-PID``) are never
    considered.
    """
    for step, path in reversed(list_checkpoints(directory)):
        try:
            with CheckpointReader(path) as reader:
                if reader.step != step:
                    raise CheckpointError(f"{path}: stores step {reader.step}, expected {step} "
                                          "from its name")
                if verify:
                    reader.verify()
            return path
        except CheckpointError as exc:
            warnings.warn(f"skipping invalid checkpoint {exc}", stacklevel=2)   # exc names the file
    return None


def prune_checkpoints(directory, keep_last):
    """Delete all but the ``keep_last`` newest ``step_*.h5`` (by step); returns removed paths.

    keep_last <= 0 keeps everything.  Stale temporary files of this directory
    are removed too (a finished save never leaves one).
    """
    removed = []
    if keep_last > 0:
        for _, path in list_checkpoints(directory)[:-keep_last]:
            path.unlink(missing_ok=True)
            removed.append(path)
    for tmp in Path(directory).glob(".step_*.h5.tmp-*"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed
