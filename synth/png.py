"""PNG encoding of generated images (stdlib zlib; decoding with Pillow).

PNG encoding costs as much as rendering a FractalDB image, so the encoder is
chosen for speed (measured in docs/performance.md, ``python run/bench.py synth``):
- Pillow always runs libpng-style *adaptive* row filtering (it tries all five
  filters on every row) and exposes no option to turn it off.  On these
  images, mostly black with flat regions, that pass cost 2-3x the whole
  encode and the files came out *larger* than unfiltered ones (FractalDB 362
  px: Pillow level 1 2.6 ms / 17.4 kB vs. filter None + zlib level 1
  0.8 ms / 13.5 kB).  So rows are written with filter type 0 (None) and
  deflated with zlib level 1; the container (signature, IHDR, IDAT, IEND with
  CRC-32) follows the PNG specification (ISO/IEC 15948:2004, sec. 5 and 11).
- Grey images (all three channels equal: FractalDB patch_gray, VisualAtom)
  are stored as 8-bit greyscale (colour type 0): a third of the bytes.
  ``decode_png`` (Pillow ``.convert("RGB")``) returns exactly the rendered
  (H, W, 3) array.
"""
import io
import struct
import zlib

import numpy as np
from PIL import Image

COMPRESS_LEVEL = 1
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GREY, _RGB = 0, 2  # PNG colour types


def _chunk(kind, data):
    """One PNG chunk: length, type, data, CRC-32 over type + data."""
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)) & 0xFFFFFFFF))


def is_grey(img):
    """True if uint8 (H, W, 3) ``img`` has three equal channels."""
    return bool(np.array_equal(img[..., 0], img[..., 1])
                and np.array_equal(img[..., 0], img[..., 2]))


def encode_png(img, compress_level=COMPRESS_LEVEL):
    """PNG bytes of uint8 ``img``: (H, W) grey or (H, W, 3) RGB, 8 bits per sample.

    An RGB image whose channels are equal is written as greyscale (lossless).
    compress_level: zlib level 0..9.  Raises ValueError for another dtype,
    shape or level.
    """
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"img must be uint8, got {img.dtype}")
    if not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level must be in 0..9, got {compress_level}")
    if img.ndim == 3 and img.shape[2] == 3:
        if is_grey(img):
            img = img[..., 0]
    elif img.ndim != 2:
        raise ValueError(f"img must have shape (H, W) or (H, W, 3), got {img.shape}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"img must not be empty, got {img.shape}")
    height, width = img.shape[:2]
    colour_type = _GREY if img.ndim == 2 else _RGB
    # every scanline starts with its filter-type byte (0 = None)
    raw = np.zeros((height, 1 + img[0].size), np.uint8)
    raw[:, 1:] = img.reshape(height, -1)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"".join([_SIGNATURE, _chunk(b"IHDR", ihdr),
                     _chunk(b"IDAT", zlib.compress(raw.tobytes(), compress_level)),
                     _chunk(b"IEND", b"")])


def decode_png(data):
    """uint8 (H, W, 3) RGB array from PNG bytes (greyscale PNGs are expanded)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))
