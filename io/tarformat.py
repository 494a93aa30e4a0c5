"""POSIX ustar headers: encode, decode and validate (hand-written by design).

The layout is POSIX.1-1988 ``ustar`` (IEEE Std 1003.1, "pax" utility, section
"ustar Interchange Format"): 512-byte header blocks, member data padded to a
multiple of 512 bytes, and an end-of-archive marker of two zero blocks.
Numeric fields are zero-padded octal terminated by NUL; the checksum is the
unsigned byte sum of the header with the checksum field read as eight spaces.

The reader side also understands what other writers put in WebDataset shards:
pax extended headers (``x``/``g``; Python's ``tarfile`` emits one per member
when the mtime is a float, which the ``webdataset`` package does), GNU long
names (``L``) and GNU base-256 numbers.
"""
import re
from dataclasses import dataclass

BLOCK = 512
# tarfile and GNU tar pad archives to a 20-block record; doing the same keeps
# our bytes identical to ``tarfile.open(format=USTAR_FORMAT)`` for the tests.
RECORD = 20 * BLOCK
ZERO_BLOCK = bytes(BLOCK)
MAX_NAME = 100          # the ``name`` field; keys never need ``prefix``
MAX_SIZE = 8 ** 11 - 1  # 11 octal digits: 8 GiB - 1 byte per member

# Fixed metadata so equal samples give equal bytes (DESIGN.md section 4).
FIXED_MODE = 0o644
FIXED_MTIME = 0
FIXED_UID = 0
FIXED_GID = 0
FIXED_UNAME = "minivit"
FIXED_GNAME = "minivit"

REGULAR_TYPES = (b"0", b"\0", b"7")
_CHKSUM = slice(148, 156)
# A key may not hold a path separator, a dot (webdataset splits the member
# name at the first dot of the basename), whitespace or control characters.
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-+~@:=,%]+$")
_EXT_RE = re.compile(r"^[a-z0-9]+(\.[a-z0-9]+)*$")


class HeaderError(ValueError):
    """A 512-byte block is not a valid tar header (e.g. checksum mismatch)."""


@dataclass(frozen=True)
class Header:
    """Decoded fields of one header block that a reader needs.

    ``size`` is in bytes; ``typeflag`` is the raw one-byte type (``b"0"`` file).
    """
    name: str
    size: int
    typeflag: bytes


def validate_key(key):
    """Raise ``ValueError`` unless ``key`` is safe as a member-name stem.

    Rejects empty keys, ``/`` or ``\\`` (no absolute paths, no ``..``, no
    directories: tools that extract shards stay inside their target) and dots.
    """
    if not isinstance(key, str):
        raise ValueError(f"sample __key__ must be str, got {type(key).__name__}")
    if not _KEY_RE.fullmatch(key):
        raise ValueError(
            f"invalid sample key {key!r}: expected letters, digits or _-+~@:=,% "
            "(no path separators, dots, '..', whitespace or control characters)")
    return key


def member_name(key, ext):
    """``KEY.EXT`` after validating both parts; raises ``ValueError``."""
    validate_key(key)
    if not _EXT_RE.fullmatch(ext):
        raise ValueError(f"invalid member extension {ext!r} for key {key!r}")
    name = f"{key}.{ext}"
    if len(name.encode("ascii")) > MAX_NAME:
        raise ValueError(f"member name {name!r} is longer than {MAX_NAME} bytes")
    return name


def split_name(name):
    """``(key, ext)`` with the webdataset rule: the extension starts at the
    first dot of the basename, the key keeps any directory part.

    A name without a dot in its basename returns ``(name, "")``.
    """
    slash = name.rfind("/")
    dot = name.find(".", slash + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:]


def _octal(value, width):
    digits = width - 1
    if not 0 <= value < 8 ** digits:
        raise ValueError(f"value {value} does not fit in {digits} octal digits")
    return b"%0*o\0" % (digits, value)


def _text(value, width):
    raw = value.encode("ascii")
    if len(raw) > width:
        raise ValueError(f"{value!r} is longer than {width} bytes")
    return raw + bytes(width - len(raw))


def encode_header(name, size):
    """One 512-byte ustar header for a regular file ``name`` of ``size`` bytes.

    Field values are the fixed ones above, so the result depends only on
    ``(name, size)``.  Raises ``ValueError`` for an over-long name or size.
    """
    if not 0 <= size <= MAX_SIZE:
        raise ValueError(f"member {name!r}: size {size} bytes outside 0..{MAX_SIZE}")
    buf = b"".join([
        _text(name, 100), _octal(FIXED_MODE, 8), _octal(FIXED_UID, 8),
        _octal(FIXED_GID, 8), _octal(size, 12), _octal(FIXED_MTIME, 12),
        b" " * 8, b"0", bytes(100), b"ustar\x0000",
        _text(FIXED_UNAME, 32), _text(FIXED_GNAME, 32),
        bytes(16), bytes(155), bytes(12),  # devmajor/devminor unused for files
    ])
    assert len(buf) == BLOCK
    chk = sum(buf)
    return buf[:148] + b"%06o\0" % chk + buf[155:]


def padding(size):
    """Zero bytes that pad ``size`` bytes of member data to a block multiple."""
    return bytes(-size % BLOCK)


def end_of_archive(offset):
    """Two zero blocks, then zeros up to the next ``RECORD`` multiple.

    ``offset`` is the archive length before the marker, in bytes.
    """
    end = offset + 2 * BLOCK
    return bytes(2 * BLOCK + (-end % RECORD))


def _number(field):
    if field and field[0] & 0x80:  # GNU base-256 for values that overflow octal
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if field[0] == 0xFF else value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise HeaderError(f"numeric field {field!r} is not octal") from None


def checksum_ok(block):
    """True if the stored checksum matches (unsigned or the historic signed sum)."""
    try:
        stored = _number(block[_CHKSUM])
    except HeaderError:
        return False
    unsigned = sum(block) - sum(block[_CHKSUM]) + 8 * 32
    signed = unsigned - 256 * sum(1 for b in block if b > 127) \
        + 256 * sum(1 for b in block[_CHKSUM] if b > 127)
    return stored in (unsigned, signed)


def decode_header(block):
    """Decode a 512-byte header block; raises ``HeaderError`` if invalid."""
    if len(block) != BLOCK:
        raise HeaderError(f"header block has {len(block)} bytes, expected {BLOCK}")
    if not checksum_ok(block):
        raise HeaderError("header checksum mismatch")
    name = block[0:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar":
        prefix = block[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    size = _number(block[124:136])
    if size < 0:
        raise HeaderError(f"negative member size {size}")
    return Header(name=name.decode("utf-8", "surrogateescape"), size=size,
                  typeflag=block[156:157])


def parse_pax(data):
    """``{keyword: value}`` from a pax extended header body.

    Records are ``"LEN KEYWORD=VALUE\\n"`` where LEN counts the whole record
    (POSIX.1-2001, pax, "pax Extended Header").  Raises ``HeaderError``.
    """
    out, pos = {}, 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise HeaderError(f"bad pax record length at byte {pos}") from None
        record = data[space + 1:pos + length]
        if length <= 0 or not record.endswith(b"\n") or b"=" not in record:
            raise HeaderError(f"malformed pax record at byte {pos}")
        keyword, value = record[:-1].split(b"=", 1)
        out[keyword.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out
