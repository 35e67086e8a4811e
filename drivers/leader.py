"""A leader arm: a second, hand-moved servo arm (torque off) read at the loop rate, whose joints
drive the follower's joint for joint (SO-101 / Koch leaders, GELLO-style).

    leader = LeaderArm.open(ServoArmConfig(...), LeaderCalibration.load("koch_leader_cal.json"),
                            gripper_range=(0.0, 1.4))
    q_follower = leader.read()          # follower units: rad per arm joint, gripper in its range

The leader is the real `ServoArm` driver (one sync read per tick). Its own calibration maps its
ticks to follower joint angles (per-joint offset/sign/scale, as drivers.bus.arm.Calibration) and
its handle's reading range [handle_closed, handle_open] onto the follower's gripper range.

`SimLeaderArm` is the simulator: a hand-moved arm model (a test or the GUI moves its joints)
served as servos on its own pseudo-terminal by SimServoBus, so the leader path runs through the
real serial driver end to end.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drivers.bus.arm import Calibration, CalibrationError, ServoArm, ServoArmConfig
from drivers.bus.errors import BusDisconnected, ServoTimeout
from drivers.bus.simbus import IdealServos, SimServoBus
from drivers.interfaces import DeviceError

LEADER_CAL_FORMAT = "teleop-leader-calibration"


@dataclass
class LeaderCalibration:
    """The leader's own calibration: joints (ticks -> follower units) and its handle's range."""
    joints: Calibration
    handle_open: float = 1.0         # handle reading (gripper joint units) when released / open
    handle_closed: float = 0.0       # ... when squeezed / closed

    def __post_init__(self):
        for k in ("handle_open", "handle_closed"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise CalibrationError(f"leader calibration: '{k}' must be a finite number, got {v!r}")
        if self.handle_open == self.handle_closed:
            raise CalibrationError(f"leader calibration: handle_open and handle_closed are both "
                                   f"{self.handle_open}: squeeze and release the handle while calibrating")

    def gripper_fraction(self, handle: float) -> float:
        """Handle reading -> fraction open (0 closed, 1 open), clipped."""
        f = (float(handle) - self.handle_closed) / (self.handle_open - self.handle_closed)
        return float(min(1.0, max(0.0, f)))

    def to_dict(self) -> dict:
        return {"format": LEADER_CAL_FORMAT, "version": 1, "joints": self.joints.to_dict()["joints"],
                "handle": {"open": self.handle_open, "closed": self.handle_closed}}

    @classmethod
    def from_dict(cls, data, where: str = "<leader calibration>") -> "LeaderCalibration":
        if not isinstance(data, dict):
            raise CalibrationError(f"{where}: expected a JSON object with 'joints' and 'handle'")
        fmt = data.get("format", LEADER_CAL_FORMAT)
        if fmt != LEADER_CAL_FORMAT:
            raise CalibrationError(f"{where}: format {fmt!r} is not a leader calibration "
                                   f"({LEADER_CAL_FORMAT!r}); record one with LeaderArm.calibrate")
        handle = data.get("handle")
        if not isinstance(handle, dict) or "open" not in handle or "closed" not in handle:
            raise CalibrationError(f"{where}: expected 'handle': {{'open': x, 'closed': y}} (the handle's "
                                   "reading released and squeezed); re-run the leader calibration")
        try:
            return cls(Calibration.from_dict({"joints": data.get("joints")}, where),
                       handle["open"], handle["closed"])
        except CalibrationError as e:
            msg = str(e)
            raise CalibrationError(msg if msg.startswith(where) else f"{where}: {msg}") from None

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> "LeaderCalibration":
        p = Path(path)
        if not p.exists():
            raise CalibrationError(f"leader calibration file not found: {p} (record one with "
                                   "LeaderArm.calibrate and save it, or fix the path)")
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CalibrationError(f"{p}: not valid JSON: {e}; fix the file or re-run the leader "
                                   "calibration") from None
        return cls.from_dict(data, str(p))


class LeaderArm:
    """A torque-off servo arm whose reading is a follower joint target (arm joints + gripper)."""

    def __init__(self, arm: ServoArm, calibration: LeaderCalibration, gripper_range=(0.0, 1.0)):
        self.arm = arm
        self.calibration = calibration
        arm.calibration = calibration.joints
        arm.calibration._arrays(arm.joint_names)   # names every joint the file lacks
        self.gripper_range = (float(gripper_range[0]), float(gripper_range[1]))
        self.port = arm.config.port

    @classmethod
    def from_config(cls, config: ServoArmConfig, calibration: LeaderCalibration,
                    gripper_range=(0.0, 1.0)) -> "LeaderArm":
        return cls(ServoArm(config), calibration, gripper_range)

    @property
    def joint_names(self) -> list[str]:
        return self.arm.joint_names

    @property
    def is_connected(self) -> bool:
        return self.arm.is_connected

    def connect(self) -> None:
        """Open the port, check every servo answers, and go limp (a leader is moved by hand)."""
        self.arm.connect()
        self.arm.set_torque(False)

    def disconnect(self) -> None:
        if self.arm.is_connected:
            self.arm.disconnect()

    def reconnect(self) -> bool:
        """After an unplug: reopen the port and ping the servos; False while they stay silent."""
        try:
            self.arm.disconnect()
        except DeviceError:
            pass
        try:
            self.connect()
            return True
        except (DeviceError, OSError):
            return False

    def read_raw(self) -> np.ndarray:
        """Calibrated leader joints (handle in its own units). Raises ServoTimeout /
        BusDisconnected when the leader is unplugged."""
        ticks = self.arm.read_ticks()
        return self.arm.calibration.from_ticks(self.arm.joint_names, ticks)

    def read(self) -> np.ndarray:
        """Follower target: arm joints as calibrated, the handle mapped onto the gripper range."""
        q = self.read_raw()
        lo, hi = self.gripper_range
        q[-1] = lo + self.calibration.gripper_fraction(q[-1]) * (hi - lo)
        return q

    def calibrate(self, known_pose, handle_open: float, handle_closed: float, sign=None,
                  scale=None) -> LeaderCalibration:
        """GELLO-style: with the leader held in `known_pose` (follower units, the handle's entry
        ignored), record per-joint offsets; handle_open/closed are the handle readings released
        and squeezed. Returns (and installs) the new calibration; save() it."""
        pose = np.asarray(known_pose, dtype=float).copy()
        pose[-1] = handle_open
        joints = Calibration.record(self.arm, pose, sign=sign, scale=scale)
        self.calibration = LeaderCalibration(joints, float(handle_open), float(handle_closed))
        self.arm.calibration = joints
        return self.calibration


UNPLUGGED = (ServoTimeout, BusDisconnected)     # what a read raises when the leader is gone


class SimLeaderArm:
    """A simulated leader: an n-joint arm model (last joint = the handle, fraction open) that a
    test or the GUI moves by hand, served as servos on its own pty.

        sim = SimLeaderArm(8, q0=follower_home).start()
        leader = sim.leader(joint_names, gripper_range=(0, 1)); leader.connect()
        sim.move(q)                       # the operator's hand
        sim.bus.unplug()                  # pull the leader's cable
    """

    def __init__(self, n: int, q0=None, protocol: str = "dynamixel"):
        self.model = IdealServos(n, q0=q0)          # torque off: stays where it is moved
        self.protocol = protocol
        self.bus = SimServoBus(self.model, protocol=protocol)
        if protocol == "feetech":                   # multi-turn: no factory angle limits
            from drivers.bus import feetech as fts
            for srv in self.bus.servos:
                srv.set(fts.ADDR_MIN_ANGLE_LIMIT, 0)
                srv.set(fts.ADDR_MAX_ANGLE_LIMIT, 0)
        self.port: str | None = None

    def start(self) -> "SimLeaderArm":
        self.port = self.bus.start()
        return self

    def stop(self) -> None:
        self.bus.stop()

    def move(self, q) -> None:
        """Put the leader's joints at q (rad; the handle as fraction open)."""
        self.model.push(np.asarray(q, dtype=float))

    def qpos(self) -> np.ndarray:
        return self.model.qpos()

    def leader(self, joint_names: list[str], gripper_range=(0.0, 1.0), timeout_s: float = 0.1,
               retries: int = 1) -> LeaderArm:
        """The real driver on this pty, with the calibration matching the simulated servos. The
        timeout is longer than a real bus needs: the simulated servos answer from a Python thread
        that shares the GIL with the renderers."""
        if self.port is None:
            raise RuntimeError("SimLeaderArm.start() first")
        cfg = ServoArmConfig(protocol=self.protocol, port=self.port, ids=list(self.bus.ids),
                             joint_names=list(joint_names), timeout_s=timeout_s, retries=retries,
                             read_velocity=False)
        cal = LeaderCalibration(Calibration.for_sim(list(joint_names)), 1.0, 0.0)
        return LeaderArm(ServoArm(cfg), cal, gripper_range)

