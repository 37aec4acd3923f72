"""Generation text in the EXIF of JPEG and WebP files (no image decoding, no Qt, no torch).

A1111 / Forge write their infotext into a JPEG's or WebP's EXIF ``UserComment`` (through
piexif: an 8-byte character code, ``UNICODE\\0`` then UTF-16, or ``ASCII\\0\\0\\0``);
ComfyUI's WebP saver writes its workflow and prompt as IFD0 ``Make`` / ``Model`` (and lower
tags) strings ``workflow:{...}`` and ``prompt:{...}``. :func:`read_exif_text_from` returns
them under the names PNG text chunks use (``parameters``, ``workflow``, ``prompt``).

Everything is bounded: only the JPEG segments before the image data and the WebP chunk
headers are read, an EXIF block is at most ``MAX_EXIF`` bytes, at most ``MAX_TAGS`` IFD
entries are looked at, and malformed EXIF gives :class:`ExifError` or nothing, never
another exception.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

#: One EXIF block (a JPEG APP1 segment is at most 64 KiB; a WebP EXIF chunk may be larger).
MAX_EXIF = 16 * 2**20
#: IFD entries looked at in one EXIF block.
MAX_TAGS = 4096
#: JPEG segments looked at before giving up.
MAX_SEGMENTS = 1000

JPEG_SIGNATURE = b"\xff\xd8\xff"
_USER_COMMENT = 0x9286
_EXIF_IFD = 0x8769
#: IFD0 string tags ComfyUI's WebP saver uses for ``key:value`` texts.
_COMFY_TAGS = (0x010E, 0x010F, 0x0110)


class ExifError(ValueError):
    """The bytes are not a readable JPEG or WebP."""


def image_kind(head: bytes) -> str | None:
    """``jpeg`` or ``webp`` for a file's first 12 bytes, else None."""
    if head.startswith(JPEG_SIGNATURE):
        return "jpeg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def read_exif_text_from(f: BinaryIO) -> dict[str, str]:
    """The generation texts in an open JPEG's or WebP's EXIF: ``parameters`` (A1111's
    UserComment), ``workflow`` and ``prompt`` (ComfyUI's). Empty when there is none.
    Raises :class:`ExifError` when the file is neither a JPEG nor a WebP, or is cut short
    before its EXIF."""
    f.seek(0)
    kind = image_kind(f.read(12))
    if kind is None:
        raise ExifError("not a JPEG or WebP file")
    block = _jpeg_exif(f) if kind == "jpeg" else _webp_exif(f)
    if not block:
        return {}
    try:
        return _texts(block)
    except (struct.error, IndexError, ValueError, OverflowError):
        return {}  # malformed EXIF: the image simply carries nothing Studio reads


def _jpeg_exif(f: BinaryIO) -> bytes | None:
    f.seek(2)
    for _ in range(MAX_SEGMENTS):
        marker = f.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        kind = marker[1]
        if kind == 0xFF:  # fill byte
            f.seek(-1, 1)
            continue
        if kind in (0xD9, 0xDA):  # end of image, start of scan: no EXIF before the data
            return None
        if 0xD0 <= kind <= 0xD7 or kind == 0x01:  # markers without a length
            continue
        raw = f.read(2)
        if len(raw) < 2:
            raise ExifError("the JPEG is cut short")
        (length,) = struct.unpack(">H", raw)
        if length < 2:
            raise ExifError("a JPEG segment has a bad length")
        if kind == 0xE1:
            data = f.read(length - 2)
            if data.startswith(b"Exif\x00\x00"):
                return data[6:]
        else:
            f.seek(length - 2, 1)
    return None


def _webp_exif(f: BinaryIO) -> bytes | None:
    f.seek(12)
    for _ in range(MAX_SEGMENTS):
        header = f.read(8)
        if len(header) < 8:
            return None
        name, size = header[:4], struct.unpack("<I", header[4:])[0]
        if name == b"EXIF":
            if size > MAX_EXIF:
                raise ExifError(f"its EXIF is larger than {MAX_EXIF // 2**20} MiB")
            data = f.read(size)
            return data[6:] if data.startswith(b"Exif\x00\x00") else data
        f.seek(size + (size & 1), 1)
    return None


def _texts(tiff: bytes) -> dict[str, str]:
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or struct.unpack(order + "H", tiff[2:4])[0] != 42:
        return {}
    (ifd0,) = struct.unpack(order + "I", tiff[4:8])
    out: dict[str, str] = {}
    entries = _ifd(tiff, order, ifd0)
    for tag in _COMFY_TAGS:
        text = _ascii(tiff, order, entries.get(tag))
        if text and ":" in text:
            key, value = text.split(":", 1)
            if key in ("workflow", "prompt") and key not in out:
                out[key] = value
    exif = entries.get(_EXIF_IFD)
    if exif is not None:
        (offset,) = struct.unpack(order + "I", exif[2])
        comment = _ifd(tiff, order, offset).get(_USER_COMMENT)
        if comment is not None:
            text = _user_comment(_value_bytes(tiff, order, comment), order)
            if text and text.strip():
                out["parameters"] = text
    return out


_Entry = tuple[int, int, bytes]  # type, count, the 4 value/offset bytes
_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1, 9: 4, 10: 8}


def _ifd(tiff: bytes, order: str, offset: int) -> dict[int, _Entry]:
    if offset < 8 or offset + 2 > len(tiff):
        return {}
    (count,) = struct.unpack(order + "H", tiff[offset : offset + 2])
    out: dict[int, _Entry] = {}
    for i in range(min(count, MAX_TAGS)):
        at = offset + 2 + 12 * i
        if at + 12 > len(tiff):
            break
        tag, kind, n = struct.unpack(order + "HHI", tiff[at : at + 8])
        out.setdefault(tag, (kind, n, tiff[at + 8 : at + 12]))
    return out


def _value_bytes(tiff: bytes, order: str, entry: _Entry) -> bytes:
    kind, n, raw = entry
    size = _SIZES.get(kind, 1) * n
    if size <= 4:
        return raw[:size]
    (offset,) = struct.unpack(order + "I", raw)
    if size > MAX_EXIF or offset + size > len(tiff):
        raise ValueError("an EXIF value lies outside the block")
    return tiff[offset : offset + size]


def _ascii(tiff: bytes, order: str, entry: _Entry | None) -> str | None:
    if entry is None or entry[0] not in (2, 7):
        return None
    return _value_bytes(tiff, order, entry).split(b"\x00", 1)[0].decode("utf-8", "replace")


def _user_comment(data: bytes, order: str) -> str:
    """EXIF UserComment: an 8-byte character code, then the text."""
    code, body = data[:8], data[8:]
    if code == b"UNICODE\x00":
        return _utf16(body, order)
    if code == b"JIS\x00\x00\x00\x00\x00":
        return body.decode("shift_jis", "replace").rstrip("\x00")
    # ASCII, undefined (eight zero bytes), or no code at all: UTF-8 where it is valid
    if code in (b"ASCII\x00\x00\x00", b"\x00" * 8):
        data = body
    return data.decode("utf-8", "replace").rstrip("\x00")


def _utf16(body: bytes, order: str) -> str:
    """UTF-16 text: a byte order mark decides; otherwise the zero bytes of ASCII characters
    do (piexif writes big-endian whatever the file's byte order; other tools follow it)."""
    if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return body.decode("utf-16", "replace").rstrip("\x00")
    even = body[0::2].count(0)
    odd = body[1::2].count(0)
    codec = "utf-16-be" if even > odd or (even == odd and order == ">") else "utf-16-le"
    return body[: len(body) & ~1].decode(codec, "replace").rstrip("\x00")
