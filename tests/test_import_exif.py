"""JPEG and WebP images open as the workflow in their EXIF: A1111's infotext in the
UserComment (as piexif writes it), ComfyUI's workflow or prompt in the IFD0 strings its
WebP saver writes. Malformed EXIF never crashes the reader."""

from __future__ import annotations

import json
import random
import struct

import pytest
from comfyui_files import txt2img_ui
from PIL import Image

from studio.errors import WorkflowFileError
from studio.graph.exifmeta import read_exif_text_from
from studio.graph.fileformat import open_any
from studio.library import installed_registry

INFOTEXT = (
    "a red circle, (blue:1.2) background\n"
    "Negative prompt: blurry\n"
    "Steps: 12, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 4242, "
    "Size: 64x64, Model: studio-tiny"
)


@pytest.fixture(scope="module")
def registry():
    return installed_registry()


def tiff(entries0: list[tuple[int, int, bytes]], exif: list[tuple[int, int, bytes]], order="<"):
    """A little TIFF/EXIF block: IFD0 entries (tag, type, value bytes) and an EXIF IFD."""
    e = order

    def ifd(entries, at, extra_at):
        head = struct.pack(e + "H", len(entries))
        body, data = b"", b""
        for tag, kind, value in entries:
            count = len(value) if kind in (2, 7) else 1
            if len(value) <= 4:
                body += struct.pack(e + "HHI", tag, kind, count) + value.ljust(4, b"\0")
            else:
                body += struct.pack(e + "HHI", tag, kind, count)
                body += struct.pack(e + "I", extra_at + len(data))
                data += value
        return head + body + struct.pack(e + "I", 0), data

    ifd0_at = 8
    n0 = len(entries0) + 1
    exif_at = ifd0_at + 2 + 12 * n0 + 4
    ifd0_data_at = exif_at + 2 + 12 * len(exif) + 4
    exif_ifd, exif_data = ifd(exif, exif_at, ifd0_data_at)
    rest_at = ifd0_data_at + len(exif_data)
    pointer = (0x8769, 4, struct.pack(e + "I", exif_at))
    ifd0, ifd0_data = ifd([*entries0, pointer], ifd0_at, rest_at)
    magic = b"II" if order == "<" else b"MM"
    return magic + struct.pack(e + "HI", 42, ifd0_at) + ifd0 + exif_ifd + exif_data + ifd0_data


def user_comment(text: str, code=b"UNICODE\0", codec="utf-16-be") -> tuple[int, int, bytes]:
    return (0x9286, 7, code + text.encode(codec))


def jpeg_with(path, block: bytes):
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path, "JPEG", exif=b"Exif\0\0" + block)
    return path


def test_an_a1111_jpeg_opens_as_its_workflow(registry, tmp_path):
    path = jpeg_with(tmp_path / "00012-4242.jpg", tiff([], [user_comment(INFOTEXT)]))
    result = open_any(path, registry)
    wf = result.workflow
    (sampler,) = [n for n in wf.nodes if n.type == "sampler"]
    assert (sampler.params["seed"], sampler.params["steps"]) == (4242, 12)
    assert (sampler.params["sampler"], sampler.params["scheduler"]) == ("dpmpp_2m", "karras")
    texts = sorted(n.params["text"] for n in wf.nodes if n.type == "text_encode")
    assert texts == ["a red circle, (blue:1.2) background", "blurry"]
    assert wf.path is None  # saving never writes over the image


@pytest.mark.parametrize(
    "code,codec,order",
    [
        (b"UNICODE\0", "utf-16-be", "<"),  # piexif: big-endian whatever the TIFF order
        (b"UNICODE\0", "utf-16-le", "<"),  # other tools follow the file's order
        (b"UNICODE\0", "utf-16-be", ">"),
        (b"ASCII\0\0\0", "ascii", ">"),
        (b"\0" * 8, "utf-8", "<"),
    ],
)
def test_user_comment_encodings(tmp_path, code, codec, order):
    text = "a cat\nSteps: 4, Seed: 1, Size: 64x64"
    path = jpeg_with(tmp_path / "x.jpg", tiff([], [user_comment(text, code, codec)], order))
    with open(path, "rb") as f:
        assert read_exif_text_from(f) == {"parameters": text}


def test_a_comfyui_webp_opens_as_its_workflow(registry, tmp_path):
    ui = txt2img_ui(seed=77, steps=5)
    exif = Image.Exif()
    exif[0x010F] = "workflow:" + json.dumps(ui)
    exif[0x0110] = "prompt:" + json.dumps({"1": {"class_type": "Nothing", "inputs": {}}})
    path = tmp_path / "ComfyUI_00001_.webp"
    Image.new("RGB", (8, 8)).save(path, "WEBP", exif=exif.tobytes())
    wf = open_any(path, registry).workflow
    assert wf.get_node("3").params["seed"] == 77  # the workflow wins over the prompt
    assert wf.path is None


def test_a_jpeg_without_a_workflow_says_so(registry, tmp_path):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(path, "JPEG")
    with pytest.raises(WorkflowFileError, match="image without a workflow"):
        open_any(path, registry)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(b"\xff\xd8\xff\xe1\x00")  # a segment header cut short
    with pytest.raises(WorkflowFileError, match=r"cut\.jpg"):
        open_any(cut, registry)


def test_malformed_exif_never_crashes(registry, tmp_path):
    """Mutated EXIF blocks (bytes flipped, counts and offsets made huge, cut short): each
    opens as its workflow, or is refused with a WorkflowFileError naming the file."""
    good = tiff([(0x010E, 2, b"workflow:{}\0")], [user_comment(INFOTEXT)], ">")
    rng = random.Random(7)
    path = tmp_path / "m.jpg"
    for case in range(300):
        block = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(block))
            block[at] = rng.choice((0, 0xFF, rng.randrange(256)))
        if case % 5 == 0:
            block = block[: rng.randrange(len(block))]
        path.write_bytes(b"\xff\xd8\xff\xe1" + struct.pack(">H", len(block) + 8) + b"Exif\0\0")
        with open(path, "ab") as f:
            f.write(bytes(block) + b"\xff\xd9")
        try:
            open_any(path, registry)
        except WorkflowFileError as exc:
            assert "m.jpg" in str(exc)
