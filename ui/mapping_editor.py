"""Mapping editor: the gamepad bindings as two tables (axes per group; buttons and d-pad), load/save TOML,
and apply to the running session (validated first; errors name the bad row)."""
from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QHBoxLayout, QHeaderView,
                               QLabel, QPushButton, QSplitter, QTableWidget, QVBoxLayout, QWidget)

AXIS_COLS = ["group", "axis", "joint", "scale", "invert", "deadzone", "trigger"]
BUTTON_COLS = ["input", "index / dir", "action", "joint", "value"]
HAT_DIRS = ["up", "down", "left", "right"]
# Xbox layout under SDL on Linux (drivers.virtual_gamepad / teleop_app.mapping use the same order)
AXIS_NAMES = ["LX", "LY", "LT", "RX", "RY", "RT"]
BUTTON_NAMES = ["A", "B", "X", "Y", "LB", "RB", "Back", "Start", "Guide", "LStick", "RStick"]


def _index_combo(names: list[str], n: int, value: int) -> QComboBox:
    c = QComboBox()
    for i in range(n):
        c.addItem(f"{i}: {names[i]}" if i < len(names) else str(i), i)
    c.setCurrentIndex(max(0, c.findData(value)))
    return c


def _mapping_module():
    import teleop_app.mapping as m
    return m


class MappingEditor(QWidget):
    applied = Signal(object)        # the Mapping now in use
    message = Signal(str)

    def __init__(self, joint_names: list[str], parent=None):
        super().__init__(parent)
        self.joint_names = list(joint_names)
        self.session = None
        self.name = "mapping"
        m = _mapping_module()
        self.actions = list(m.ACTIONS)

        top = QHBoxLayout()
        self.load_btn = QPushButton("Load TOML...")
        self.save_btn = QPushButton("Save TOML...")
        self.default_btn = QPushButton("Default")
        self.apply_btn = QPushButton("Apply to session")
        self.apply_btn.setStyleSheet("font-weight: bold")
        self.speed = QDoubleSpinBox()
        self.speed.setRange(0.05, 1.0)
        self.speed.setSingleStep(0.05)
        self.speed.setPrefix("speed ")
        self.speed.setToolTip("fraction of each joint's max speed at full stick deflection")
        for w in (self.load_btn, self.save_btn, self.default_btn, self.speed, self.apply_btn):
            top.addWidget(w)
        top.addStretch(1)

        self.axes = QTableWidget(0, len(AXIS_COLS))
        self.axes.setHorizontalHeaderLabels(AXIS_COLS)
        self.buttons = QTableWidget(0, len(BUTTON_COLS))
        self.buttons.setHorizontalHeaderLabels(BUTTON_COLS)
        for t in (self.axes, self.buttons):
            t.verticalHeader().setDefaultSectionSize(26)
            t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
            t.horizontalHeader().setStretchLastSection(True)
            t.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        row_btns = QHBoxLayout()
        self.add_axis = QPushButton("+ axis")
        self.add_button = QPushButton("+ button")
        self.add_hat = QPushButton("+ d-pad")
        self.remove = QPushButton("Remove selected")
        for w in (self.add_axis, self.add_button, self.add_hat, self.remove):
            row_btns.addWidget(w)
        row_btns.addStretch(1)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        split = QSplitter(Qt.Orientation.Horizontal)
        for title, table in (("Axes (velocity of a joint, per group; LB/RB switch groups)", self.axes),
                             ("Buttons and d-pad (edge-triggered actions)", self.buttons)):
            box = QWidget()
            v = QVBoxLayout(box)
            v.setContentsMargins(0, 0, 0, 0)
            v.addWidget(QLabel(title))
            v.addWidget(table)
            split.addWidget(box)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(split, 1)
        lay.addLayout(row_btns)
        lay.addWidget(self.status)

        self.load_btn.clicked.connect(self.load_dialog)
        self.save_btn.clicked.connect(self.save_dialog)
        self.default_btn.clicked.connect(lambda: self.set_mapping(m.default_mapping(len(self.joint_names))))
        self.apply_btn.clicked.connect(self.apply)
        self.add_axis.clicked.connect(lambda: self._add_axis_row(m.AxisBinding(axis=0, joint=0), self._group_names()[0]
                                                                 if self._group_names() else "main"))
        self.add_button.clicked.connect(lambda: self._add_button_row("button", m.ButtonBinding(0, "success")))
        self.add_hat.clicked.connect(lambda: self._add_button_row("d-pad", m.HatBinding(0, "up", "home")))
        self.remove.clicked.connect(self._remove_selected)

    # ------------------------------------------------------------------ rows
    def _group_names(self) -> list[str]:
        names = []
        for r in range(self.axes.rowCount()):
            w = self.axes.cellWidget(r, 0)
            g = w.currentText() if w is not None else None
            if g and g not in names:
                names.append(g)
        return names

    def _joint_combo(self, joint: int | None, allow_none: bool = False) -> QComboBox:
        c = QComboBox()
        if allow_none:
            c.addItem("-", None)
        for i, n in enumerate(self.joint_names):
            c.addItem(f"{i}: {n}", i)
        idx = c.findData(joint)
        c.setCurrentIndex(max(0, idx))
        return c

    def _add_axis_row(self, a, group: str) -> None:
        t = self.axes
        names = self._group_names()
        if group not in names:
            names.append(group)
        r = t.rowCount()
        t.insertRow(r)
        g = QComboBox()
        g.setEditable(True)
        for name in names:
            g.addItem(name)
        g.setCurrentText(group)
        t.setCellWidget(r, 0, g)
        t.setCellWidget(r, 1, _index_combo(AXIS_NAMES, 16, a.axis))
        t.setCellWidget(r, 2, self._joint_combo(a.joint))
        sc = QDoubleSpinBox()
        sc.setRange(-5, 5)
        sc.setSingleStep(0.1)
        sc.setValue(a.scale)
        t.setCellWidget(r, 3, sc)
        inv = QCheckBox()
        inv.setChecked(a.invert)
        t.setCellWidget(r, 4, inv)
        dz = QDoubleSpinBox()
        dz.setRange(0, 0.95)
        dz.setSingleStep(0.05)
        dz.setValue(a.deadzone)
        t.setCellWidget(r, 5, dz)
        tr = QCheckBox()
        tr.setChecked(a.trigger)
        t.setCellWidget(r, 6, tr)

    def _add_button_row(self, kind: str, b) -> None:
        t = self.buttons
        r = t.rowCount()
        t.insertRow(r)
        k = QComboBox()
        k.addItems(["button", "d-pad"])
        k.setCurrentText(kind)
        t.setCellWidget(r, 0, k)
        def fill(combo: QComboBox, kind: str) -> None:
            combo.clear()
            if kind == "button":
                for i in range(32):
                    combo.addItem(f"{i}: {BUTTON_NAMES[i]}" if i < len(BUTTON_NAMES) else str(i), i)
            else:
                for h in range(2):
                    for d in HAT_DIRS:
                        combo.addItem(f"d-pad {h} {d}" if h else f"d-pad {d}", f"{h}:{d}")
        idx = QComboBox()
        fill(idx, kind)
        idx.setCurrentIndex(max(0, idx.findData(b.button if kind == "button" else f"{b.hat}:{b.direction}")))
        t.setCellWidget(r, 1, idx)

        def kind_changed(text, r_idx=idx):
            fill(r_idx, text)
        k.currentTextChanged.connect(kind_changed)
        act = QComboBox()
        act.addItems(self.actions)
        act.setCurrentText(b.action)
        t.setCellWidget(r, 2, act)
        t.setCellWidget(r, 3, self._joint_combo(b.joint, allow_none=True))
        val = QDoubleSpinBox()
        val.setRange(0, 5)
        val.setSingleStep(0.1)
        val.setValue(b.value)
        t.setCellWidget(r, 4, val)

    def _remove_selected(self) -> None:
        for t in (self.axes, self.buttons):
            for r in sorted({i.row() for i in t.selectionModel().selectedRows()}, reverse=True):
                t.removeRow(r)

    # ------------------------------------------------------------------ model <-> table
    def set_mapping(self, mapping) -> None:
        self.name = mapping.name
        self.axes.setRowCount(0)
        self.buttons.setRowCount(0)
        self.speed.setValue(mapping.speed_scale)
        for g in mapping.groups:
            for a in g.axes:
                self._add_axis_row(a, g.name)
        for b in mapping.buttons:
            self._add_button_row("button", b)
        for h in mapping.hats:
            self._add_button_row("d-pad", h)
        self.status.setText(f"mapping '{mapping.name}': {len(mapping.groups)} group(s), "
                            f"{self.axes.rowCount()} axis and {self.buttons.rowCount()} button/d-pad bindings")

    def mapping(self):
        """The table as a Mapping (validated against the joint count)."""
        m = _mapping_module()
        groups: dict[str, list] = {}
        for r in range(self.axes.rowCount()):
            w = [self.axes.cellWidget(r, c) for c in range(len(AXIS_COLS))]
            groups.setdefault(w[0].currentText().strip() or "main", []).append(m.AxisBinding(
                axis=int(w[1].currentData()), joint=w[2].currentData(), scale=w[3].value(), invert=w[4].isChecked(),
                deadzone=w[5].value(), trigger=w[6].isChecked()))
        buttons, hats = [], []
        for r in range(self.buttons.rowCount()):
            w = [self.buttons.cellWidget(r, c) for c in range(len(BUTTON_COLS))]
            action, joint, value = w[2].currentText(), w[3].currentData(), w[4].value()
            if w[0].currentText() == "button":
                buttons.append(m.ButtonBinding(int(w[1].currentData()), action, joint, value))
            else:
                hat, d = str(w[1].currentData()).split(":")
                hats.append(m.HatBinding(int(hat), d, action, joint, value))
        mp = m.Mapping(name=self.name, groups=[m.Group(n, a) for n, a in groups.items()], buttons=buttons,
                       hats=hats, speed_scale=self.speed.value())
        mp.validate(len(self.joint_names))
        return mp

    # ------------------------------------------------------------------ actions
    def _error(self, text: str) -> None:
        self.status.setText(f"<span style='color:#e74c3c'>{text}</span>")
        self.message.emit(text)

    def apply(self) -> bool:
        try:
            mp = self.mapping()
        except Exception as e:
            self._error(f"mapping not applied: {e}")
            return False
        if self.session is None:
            self._error("connect first: the mapping is applied to the running session")
            return False
        try:
            self.session.set_mapping(_mapping_module().mapping_to_dict(mp))   # plain data: crosses processes
        except Exception as e:
            self._error(f"mapping not applied: {e}")
            return False
        self.status.setText(f"applied mapping '{mp.name}' ({len(mp.groups)} groups)")
        self.applied.emit(mp)
        return True

    def load(self, path: str) -> bool:
        m = _mapping_module()
        try:
            mp = m.load_mapping(path)
            mp.validate(len(self.joint_names))
        except Exception as e:
            self._error(f"cannot load {path}: {e}")
            return False
        self.set_mapping(mp)
        self.status.setText(f"loaded {path}; press Apply to use it")
        return True

    def save(self, path: str) -> bool:
        m = _mapping_module()
        try:
            m.save_mapping(self.mapping(), path)
        except Exception as e:
            self._error(f"cannot save {path}: {e}")
            return False
        self.status.setText(f"saved {path}")
        return True

    def load_dialog(self) -> None:
        d = str(getattr(_mapping_module(), "MAPPINGS_DIR", ""))
        path, _ = QFileDialog.getOpenFileName(self, "Load mapping", d, "Mapping (*.toml)")
        if path:
            self.load(path)

    def save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save mapping", f"{self.name}.toml", "Mapping (*.toml)")
        if path:
            self.save(path)
