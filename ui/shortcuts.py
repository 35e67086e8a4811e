"""Every operator action has a key. One table drives both the QShortcuts and the F1 help dialog."""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QHeaderView, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout

# (key sequence, what it does, action name in MainWindow.actions)
SHORTCUTS: list[tuple[str, str, str]] = [
    ("Space", "E-STOP: hold position now (latched)", "estop"),
    ("Ctrl+Space", "E-STOP, also while typing in a text field", "estop"),
    ("Ctrl+R", "release the e-stop", "reset_estop"),
    ("Return", "start the episode (countdown, then recording)", "start_episode"),
    ("Enter", "start the episode (keypad Enter)", "start_episode"),
    ("Right", "next: end the current phase early (stop / keep / skip reset)", "next_phase"),
    ("Left", "re-record: throw the current/last episode away and record again", "rerecord"),
    ("Esc", "stop: recording, replay or policy, whichever runs", "stop_all"),
    ("S", "success: label (and keep, in review) / judge the policy run", "mark_success"),
    ("F", "failure: label (and keep, in review) / judge the policy run", "mark_failure"),
    ("K", "keep the episode under review", "keep"),
    ("D", "discard the episode under review", "discard"),
    ("H", "go home (slowly, through safety)", "go_home"),
    ("N", "new scene (sim: new object placement, arm home)", "new_scene"),
    ("0", "mode: hold", "mode_hold"),
    ("1", "mode: gamepad", "mode_gamepad"),
    ("2", "mode: kinesthetic (torque off, move the arm by hand)", "mode_kinesthetic"),
    ("3", "mode: scripted expert (sim)", "mode_scripted"),
    ("4", "mode: leader arm (the follower tracks it; start with --leader)", "mode_leader"),
    ("5", "mode: Cartesian gamepad (the pad moves the gripper in x/y/z)", "mode_cartesian"),
    ("P", "start the policy on the robot", "policy_start"),
    (".", "single-step the policy", "policy_step"),
    ("T", "policy: take over / hand back (operator drives through safety)", "policy_takeover"),
    (",", "episodes: previous frame", "frame_prev"),
    ("/", "episodes: next frame", "frame_next"),
    ("Del", "episodes: delete the selected episode (to the trash)", "delete_episode"),
    ("Ctrl+Z", "episodes: undo the last edit (delete, label, instruction, trim)", "undo_edit"),
    ("Ctrl+E", "export the dataset to LeRobot", "export_lerobot"),
    ("Ctrl+L", "connect / reconnect with the panel's settings", "connect_session"),
    ("Ctrl+D", "disconnect", "disconnect_session"),
    ("Ctrl+1", "tab: teleop / record", "tab_teleop"),
    ("Ctrl+2", "tab: episodes", "tab_episodes"),
    ("Ctrl+3", "tab: policy", "tab_policy"),
    ("F1", "this help", "show_help"),
    ("Ctrl+Q", "quit (a recording in progress is kept, unlabelled)", "close"),
]


class HelpDialog(QDialog):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setWindowTitle("teleop: keyboard shortcuts")
        t = QTableWidget(len(SHORTCUTS), 2)
        t.setHorizontalHeaderLabels(["key", "action"])
        t.verticalHeader().hide()
        t.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        for r, (key, text, _m) in enumerate(SHORTCUTS):
            k = QTableWidgetItem(key)
            k.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            t.setItem(r, 0, k)
            t.setItem(r, 1, QTableWidgetItem(text))
        t.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        t.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table = t
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("Keys work anywhere in the window except while typing in a text field "
                             "(click the camera view or press Tab to leave it). The gamepad's buttons do the "
                             "same (see the mapping editor)."))
        lay.addWidget(t)
        bb = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        bb.rejected.connect(self.reject)
        lay.addWidget(bb)
        self.resize(620, 720)
