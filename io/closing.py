"""``Closeable``: context-manager and finaliser behaviour for objects with ``close()``.

Shared by ``ShardDataset`` (file descriptors) and ``Loader`` (decode threads),
so both release their resources on ``with`` exit and at garbage collection.
"""


class Closeable:
    """Mixin: ``with obj:`` and ``del obj`` call ``obj.close()`` (which must be idempotent)."""

    def close(self):
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        # never raise from a finaliser (e.g. at interpreter shutdown)
        try:
            self.close()
        except Exception:
            pass
