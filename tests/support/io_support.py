"""Helpers shared by the IO tests (no tests here): tiny PNGs and shard writers."""
import io

import numpy as np
from PIL import Image

from minivit.io import ShardWriter


def image(i, size=8):
    """A deterministic ``uint8 (size, size, 3)`` image that differs per ``i``."""
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(pattern, n, per_shard, size=8, num_classes=3, **kw):
    """Write ``n`` samples, ``per_shard`` to a shard; returns the closed writer.

    Sample ``j`` has key ``f"{j:06d}"``, image ``image(j, size)``, label
    ``j % num_classes`` and json ``{"j": j}``.
    """
    with ShardWriter(pattern, max_count=per_shard, **kw) as w:
        for j in range(n):
            w.write({"__key__": f"{j:06d}", "png": png(image(j, size)),
                     "cls": j % num_classes, "json": {"j": j}})
    return w
