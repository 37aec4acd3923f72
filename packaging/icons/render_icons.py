"""Render studio.svg to the PNG sizes, the Windows .ico and the macOS .icns.

    python packaging/icons/render_icons.py

Needs PySide6 (QtSvg) and Pillow, both Studio dependencies. The results are committed,
so a build does not need to run this; run it after editing the SVG.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = (16, 24, 32, 48, 64, 128, 256, 512)


def render(size: int, out: Path) -> None:
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(str(HERE / "studio.svg"))
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    if not image.save(str(out)):
        raise SystemExit(f"could not write {out}")


def main() -> int:
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PIL import Image
    from PySide6.QtGui import QGuiApplication

    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    png = HERE / "png"
    png.mkdir(exist_ok=True)
    for size in SIZES:
        render(size, png / f"studio-{size}.png")
    big = Image.open(png / "studio-512.png")
    big.save(HERE / "studio.ico", sizes=[(s, s) for s in (16, 24, 32, 48, 64, 128, 256)])
    big.save(HERE / "studio.icns")
    print(f"wrote {len(SIZES)} PNGs, studio.ico and studio.icns in {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
