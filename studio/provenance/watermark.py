"""The invisible watermark: invisible-watermark's DWT-DCT-SVD method (``dwtDctSvd``).

The mark is written the way ``imwatermark`` (the ``invisible-watermark`` package, which
SDXL's reference pipeline uses) does: the image's U (chroma) plane, one level of a Haar
wavelet, and in every 4x4 block of its approximation the largest singular value of the
block's DCT is quantised (step 36) so that its remainder says one bit of the payload;
the payload repeats over the blocks, and reading takes each bit's majority. An image
marked here is read by ``imwatermark.WatermarkDecoder('bytes', 48).decode(bgr,
'dwtDctSvd')``, and an image it marks is read here (a test checks both when the package
is installed).

Why not SDXL's own ``dwtDct`` (the same wavelet, one coefficient per block): on the flat
images a diffusion model draws, that coefficient is not found again after JPEG at any
quality or a resize (measured: 0 of 12 images at 512x512 after JPEG 95), while the
singular value, which carries the block's mean, survives JPEG 75 and a resize to half
(benchmarks/bench_provenance.py). Same package, same payload, the robust sibling.

Why not the package itself: it loops over the blocks in Python (10 s for a 2048x2048
image here) and needs the GUI build of OpenCV, whose bundled Qt collides with ours.
This module does the same arithmetic with numpy over all blocks at once: the Haar
approximation is a sum of 2x2 pixels, a DCT leaves singular values as they are, the top
singular triplet comes from a few steps of power iteration, and the colour conversion is
OpenCV's constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Studio's payload: 48 bits, as SDXL's, spelling "Studio" (ASCII).
PAYLOAD = b"Studio"
PAYLOAD_BITS = len(PAYLOAD) * 8
#: Quantisation step of the marked coefficients (imwatermark's default for dwtDct).
SCALE = 36.0
BLOCK = 4
#: imwatermark refuses images of fewer pixels than this (256x256): below it the payload
#: repeats too few times to be read back after any change. A smaller image is saved
#: unmarked; one halved below it is read at twice its size.
MIN_PIXELS = 256 * 256
#: A mark is "found" when at most this many of the 48 bits read wrong. An unmarked image
#: reads as a coin toss per bit: the chance that one matches this well by accident is
#: sum(C(48, k), k <= 4) / 2**48, under 1e-9.
MAX_BIT_ERRORS = 4


@dataclass(frozen=True)
class WatermarkReading:
    found: bool
    bit_errors: int  # of PAYLOAD_BITS; -1 when the image was too small to read
    checked: bool  # False: the image is smaller than MIN_PIXELS, nothing was read

    def to_json(self) -> dict[str, Any]:
        return {"found": self.found, "bit_errors": self.bit_errors, "checked": self.checked}


def payload_bits(payload: bytes = PAYLOAD) -> Any:
    import numpy as np

    return np.unpackbits(np.frombuffer(payload, dtype=np.uint8))


#: OpenCV's BGR<->YUV constants (``cv2.COLOR_BGR2YUV``), which imwatermark reads with:
#: U = 0.492 (B - Y) + 128, Y = 0.299 R + 0.587 G + 0.114 B; back: B += 2.032 dU,
#: G -= 0.395 dU (R does not depend on U).
_U_FROM_RGB = (-0.299 * 0.492, -0.587 * 0.492, (1 - 0.114) * 0.492)
_RGB_FROM_U = (0.0, -0.395, 2.032)


def _haar_ca(rgb: Any) -> Any:
    """The approximation of one level of a Haar wavelet of the image's U plane
    (``pywt.dwt2(u, 'haar')[0]``), over its top-left part whose sides are multiples of 4:
    half the sum of each 2x2 cell, and U is linear in R, G, B, so the cells are summed
    first (in integers) and converted once, at a quarter of the size."""
    import numpy as np

    h, w = (rgb.shape[0] // 4) * 4, (rgb.shape[1] // 4) * 4
    px = rgb[:h, :w, :3]
    # Four strided adds: numpy's reduction over a reshaped 5-d view is many times slower.
    cells = px[0::2, 0::2].astype(np.uint16)
    cells += px[0::2, 1::2]
    cells += px[1::2, 0::2]
    cells += px[1::2, 1::2]
    u = cells.astype(np.float32) @ np.asarray(_U_FROM_RGB, np.float32)
    u *= 0.5
    u += 2 * 128.0
    return u


def _blocks(ca: Any) -> tuple[Any, int, int]:
    """The 4x4 blocks of ``ca`` (row-major, as imwatermark walks them) as rows of 16."""
    rows, cols = ca.shape[0] // BLOCK, ca.shape[1] // BLOCK
    b = ca[: rows * BLOCK, : cols * BLOCK].reshape(rows, BLOCK, cols, BLOCK)
    return b.transpose(0, 2, 1, 3).reshape(rows * cols, BLOCK * BLOCK), rows, cols


def _top_singular(blocks: Any) -> tuple[Any, Any, Any]:
    """(s, u, v): each 4x4 block's largest singular value and its singular vectors.

    imwatermark takes them from the SVD of the block's DCT; an orthonormal DCT leaves
    singular values as they are, so they are the block's own. In an image block the
    first one is far above the others (it carries the mean), so a few steps of power
    iteration find it, at a fraction of the cost of a batched SVD."""
    import numpy as np

    b = blocks.reshape(-1, BLOCK, BLOCK)
    gram = np.matmul(b.transpose(0, 2, 1), b)[..., None]
    v = np.full((len(b), BLOCK, 1), 0.5, dtype=b.dtype)
    for _ in range(4):
        v = np.matmul(gram[..., 0], v)
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    bv = np.matmul(b, v)[..., 0]
    s = np.linalg.norm(bv, axis=1)
    return s, bv / np.maximum(s, 1e-12)[:, None], v[..., 0]


def embed(rgb: Any, payload: bytes = PAYLOAD) -> Any:
    """``rgb`` (HxWx3 uint8) with the payload marked in; an image smaller than
    :data:`MIN_PIXELS` comes back unchanged.

    Each block's largest singular value is moved to the quantisation level of its bit;
    the change of the Haar approximation is d/2 on each of its 2x2 pixels (the inverse
    wavelet), and a change of U moves B and G only, so no plane is rounded through a
    colour conversion."""
    import numpy as np

    if rgb.shape[0] * rgb.shape[1] < MIN_PIXELS:
        return rgb
    ca = _haar_ca(rgb)
    blocks, rows, cols = _blocks(ca)
    bits = payload_bits(payload)
    wanted = bits[np.arange(len(blocks)) % len(bits)].astype(np.float32)
    s, u, v = _top_singular(blocks)
    target = (s // SCALE + 0.25 + 0.5 * wanted) * SCALE
    delta = (target - s)[:, None, None] * u[:, :, None] * v[:, None, :]
    dca = delta.reshape(rows, cols, BLOCK, BLOCK).transpose(0, 2, 1, 3)
    dca = dca.reshape(rows * BLOCK, cols * BLOCK)
    # Pixels are integers, so rounding the shift rounds the sum: integer arithmetic below,
    # one plane at a time (contiguous 2x2 cells broadcast; many times faster than both
    # planes interleaved).
    h, w = dca.shape[0] * 2, dca.shape[1] * 2
    out = rgb.copy()
    for channel, factor in ((1, _RGB_FROM_U[1]), (2, _RGB_FROM_U[2])):
        shift = np.rint(dca * np.float32(factor / 2)).astype(np.int16)
        cells = out[:h, :w, channel].reshape(h // 2, 2, w // 2, 2)
        moved = cells.astype(np.int16)
        moved += shift[:, None, :, None]
        np.clip(moved, 0, 255, out=moved)
        cells[...] = moved
    return out


def read_bits(rgb: Any, nbits: int = PAYLOAD_BITS) -> Any:
    """The bits the image carries, or None when it is smaller than :data:`MIN_PIXELS`.

    Each block votes with how far its remainder sits from the two bit values (a soft
    vote: a block that JPEG moved near the boundary hardly counts), where imwatermark
    counts hard votes; on an unchanged image both read the same."""
    import numpy as np

    if rgb.shape[0] * rgb.shape[1] < MIN_PIXELS:
        return None
    blocks, _, _ = _blocks(_haar_ca(rgb))
    s, _, _ = _top_singular(blocks)
    vote = -np.sin(2 * np.pi * (s % SCALE) / SCALE)  # +1 at 3/4 step: bit 1
    which = np.arange(len(blocks)) % nbits
    return (np.bincount(which, weights=vote, minlength=nbits) > 0).astype(np.uint8)


def _errors(rgb: Any, payload: bytes) -> int | None:
    import numpy as np

    bits = read_bits(rgb, len(payload) * 8)
    return None if bits is None else int(np.count_nonzero(bits != payload_bits(payload)))


def detect(rgb: Any, payload: bytes = PAYLOAD) -> WatermarkReading:
    """Whether ``rgb`` (HxWx3 uint8) carries Studio's mark.

    A copy scaled down to half (as sites do) is read again at twice its size, which puts
    the blocks back on their grid."""
    import numpy as np
    from PIL import Image

    best = _errors(rgb, payload)
    if best is None or best > MAX_BIT_ERRORS:
        h, w = rgb.shape[:2]
        up = Image.fromarray(np.ascontiguousarray(rgb[..., :3])).resize(
            (w * 2, h * 2), Image.Resampling.BICUBIC
        )
        again = _errors(np.asarray(up), payload)
        if again is not None and (best is None or again < best):
            best = again
    if best is None:
        return WatermarkReading(found=False, bit_errors=-1, checked=False)
    return WatermarkReading(found=best <= MAX_BIT_ERRORS, bit_errors=best, checked=True)


def pil_embed(im: Any, payload: bytes = PAYLOAD) -> Any:
    """A PIL image with the mark (RGB or RGBA, its alpha kept as it was; other modes and
    images under :data:`MIN_PIXELS` come back as they are)."""
    import numpy as np
    from PIL import Image

    if im.width * im.height < MIN_PIXELS or im.mode not in ("RGB", "RGBA"):
        return im  # too small; or grey (a mask), which a mark in the colour would tint
    rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    marked = embed(rgb, payload)
    # Shares the array's memory (fromarray would copy 12 MB at 2048x2048).
    out = Image.frombuffer("RGB", im.size, marked, "raw", "RGB", 0, 1)
    if im.mode == "RGBA":
        out.putalpha(im.getchannel("A"))
    return out


def pil_detect(im: Any, payload: bytes = PAYLOAD) -> WatermarkReading:
    import numpy as np

    return detect(np.asarray(im.convert("RGB")), payload)
