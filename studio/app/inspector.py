"""The inspector: the selected node's title, flags and params, each with the right editor."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QScrollArea,
    QSlider,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from studio.app.binding import follow
from studio.app.canvas.scene import GraphScene
from studio.app.controller import Controller
from studio.graph.spec import InputSpec
from studio.graph.types import ValueType
from studio.graph.workflow import Change, ChangeKind

SEED_MAX = 2**32 - 1
SLIDER_STEPS = 1000


class _Gesture(QObject):
    """Renews the undo-merge token each time an editor gains focus or a slider is grabbed."""

    def __init__(self, controller: Controller, parent: QObject):
        super().__init__(parent)
        self.controller = controller
        self.token = controller.new_gesture()

    def renew(self) -> None:
        self.token = self.controller.new_gesture()

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.FocusIn:
            self.renew()
        return False


class ParamEditor(QWidget):
    """One param's editor; ``set_value`` shows a value without sending it back."""

    def __init__(
        self,
        spec: InputSpec,
        value: Any,
        on_change: Callable[[Any, int], None],
        controller: Controller,
    ):
        super().__init__()
        self.spec = spec
        self.on_change = on_change
        self.gesture = _Gesture(controller, self)
        self._updating = False
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        t = spec.type
        self.slider: QSlider | None = None
        self.widget: QWidget
        if t in (ValueType.INT, ValueType.FLOAT):
            spin = QDoubleSpinBox()
            is_int = t is ValueType.INT
            spin.setDecimals(0 if is_int else _decimals(spec.step))
            lo = spec.min if spec.min is not None else (0 if spec.seed else -1e12)
            hi = spec.max if spec.max is not None else (SEED_MAX if spec.seed else 1e12)
            spin.setRange(lo, hi)
            spin.setSingleStep(spec.step or (1 if is_int else 0.01))
            spin.setKeyboardTracking(False)
            spin.valueChanged.connect(self._spin_changed)
            spin.installEventFilter(self.gesture)
            self.widget = spin
            if spec.min is not None and spec.max is not None and 0 < spec.max - spec.min <= 10_000:
                self.slider = QSlider(Qt.Orientation.Horizontal)
                self.slider.setRange(0, SLIDER_STEPS)
                self.slider.sliderPressed.connect(self.gesture.renew)
                self.slider.valueChanged.connect(self._slider_changed)
                lay.addWidget(self.slider, 3)
            lay.addWidget(spin, 2)
            if spec.seed:
                dice = QToolButton()
                dice.setText("⚄")
                dice.setToolTip("A random seed")
                dice.clicked.connect(self.randomize)
                self.dice = dice
                lay.addWidget(dice)
        elif t is ValueType.BOOLEAN:
            box = QCheckBox()
            box.toggled.connect(lambda on: self._send(bool(on)))
            self.widget = box
            lay.addWidget(box)
        elif t is ValueType.CHOICE:
            combo = QComboBox()
            combo.addItems(spec.choice_list(controller.model_files.list))
            combo.currentTextChanged.connect(self._send)
            self.widget = combo
            lay.addWidget(combo)
        elif t is ValueType.STRING and spec.multiline:
            text = QPlainTextEdit()
            text.setMinimumHeight(90)
            text.setTabChangesFocus(True)
            text.textChanged.connect(lambda: self._send(text.toPlainText()))
            text.installEventFilter(self.gesture)
            self.widget = text
            lay.addWidget(text)
        else:
            line = QLineEdit()
            line.textEdited.connect(self._send)
            line.installEventFilter(self.gesture)
            self.widget = line
            lay.addWidget(line)
        if spec.tooltip:
            self.setToolTip(spec.tooltip)
        self.set_value(value)

    def set_value(self, value: Any) -> None:
        self._updating = True
        try:
            w = self.widget
            t = self.spec.type
            if isinstance(w, QDoubleSpinBox):
                v = float(value) if isinstance(value, int | float) else 0.0
                if w.value() != v:
                    w.setValue(v)
                if self.slider is not None:
                    lo, hi = self.spec.min, self.spec.max
                    assert lo is not None and hi is not None
                    self.slider.setValue(round((v - lo) / (hi - lo) * SLIDER_STEPS))
            elif isinstance(w, QCheckBox):
                w.setChecked(bool(value))
            elif isinstance(w, QComboBox):
                if w.findText(str(value)) < 0 and value is not None:
                    w.addItem(str(value))
                w.setCurrentText(str(value))
            elif isinstance(w, QPlainTextEdit):
                if w.toPlainText() != (value or ""):
                    w.setPlainText(value or "")
            elif isinstance(w, QLineEdit) and w.text() != str(value or ""):
                w.setText(str(value or ""))
            del t
        finally:
            self._updating = False

    def _send(self, value: Any) -> None:
        if not self._updating:
            self.on_change(value, self.gesture.token)

    def _spin_changed(self, v: float) -> None:
        value: Any = round(v) if self.spec.type is ValueType.INT else v
        if self.slider is not None and not self._updating:
            self._updating = True
            lo, hi = self.spec.min, self.spec.max
            assert lo is not None and hi is not None
            self.slider.setValue(round((v - lo) / (hi - lo) * SLIDER_STEPS))
            self._updating = False
        self._send(value)

    def _slider_changed(self, pos: int) -> None:
        if self._updating:
            return
        lo, hi = self.spec.min, self.spec.max
        assert lo is not None and hi is not None
        v = lo + (hi - lo) * pos / SLIDER_STEPS
        step = self.spec.step or (1 if self.spec.type is ValueType.INT else 0.01)
        v = round(round(v / step) * step, 6)
        value: Any = round(v) if self.spec.type is ValueType.INT else float(v)
        spin = self.widget
        assert isinstance(spin, QDoubleSpinBox)
        self._updating = True
        spin.setValue(float(value))
        self._updating = False
        self._send(value)

    def randomize(self) -> None:
        self.gesture.renew()
        value = random.randint(0, SEED_MAX)
        self.set_value(value)
        self._send(value)


def _decimals(step: float | None) -> int:
    if not step:
        return 2
    text = f"{step:.6f}".rstrip("0")
    return max(1, min(6, len(text.split(".")[1]) if "." in text else 0))


class Inspector(QScrollArea):
    paint_mask_requested = Signal(str)  # node id

    def __init__(self, controller: Controller, scene: GraphScene, parent: QWidget | None = None):
        super().__init__(parent)
        self.controller = controller
        self.scene_ = scene
        self.node_id: str | None = None
        self.editors: dict[str, ParamEditor] = {}
        self.setWidgetResizable(True)
        self.setFrameShape(QScrollArea.Shape.NoFrame)
        self._unsubscribe = lambda: None
        scene.selectionChanged.connect(self.refresh)
        controller.workflow_replaced.connect(self._resubscribe)
        controller.problems_changed.connect(lambda _p: self._show_problems())
        self._resubscribe()

    def _resubscribe(self) -> None:
        self._unsubscribe()
        self._unsubscribe = follow(self.controller.wf, self, self._on_change)
        self.refresh()

    def _on_change(self, ch: Change) -> None:
        if self.node_id is None:
            return
        if ch.kind is ChangeKind.NODE_REMOVED and ch.node_id == self.node_id:
            self.node_id = None
            self.refresh()
        elif ch.node_id == self.node_id:
            if ch.kind is ChangeKind.PARAM_CHANGED and ch.name in self.editors:
                self.editors[ch.name].set_value(ch.new)
            elif ch.kind is ChangeKind.PARAM_CHANGED and ch.name is not None:
                self.refresh()  # a param without an editor (a painted mask)
            elif ch.kind in (
                ChangeKind.FLAGS_CHANGED,
                ChangeKind.TITLE_CHANGED,
                ChangeKind.LINK_ADDED,
                ChangeKind.LINK_REMOVED,
                ChangeKind.EXTRA_CHANGED,
            ):
                self.refresh()

    def refresh(self) -> None:
        try:
            ids = self.scene_.selected_node_ids()
        except RuntimeError:  # the scene is being torn down
            return
        self.node_id = ids[0] if len(ids) == 1 else None
        self.editors = {}
        self.seed_controls: dict[str, QComboBox] = {}
        page = QWidget()
        outer = QVBoxLayout(page)
        outer.setContentsMargins(10, 10, 10, 10)
        outer.setSpacing(8)
        # The old page may be the sender of the signal that brought us here: delete it later.
        old = self.takeWidget()
        if old is not None:
            old.deleteLater()
        self.setWidget(page)
        if self.node_id is None or not self.controller.wf.has_node(self.node_id):
            msg = QLabel(
                f"{len(ids)} nodes selected" if ids else "Select a node to edit its params."
            )
            msg.setObjectName("dim")
            msg.setWordWrap(True)
            outer.addWidget(msg)
            outer.addStretch(1)
            return
        wf = self.controller.wf
        node = wf.get_node(self.node_id)
        spec = self.controller.registry.get(node.type)
        node_id = self.node_id
        title = QLineEdit(wf.display_title(node))
        title.setObjectName("titleEdit")
        title.editingFinished.connect(
            lambda: (
                self.controller.set_title(
                    node_id,
                    ""
                    if spec is not None and title.text().strip() == spec.title
                    else title.text().strip(),
                )
                if wf.has_node(node_id)
                else None
            )
        )
        outer.addWidget(title)
        info = QLabel(
            (spec.description or spec.type_id) if spec else f"Unknown node type {node.type!r}"
        )
        info.setObjectName("dim")
        info.setWordWrap(True)
        outer.addWidget(info)
        flags = QHBoxLayout()
        mute = QCheckBox("Mute")
        mute.setChecked(node.mute)
        mute.toggled.connect(lambda _on: self.controller.toggle_mute([node_id]))
        bypass = QCheckBox("Bypass")
        bypass.setChecked(node.bypass)
        bypass.toggled.connect(lambda _on: self.controller.toggle_bypass([node_id]))
        flags.addWidget(mute)
        flags.addWidget(bypass)
        flags.addStretch(1)
        outer.addLayout(flags)
        self.problem_label = QLabel()
        self.problem_label.setObjectName("problem")
        self.problem_label.setWordWrap(True)
        outer.addWidget(self.problem_label)
        self._show_problems()
        if spec is not None and spec.params:
            form = QFormLayout()
            form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft)
            form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
            form.setVerticalSpacing(8)
            linked = {lk.input for lk in wf.links_into(node_id)}
            for inp in spec.params:
                value = node.params.get(inp.name, inp.default)
                if inp.file_kind == "mask":
                    form.addRow(
                        QLabel(inp.name.replace("_", " ")), self._mask_row(node_id, inp, value)
                    )
                    continue
                editor = ParamEditor(
                    inp,
                    value,
                    lambda v, g, n=inp.name: self.controller.set_param(node_id, n, v, gesture=g),
                    self.controller,
                )
                if inp.name in linked:
                    editor.setEnabled(False)
                    editor.setToolTip("Set by the link into this input")
                if inp.seed:
                    editor.layout().addWidget(self._seed_control(node_id, inp.name))
                self.editors[inp.name] = editor
                label = QLabel(inp.name.replace("_", " "))
                if inp.tooltip:
                    label.setToolTip(inp.tooltip)
                form.addRow(label, editor)
            outer.addLayout(form)
        outer.addStretch(1)

    def _seed_control(self, node_id: str, name: str) -> QComboBox:
        from studio.graph.seeds import SEED_CONTROLS

        combo = QComboBox()
        combo.addItems(SEED_CONTROLS)
        combo.setCurrentText(self.controller.seed_control(node_id, name))
        combo.setToolTip("What happens to the seed after each run")
        combo.currentTextChanged.connect(
            lambda mode: self.controller.set_seed_control(node_id, name, mode)
        )
        self.seed_controls[name] = combo
        return combo

    def _mask_row(self, node_id: str, inp: InputSpec, value: Any) -> QWidget:
        """A painted mask is edited in the painter, never as its raw text."""
        row = QWidget()
        lay = QHBoxLayout(row)
        lay.setContentsMargins(0, 0, 0, 0)
        paint = QToolButton()
        paint.setText("Paint mask…")
        paint.setToolTip(inp.tooltip)
        paint.clicked.connect(lambda: self.paint_mask_requested.emit(node_id))
        clear = QToolButton()
        clear.setText("Clear")
        clear.setEnabled(bool(value))
        clear.clicked.connect(lambda: self.controller.set_param(node_id, inp.name, ""))
        state = QLabel("painted" if value else "none")
        state.setObjectName("dim")
        lay.addWidget(paint)
        lay.addWidget(clear)
        lay.addWidget(state, 1)
        self.mask_row = row
        return row

    def _show_problems(self) -> None:
        if self.node_id is None:
            return
        try:
            label = self.problem_label
            msgs = [p.message for p in self.controller.problems if p.node_id == self.node_id]
            label.setText("\n".join(f"• {m}" for m in msgs))
            label.setVisible(bool(msgs))
        except RuntimeError:  # the page was replaced
            pass
