"""Text chunks of PNG files: a saved image carries the workflow that made it.

Studio writes the workflow as a ``studio_workflow`` tEXt chunk (and A1111's
``parameters`` text beside it). Reading parses chunks directly: no image decoding,
no Qt, no torch. One bounded reader serves every caller, so a crafted file cannot
exhaust memory or time:

- all text chunks together may inflate to at most ``MAX_TEXT_TOTAL`` bytes, and each
  compressed chunk is inflated only up to what is left of that budget;
- the first chunk of a keyword wins; later ones with the same keyword are skipped
  without being inflated, and so are keywords the caller did not ask for;
- at most ``MAX_TEXT_CHUNKS`` text chunks are looked at;
- from a file, only chunk headers and text chunks are read (image data is skipped).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Collection
from pathlib import Path
from typing import BinaryIO

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WORKFLOW_KEY = "studio_workflow"
#: All text chunks of one PNG together, after inflating.
MAX_TEXT_TOTAL = 64 * 2**20
#: Text chunks (tEXt, zTXt, iTXt) looked at in one PNG.
MAX_TEXT_CHUNKS = 1000
_TEXT_KINDS = (b"tEXt", b"zTXt", b"iTXt")
_MiB = 2**20


class PngError(ValueError):
    """The bytes are not a readable PNG, or its text is larger than Studio reads."""


def is_png(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(8) == PNG_SIGNATURE
    except OSError:
        return False


def read_png_text(data: bytes, keys: Collection[str] | None = None) -> dict[str, str]:
    """The tEXt / zTXt / iTXt chunks of a PNG in memory, keyword -> text (first one wins).

    With ``keys``, only those keywords are read. Raises :class:`PngError` when the
    bytes are not a PNG, are cut short, or hold more text than the limits allow.
    """
    return read_png_text_from(io.BytesIO(data), keys)


def read_png_text_file(path: str | Path, keys: Collection[str] | None = None) -> dict[str, str]:
    """:func:`read_png_text` for a file, reading only its chunk headers and text chunks.

    Raises :class:`PngError` as :func:`read_png_text` does, and ``OSError`` when the file
    cannot be read.
    """
    with open(path, "rb") as f:
        return read_png_text_from(f, keys)


def read_png_text_from(f: BinaryIO, keys: Collection[str] | None = None) -> dict[str, str]:
    """:func:`read_png_text` for an open, seekable binary file, read from its start."""
    f.seek(0)
    if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
        raise PngError("not a PNG file")
    here = f.tell()
    size = f.seek(0, io.SEEK_END)
    f.seek(here)
    wanted = None if keys is None else {k.encode("latin-1", "replace") for k in keys}
    out: dict[str, str] = {}
    seen: set[bytes] = set()
    budget = MAX_TEXT_TOTAL
    text_chunks = 0
    while True:
        header = f.read(8)
        if len(header) < 8:
            if header:
                raise PngError("the file is cut short")
            break  # no IEND: still readable as far as it goes
        length, kind = struct.unpack(">I4s", header)
        if kind == b"IEND":
            break
        if kind not in _TEXT_KINDS:
            _skip(f, length + 4, size)  # the body and its CRC
            continue
        text_chunks += 1
        if text_chunks > MAX_TEXT_CHUNKS:
            raise PngError(f"it has more than {MAX_TEXT_CHUNKS} text chunks")
        if length > budget:
            raise PngError(_too_much())
        body = f.read(length)
        if len(body) < length:
            raise PngError("the file is cut short")
        _skip(f, 4, size)
        key, sep, rest = body.partition(b"\0")
        if not sep or key in seen or (wanted is not None and key not in wanted):
            continue  # a later chunk of a keyword already read is never inflated
        try:
            text, used = _chunk_text(kind, rest, budget)
        except (IndexError, UnicodeDecodeError, zlib.error):
            continue  # one bad chunk does not hide the others
        seen.add(key)
        budget -= used
        out[key.decode("latin-1")] = text
    return out


def _skip(f: BinaryIO, n: int, size: int) -> None:
    if f.seek(n, io.SEEK_CUR) > size:
        raise PngError("the file is cut short")


def _chunk_text(kind: bytes, rest: bytes, budget: int) -> tuple[str, int]:
    """The text of one chunk (after its keyword) and the bytes it took from the budget."""
    if kind == b"tEXt":
        return rest.decode("latin-1"), len(rest)
    if kind == b"zTXt":
        if rest[0] != 0:
            raise zlib.error("unknown compression method")
        raw = _inflate(rest[1:], budget)
        return raw.decode("latin-1"), len(raw)
    compressed, method = rest[0], rest[1]
    _lang, _, rest = rest[2:].partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    if compressed and method != 0:
        raise zlib.error("unknown compression method")
    raw = _inflate(text, budget) if compressed else text
    return raw.decode("utf-8"), len(raw)


def _inflate(data: bytes, budget: int) -> bytes:
    """Inflate at most ``budget`` bytes; more raises PngError (the whole file is refused)."""
    d = zlib.decompressobj()
    out = d.decompress(data, budget + 1)
    if len(out) > budget or d.unconsumed_tail:
        raise PngError(_too_much())
    if not d.eof:
        raise zlib.error("the compressed text is cut short")
    return out


def _too_much() -> str:
    return (
        f"its text chunks hold more than {MAX_TEXT_TOTAL // _MiB} MiB of text "
        "(after inflating); Studio reads no more than that"
    )
