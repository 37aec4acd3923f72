"""Text chunks of PNG files: a saved image carries the workflow that made it.

Studio writes the workflow as a ``studio_workflow`` tEXt chunk (and A1111's
``parameters`` text beside it). Reading parses chunks directly: no image decoding,
no Qt, no torch, and compressed text is capped so a crafted file cannot exhaust memory.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WORKFLOW_KEY = "studio_workflow"
MAX_TEXT = 64 * 1024 * 1024


class PngError(ValueError):
    """The bytes are not a readable PNG."""


def is_png(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(8) == PNG_SIGNATURE
    except OSError:
        return False


def read_png_text(data: bytes) -> dict[str, str]:
    """The tEXt / zTXt / iTXt chunks of a PNG, keyword -> text (first one wins)."""
    if not data.startswith(PNG_SIGNATURE):
        raise PngError("not a PNG file")
    out: dict[str, str] = {}
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if len(body) < length:
            raise PngError("the file is cut short")
        pos += 12 + length
        if kind == b"IEND":
            break
        try:
            if kind == b"tEXt":
                key, _, text = body.partition(b"\0")
                out.setdefault(key.decode("latin-1"), text.decode("latin-1"))
            elif kind == b"zTXt":
                key, _, rest = body.partition(b"\0")
                out.setdefault(key.decode("latin-1"), _inflate(rest[1:]).decode("latin-1"))
            elif kind == b"iTXt":
                key, _, rest = body.partition(b"\0")
                compressed, _method = rest[0], rest[1]
                _lang, _, rest = rest[2:].partition(b"\0")
                _translated, _, text = rest.partition(b"\0")
                raw = _inflate(text) if compressed else text
                out.setdefault(key.decode("latin-1"), raw.decode("utf-8"))
        except (IndexError, UnicodeDecodeError, zlib.error):
            continue  # one bad chunk does not hide the others
    return out


def _inflate(data: bytes) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(data, MAX_TEXT)
    if d.unconsumed_tail:
        raise zlib.error("text chunk too large")
    return out
