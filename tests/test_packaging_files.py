"""The desktop files the bundle ships: the .desktop entry, the MIME type (whose magic must
match how Studio writes workflows), the icons, and the spec files' shared module."""

from __future__ import annotations

import configparser
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
LINUX = ROOT / "packaging" / "linux"
NS = {"m": "http://www.freedesktop.org/standards/shared-mime-info"}


def test_desktop_entry_opens_workflows_and_pngs():
    cp = configparser.ConfigParser(interpolation=None)
    cp.optionxform = str
    cp.read(LINUX / "studio.desktop")
    entry = cp["Desktop Entry"]
    assert entry["Type"] == "Application" and entry["Icon"] == "studio"
    assert entry["Exec"].split()[:2] == ["studio", "open"] and "%f" in entry["Exec"]
    mimes = set(filter(None, entry["MimeType"].split(";")))
    assert mimes == {"application/x-studio-workflow", "image/png"}


def test_mime_magic_matches_a_saved_workflow(tmp_path):
    from stubs import stub_registry

    from studio.graph.fileformat import save_workflow
    from studio.graph.workflow import Workflow

    root = ET.parse(LINUX / "studio-mime.xml").getroot()
    (mt,) = root.findall("m:mime-type", NS)
    assert mt.get("type") == "application/x-studio-workflow"
    assert mt.find("m:sub-class-of", NS).get("type") == "application/json"
    matches = mt.findall("m:magic/m:match", NS)
    path = tmp_path / "mine.json"
    save_workflow(Workflow(stub_registry()), path)
    head = path.read_bytes()
    for sample in (head, (ROOT / "resources" / "workflows" / "txt2img.json").read_bytes()):
        hit = False
        for m in matches:
            lo, hi = (int(x) for x in m.get("offset").split(":"))
            value = m.get("value").encode()
            hit |= sample.find(value, lo, hi + len(value)) >= 0
        assert hit, sample[:80]


def test_icons_render_every_size():
    svg = (ROOT / "packaging" / "icons" / "studio.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for size in (16, 32, 48, 64, 128, 256, 512):
        with Image.open(ROOT / "packaging" / "icons" / "png" / f"studio-{size}.png") as im:
            assert im.size == (size, size) and im.mode == "RGBA"
            assert im.getextrema()[3] == (0, 255)  # transparent corners, opaque middle
    with Image.open(ROOT / "packaging" / "icons" / "studio.ico") as ico:
        assert (256, 256) in ico.info["sizes"]
