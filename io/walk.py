"""Build a shard index by walking 512-byte headers (no sidecar needed).

Only header blocks are read (``os.pread`` of 512 bytes); member data is
skipped by seeking, so indexing costs one small read per member.  Small pax
and GNU long-name bodies are the only data read.

Damage is reported, never silently absorbed.  ``walk_shard`` returns the
samples it could index plus a list of ``Problem(offset, reason)``:
- a header with a bad checksum: the walk resynchronises on the next valid
  ustar header block, so later samples survive;
- zero blocks (an end-of-archive marker) followed by more data: reported,
  and the walk goes on after them;
- a member cut short by the end of the file, in its data or in the padding
  after it, or a missing end-of-archive marker (a cut at a 512-byte
  boundary): the walk stops there, and the cut member is not listed (its
  sample is then incomplete, or complete without it);
- a sample lacking an image or a ``cls`` member (e.g. its header was damaged).
Interleaved or duplicate keys are a malformed shard, not damage:
``ValueError`` naming the shard.
"""
import os
from dataclasses import dataclass

from . import tarformat as tf

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
_META_TYPES = (b"x", b"g", b"L", b"K")
_MAX_META = 1 << 20  # bytes; larger pax/long-name bodies are treated as damage


@dataclass(frozen=True)
class Problem:
    """Damage found at byte ``offset`` of a shard."""
    offset: int
    reason: str


def _read(fd, size, offset):
    return os.pread(fd, size, offset)


def _resync(fd, pos, file_size):
    """Offset of the next block that is a valid ustar header, or ``None``."""
    pos += tf.BLOCK
    while pos + tf.BLOCK <= file_size:
        block = _read(fd, tf.BLOCK, pos)
        if block == tf.ZERO_BLOCK or (block[257:262] == b"ustar" and tf.checksum_ok(block)):
            return pos
        pos += tf.BLOCK
    return None


def _next_data_block(fd, pos, file_size):
    """Offset of the first block at or after ``pos`` holding a non-zero byte, or ``None``.

    Normally this reads only the end-of-archive marker and record padding.
    """
    chunk = 64 * tf.BLOCK
    while pos < file_size:
        data = _read(fd, min(chunk, file_size - pos), pos)
        stripped = data.lstrip(b"\0")
        if stripped:
            first = len(data) - len(stripped)
            return pos + first - first % tf.BLOCK
        pos += len(data)
    return None


def walk_members(fd, file_size):
    """``([(name, data offset, size, header offset)], [Problem])`` of regular files."""
    members, problems = [], []
    pos, override = 0, {}
    while True:
        if pos + tf.BLOCK > file_size:
            what = "no end-of-archive marker" if pos == file_size else "partial header block"
            problems.append(Problem(pos, f"truncated: {what} at end of file "
                                         f"({file_size} bytes)"))
            break
        block = _read(fd, tf.BLOCK, pos)
        if block == tf.ZERO_BLOCK:
            # A zeroed header looks like the end marker; data after it means
            # damage, and silently stopping would drop the rest of the shard.
            nxt = _next_data_block(fd, pos, file_size)
            if nxt is None:
                break
            problems.append(Problem(pos, f"zero block(s) before more data at byte {nxt}; "
                                         "continuing after them"))
            pos, override = nxt, {}
            continue
        try:
            hdr = tf.decode_header(block)
        except tf.HeaderError as e:
            problems.append(Problem(pos, f"bad header ({e}); resynchronising"))
            nxt = _resync(fd, pos, file_size)
            if nxt is None:
                problems.append(Problem(pos, "no valid header after damaged block"))
                break
            pos, override = nxt, {}
            continue
        size = int(override.get("size", hdr.size))
        data = pos + tf.BLOCK
        nxt = data + size + (-size % tf.BLOCK)
        # The padding counts: a sample's byte range (its index "end") runs to the end
        # of its last member's padding, so a member cut inside its padding would be
        # listed in a sample that can never be read back.
        if nxt > file_size:
            problems.append(Problem(pos, f"truncated: member {hdr.name!r} needs {size} "
                                         f"bytes + {nxt - data - size} padding at {data}, "
                                         f"file has {file_size}"))
            break
        if hdr.typeflag in _META_TYPES:
            if size > _MAX_META:
                problems.append(Problem(pos, f"{size}-byte extended header is implausible"))
            elif hdr.typeflag == b"x":
                try:
                    override = tf.parse_pax(_read(fd, size, data))
                except tf.HeaderError as e:
                    problems.append(Problem(pos, f"bad pax header ({e})"))
                    override = {}
            elif hdr.typeflag == b"L":
                override = {"path": _read(fd, size, data).split(b"\0", 1)[0]
                            .decode("utf-8", "surrogateescape")}
            pos = nxt
            continue
        if hdr.typeflag in tf.REGULAR_TYPES:
            members.append((override.get("path", hdr.name), data, size, pos))
        override = {}
        pos = nxt
    return members, problems


def group_samples(path, members, problems):
    """Group consecutive members by key into index entries (module docstring)."""
    samples, seen = [], set()
    current = None
    for name, data, size, header in members:
        key, ext = tf.split_name(name)
        if current is None or key != current["key"]:
            if key in seen:
                raise ValueError(f"{path}: key {key!r} at byte {header} appears again "
                                 "after other keys (interleaved or duplicate keys)")
            seen.add(key)
            current = {"key": key, "offset": header, "members": {}}
            samples.append(current)
        elif ext in current["members"]:
            raise ValueError(f"{path}: duplicate member {name!r} at byte {header}")
        current["members"][ext] = [data, size]
        current["end"] = data + size + (-size % tf.BLOCK)
    complete = []
    for s in samples:
        if "cls" in s["members"] and any(e in s["members"] for e in IMAGE_EXTS):
            complete.append(s)
        else:
            problems.append(Problem(s["offset"], f"sample {s['key']!r} is incomplete "
                                                 f"(members {sorted(s['members'])})"))
    return complete


def walk_shard(path):
    """``(samples, problems, file size)`` for the shard at ``path``.

    ``samples`` has the sidecar entry format of ``minivit.io.index``.
    Raises ``ValueError`` naming ``path`` for interleaved/duplicate keys or a
    gzip-compressed shard, and
    ``OSError`` if the file cannot be opened.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        file_size = os.fstat(fd).st_size
        if _read(fd, 2, 0) == b"\x1f\x8b":
            raise ValueError(f"{path}: gzip-compressed; random access needs an "
                             "uncompressed tar (gunzip the shard)")
        members, problems = walk_members(fd, file_size)
    finally:
        os.close(fd)
    return group_samples(path, members, problems), problems, file_size
