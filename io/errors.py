"""Error and warning types of the IO layer.

Every damage report names the shard path and the byte offset, so a user can
inspect the exact spot (``dd if=SHARD bs=1 skip=OFFSET count=512 | xxd``).
"""


class ShardError(ValueError):
    """A shard is damaged at ``offset`` (bytes) of ``path``."""

    def __init__(self, path, offset, reason):
        super().__init__(f"{path}: byte {offset}: {reason}")
        self.path, self.offset, self.reason = path, offset, reason


class CorruptSampleError(ShardError):
    """One sample cannot be read or decoded (truncated, checksum, bad image)."""


class ShardWarning(UserWarning):
    """Damage skipped under ``on_error="skip"``; the message names path and offset."""


ON_ERROR = ("skip", "raise")


def check_on_error(value):
    """Return ``value`` if it is a known policy, else raise ``ValueError``."""
    if value not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {value!r}")
    return value
