"""Image bytes -> ``uint8 (H, W, 3)`` with Pillow, behind a pixel limit.

The pixel limit is checked on the header Pillow parses in ``Image.open``,
before any pixel data is decompressed, so a decompression bomb (a tiny PNG
that inflates to gigapixels) costs nothing.  It is a per-call argument, not
Pillow's process-global ``Image.MAX_IMAGE_PIXELS``.
"""
import io as _pyio

import numpy as np
from PIL import Image

DEFAULT_MAX_PIXELS = 1 << 26   # 67 Mpixel, e.g. 8192 x 8192
FORMATS = ("PNG", "JPEG", "WEBP")  # never let Pillow guess exotic formats


class DecodeError(ValueError):
    """Bytes that are not a decodable image within the limits."""


def check_max_pixels(max_pixels):
    """Return ``max_pixels`` if it is a positive int, else raise ``ValueError``."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    return max_pixels


def decode_image(data, max_pixels=DEFAULT_MAX_PIXELS):
    """Decode PNG/JPEG/WebP ``data`` (bytes) to a new ``uint8 (H, W, 3)`` array.

    Grey, palette and alpha images are converted to RGB.  Raises
    ``DecodeError`` for undecodable bytes or more than ``max_pixels`` pixels.
    """
    try:
        with Image.open(_pyio.BytesIO(data), formats=FORMATS) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise DecodeError(f"image is {w}x{h} = {w * h} pixels, "
                                  f"above max_pixels={max_pixels}")
            if img.mode != "RGB":
                img = img.convert("RGB")
            else:
                img.load()
            arr = np.asarray(img)
    except DecodeError:
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, ...
        raise DecodeError(f"undecodable image ({type(e).__name__}: {e})") from None
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DecodeError(f"decoded image has shape {arr.shape}, expected (H, W, 3)")
    return arr


def parse_label(data):
    """ASCII decimal ``cls`` bytes -> int >= 0; raises ``DecodeError``."""
    text = bytes(data).strip()
    if not text.isdigit() or len(text) > 18:
        raise DecodeError(f"cls member {bytes(data)[:20]!r} is not a non-negative integer")
    return int(text)
