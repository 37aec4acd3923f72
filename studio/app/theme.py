"""The dark theme: palette, style sheet, canvas colours and category colours."""

from __future__ import annotations

import colorsys
import zlib

from PySide6.QtGui import QColor, QFont, QPalette
from PySide6.QtWidgets import QApplication

ACCENT = "#f0a040"
CANVAS_BG = "#1a1c20"
GRID_MINOR = "#212429"
GRID_MAJOR = "#2a2e35"
NODE_BODY = "#2a2d33"
NODE_BORDER = "#3b4048"
NODE_SELECTED = ACCENT
TEXT = "#e4e6ea"
TEXT_DIM = "#979ea8"
FIELD_BG = "#1e2025"
FIELD_FILL = "#3c5a80"
ERROR = "#ff5c5c"
MUTE_TINT = "#6d727a"
BYPASS_TINT = "#a05cc8"

#: Title bar colours by node category; unknown categories get a colour from their name.
CATEGORY_COLORS: dict[str, str] = {
    "loaders": "#5b4a8a",
    "conditioning": "#8a5a2b",
    "latent": "#8a3f5e",
    "sampling": "#2f6b55",
    "image": "#2d5a8a",
    "mask": "#3f6e3f",
    "controlnet": "#2b6b6e",
    "lora": "#6a4a8a",
    "upscale": "#464f8f",
    "preprocess": "#5e6a2b",
    "utility": "#4a525c",
}
UNKNOWN_TYPE_COLOR = "#7a2e2e"


def category_color(category: str) -> str:
    if category in CATEGORY_COLORS:
        return CATEGORY_COLORS[category]
    hue = (zlib.crc32(category.encode()) % 360) / 360.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.45, 0.45)
    return QColor.fromRgbF(r, g, b).name()


def ui_font(point_size: float = 9.5, *, bold: bool = False) -> QFont:
    f = QFont()
    f.setFamilies(["Inter", "Segoe UI", "SF Pro Text", "Noto Sans", "DejaVu Sans"])
    f.setPointSizeF(point_size)
    f.setBold(bold)
    return f


STYLE_SHEET = f"""
QMainWindow, QDockWidget {{ background: #202227; }}
QDockWidget {{ color: {TEXT}; titlebar-close-icon: none; }}
QDockWidget::title {{
    background: #25282e; padding: 6px 8px; border-bottom: 1px solid #30343b;
    text-align: left;
}}
QWidget {{ color: {TEXT}; selection-background-color: #3d5f8c; }}
QLineEdit, QPlainTextEdit, QSpinBox, QDoubleSpinBox, QComboBox {{
    background: {FIELD_BG}; border: 1px solid #363a42; border-radius: 4px; padding: 3px 5px;
}}
QLineEdit:focus, QPlainTextEdit:focus, QSpinBox:focus, QDoubleSpinBox:focus,
QComboBox:focus {{ border-color: {ACCENT}; }}
QComboBox QAbstractItemView {{ background: #25282e; border: 1px solid #363a42; }}
QTreeWidget, QListWidget {{
    background: #1e2025; border: none; outline: none;
}}
QTreeWidget::item, QListWidget::item {{ padding: 3px 2px; }}
QTreeWidget::item:selected, QListWidget::item:selected {{ background: #34507a; }}
QTreeWidget::item:hover, QListWidget::item:hover {{ background: #2a2e36; }}
QPushButton, QToolButton {{
    background: #30343b; border: 1px solid #3b4048; border-radius: 4px; padding: 3px 8px;
}}
QPushButton:hover, QToolButton:hover {{ background: #3a3f48; }}
QPushButton:pressed, QToolButton:pressed {{ background: #262a30; }}
QMenuBar {{ background: #202227; }}
QMenuBar::item:selected {{ background: #30343b; }}
QMenu {{ background: #25282e; border: 1px solid #3b4048; padding: 4px; }}
QMenu::item {{ padding: 5px 24px 5px 14px; border-radius: 3px; }}
QMenu::item:selected {{ background: #34507a; }}
QMenu::item:disabled {{ color: #6b717a; }}
QMenu::separator {{ height: 1px; background: #3b4048; margin: 4px 6px; }}
QStatusBar {{ background: #1c1e22; color: {TEXT_DIM}; border-top: 1px solid #2b2f36; }}
QScrollBar:vertical {{ background: transparent; width: 10px; }}
QScrollBar::handle:vertical {{ background: #3b4048; border-radius: 4px; min-height: 24px; }}
QScrollBar:horizontal {{ background: transparent; height: 10px; }}
QScrollBar::handle:horizontal {{ background: #3b4048; border-radius: 4px; min-width: 24px; }}
QScrollBar::add-line, QScrollBar::sub-line {{ width: 0; height: 0; }}
QSlider::groove:horizontal {{ height: 4px; background: #363a42; border-radius: 2px; }}
QSlider::handle:horizontal {{
    background: {ACCENT}; width: 12px; margin: -5px 0; border-radius: 6px;
}}
QSlider::sub-page:horizontal {{ background: #5a7aa5; border-radius: 2px; }}
QToolTip {{ background: #2b2f36; color: {TEXT}; border: 1px solid #4a505a; padding: 4px; }}
QLabel#dim {{ color: {TEXT_DIM}; }}
QLabel#heading {{ font-weight: bold; font-size: 11pt; }}
QLabel#problem {{ color: {ERROR}; }}
QFrame#searchPopup {{ background: #25282e; border: 1px solid #4a505a; border-radius: 6px; }}
"""


def apply_theme(app: QApplication) -> None:
    app.setStyle("Fusion")
    pal = QPalette()
    roles = {
        QPalette.ColorRole.Window: "#202227",
        QPalette.ColorRole.WindowText: TEXT,
        QPalette.ColorRole.Base: FIELD_BG,
        QPalette.ColorRole.AlternateBase: "#25282e",
        QPalette.ColorRole.ToolTipBase: "#2b2f36",
        QPalette.ColorRole.ToolTipText: TEXT,
        QPalette.ColorRole.Text: TEXT,
        QPalette.ColorRole.Button: "#30343b",
        QPalette.ColorRole.ButtonText: TEXT,
        QPalette.ColorRole.BrightText: "#ffffff",
        QPalette.ColorRole.Highlight: "#3d5f8c",
        QPalette.ColorRole.HighlightedText: "#ffffff",
        QPalette.ColorRole.Link: ACCENT,
        QPalette.ColorRole.PlaceholderText: "#6b717a",
    }
    for role, color in roles.items():
        pal.setColor(role, QColor(color))
    pal.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text, QColor("#6b717a"))
    pal.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText, QColor("#6b717a"))
    app.setPalette(pal)
    app.setFont(ui_font())
    app.setStyleSheet(STYLE_SHEET)
