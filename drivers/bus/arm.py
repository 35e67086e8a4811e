"""A servo arm on a Dynamixel or Feetech bus, implementing `drivers.interfaces.Robot`.

One SYNC_READ per observation (position, plus velocity/current in the same contiguous block) and
one SYNC_WRITE per action. Units: joints in rad, the gripper in the profile's units, through a
per-joint calibration  value = scale * sign * (ticks - offset) * 2*pi/4096.
"""
from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from drivers.bus import dynamixel as dxl
from drivers.bus import feetech as fts
from drivers.bus.errors import ServoTimeout
from drivers.bus.transport import DynamixelBus, FeetechBus, make_bus
from drivers.interfaces import DeviceError, DeviceNotConnected, JointState

TICKS_PER_RAD = 4096 / (2 * math.pi)
CAL_FORMAT = "teleop-servo-calibration"


class CalibrationError(DeviceError):
    """A calibration file is missing, malformed or does not match the arm."""


@dataclass
class JointCalibration:
    offset: float = 2048.0     # ticks at value 0
    sign: int = 1              # +1 / -1: servo direction vs joint direction
    scale: float = 1.0         # profile units per radian of horn rotation


@dataclass
class Calibration:
    """Per-joint tick <-> unit mapping, keyed by joint name (order = arm order)."""
    joints: dict[str, JointCalibration] = field(default_factory=dict)

    # -- construction
    @classmethod
    def default(cls, names: list[str], gripper_scale: float | None = None) -> "Calibration":
        """Centre tick 2048 = 0, sign +1, scale 1; optionally a different scale for the last joint."""
        cal = cls({n: JointCalibration() for n in names})
        if gripper_scale is not None and names:
            cal.joints[names[-1]].scale = float(gripper_scale)
        return cal

    @classmethod
    def for_sim(cls, names: list[str]) -> "Calibration":
        """Matches SimServoBus's fixed mapping: gripper fraction f <-> horn angle f*pi/2."""
        return cls.default(names, gripper_scale=2 / math.pi)

    @classmethod
    def record(cls, arm: "ServoArm", known_pose, sign=None, scale=None) -> "Calibration":
        """GELLO-style: with the arm held in `known_pose` (profile units), compute each joint's
        offset so that the current ticks read as that pose. Signs/scales default to the arm's."""
        names = arm.joint_names
        pose = np.asarray(known_pose, dtype=float).reshape(-1)
        if pose.shape != (len(names),) or not np.all(np.isfinite(pose)):
            raise ValueError(f"known pose must be {len(names)} finite numbers ({names}), got {known_pose!r}")
        base = arm.calibration
        signs = list(sign) if sign is not None else [base.joints[n].sign for n in names]
        scales = list(scale) if scale is not None else [base.joints[n].scale for n in names]
        ticks = arm.read_ticks()
        joints = {}
        for k, n in enumerate(names):
            off = float(ticks[k]) - signs[k] * pose[k] / scales[k] * TICKS_PER_RAD
            joints[n] = JointCalibration(round(off, 3), int(signs[k]), float(scales[k]))
        return cls(joints)

    # -- conversion
    def _arrays(self, names: list[str]):
        missing = [n for n in names if n not in self.joints]
        if missing:
            raise CalibrationError(f"calibration has no entry for joints {missing}: re-run calibration")
        j = [self.joints[n] for n in names]
        return (np.array([x.offset for x in j]), np.array([x.sign for x in j], dtype=float),
                np.array([x.scale for x in j]))

    def to_ticks(self, names: list[str], values) -> np.ndarray:
        off, sign, scale = self._arrays(names)
        return off + sign * np.asarray(values, dtype=float) / scale * TICKS_PER_RAD

    def from_ticks(self, names: list[str], ticks) -> np.ndarray:
        off, sign, scale = self._arrays(names)
        return scale * sign * (np.asarray(ticks, dtype=float) - off) / TICKS_PER_RAD

    def rate_from_rad_s(self, names: list[str], rad_s) -> np.ndarray:
        _, sign, scale = self._arrays(names)
        return scale * sign * np.asarray(rad_s, dtype=float)

    # -- files (JSON or TOML, chosen by suffix)
    def to_dict(self) -> dict:
        return {"format": CAL_FORMAT, "version": 1,
                "joints": {n: {"offset": j.offset, "sign": j.sign, "scale": j.scale}
                           for n, j in self.joints.items()}}

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        if p.suffix == ".toml":
            import tomli_w
            text = tomli_w.dumps(self.to_dict())
        else:
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(p)                 # atomic: a crash never leaves half a calibration
        return p

    @classmethod
    def from_dict(cls, data, where: str = "<calibration>") -> "Calibration":
        hint = "fix the file or re-run calibration"
        if not isinstance(data, dict) or not isinstance(data.get("joints"), dict) or not data["joints"]:
            raise CalibrationError(f"{where}: expected a table 'joints' with one entry per joint; {hint}")
        joints = {}
        for name, d in data["joints"].items():
            w = f"{where}: joint '{name}'"
            if not isinstance(d, dict):
                raise CalibrationError(f"{w} must be a table with offset/sign/scale; {hint}")
            off, sign, scale = d.get("offset"), d.get("sign", 1), d.get("scale", 1.0)
            if isinstance(off, bool) or not isinstance(off, (int, float)) or not math.isfinite(off):
                raise CalibrationError(f"{w}: 'offset' must be a finite number of ticks, got {off!r}; {hint}")
            if sign not in (1, -1) or isinstance(sign, bool):
                raise CalibrationError(f"{w}: 'sign' must be 1 or -1, got {sign!r}; {hint}")
            if (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale)
                    or scale == 0):
                raise CalibrationError(f"{w}: 'scale' must be a finite non-zero number, got {scale!r}; {hint}")
            joints[str(name)] = JointCalibration(float(off), int(sign), float(scale))
        return cls(joints)

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        p = Path(path)
        if not p.exists():
            raise CalibrationError(f"calibration file not found: {p} (record one with Calibration.record "
                                   "and save it, or fix the path)")
        try:
            text = p.read_text()
            data = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise CalibrationError(f"{p}: not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: {e}; "
                                   "fix the file or re-run calibration") from None
        return cls.from_dict(data, str(p))


@dataclass
class ServoArmConfig:
    protocol: str                       # "dynamixel" | "feetech"
    port: str
    ids: list[int]
    joint_names: list[str]
    baud: int = 1_000_000
    calibration: str | Path | Calibration | None = None   # None: centre 2048, sign +1, scale 1
    retries: int = 3                    # tries per transaction before ServoTimeout
    timeout_s: float = 0.05             # per-packet reply timeout (a reply takes < 2 ms; slack for stalls)
    min_timeout_s: float = 0.005        # set_period never goes below (a simulated bus answers slower)
    read_velocity: bool = True          # same sync read, a few more bytes per servo
    torque_off_on_disconnect: bool = False

    def __post_init__(self):
        if self.protocol not in ("dynamixel", "feetech"):
            raise ValueError(f"protocol must be 'dynamixel' or 'feetech', got {self.protocol!r}")
        if len(self.ids) != len(self.joint_names):
            raise ValueError(f"{len(self.ids)} servo ids but {len(self.joint_names)} joint names")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"servo ids must be unique, got {self.ids}")

    @classmethod
    def from_profile(cls, profile, port: str | None = None, protocol: str | None = None,
                     **kw) -> "ServoArmConfig":
        """From a teleop_app RobotProfile (duck-typed: joints, gripper, bus)."""
        joints = profile.all_joints
        proto = protocol or profile.bus.kind
        return cls(protocol=proto, port=port or profile.bus.port, baud=profile.bus.baud,
                   ids=[j.servo_id for j in joints], joint_names=[j.name for j in joints], **kw)


class ServoArm:
    """`Robot` over a servo bus: one sync read per observation, one sync write per action."""

    def __init__(self, config: ServoArmConfig, bus: DynamixelBus | FeetechBus | None = None):
        self.config = config
        self.joint_names = list(config.joint_names)
        self.ids = list(config.ids)
        self.bus = bus or make_bus(config.protocol, config.port, config.baud, config.timeout_s,
                                   config.retries)
        cal = config.calibration
        if cal is None:
            cal = Calibration.default(self.joint_names)
        elif not isinstance(cal, Calibration):
            cal = Calibration.load(cal)
        cal._arrays(self.joint_names)        # fail early if joints are missing
        self.calibration = cal
        self._dx = config.protocol == "dynamixel"
        self._connected = False
        self._torque = False
        self._lo = np.full(len(self.ids), 0.0)
        self._hi = np.full(len(self.ids), 4095.0)

    @classmethod
    def from_profile(cls, profile, port: str | None = None, protocol: str | None = None,
                     calibration: str | Path | Calibration | None = None, **kw) -> "ServoArm":
        """Build from a RobotProfile; `protocol` is needed for kind 'sim' profiles served by
        SimServoBus (then calibration defaults to Calibration.for_sim)."""
        proto = protocol or profile.bus.kind
        if calibration is None and profile.bus.kind == "sim":
            calibration = Calibration.for_sim(profile.joint_names)
        return cls(ServoArmConfig.from_profile(profile, port=port, protocol=proto,
                                               calibration=calibration, **kw))

    def set_period(self, period: float, share: float = 0.5) -> tuple[float, int]:
        """Bound every bus transaction by the control loop's tick: a servo that stops answering costs at
        most `share` of one period (then the loop holds the arm and says it), instead of the configured
        timeout x retries (0.05 s x 3) stalling the loop for several ticks. Per-packet timeout =
        period/4 within [min_timeout_s, timeout_s]; tries = as many as fit in the share, within [1, retries].
        A healthy reply takes < 2 ms at 1 Mbaud. Returns (timeout, tries)."""
        cfg = self.config
        timeout = min(cfg.timeout_s, max(cfg.min_timeout_s, period / 4))
        tries = max(1, min(cfg.retries, int(share * period / timeout + 1e-9)))
        if hasattr(self.bus, "set_budget"):
            self.bus.set_budget(timeout, tries)
        return timeout, tries

    # -- Robot
    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def torque_enabled(self) -> bool:
        return self._torque

    def connect(self) -> None:
        """Open the port, ping every servo (naming the missing ones), read tick limits and torque."""
        self.bus.open()
        missing = []
        for sid, name in zip(self.ids, self.joint_names):
            try:
                self.bus.ping(sid)
            except ServoTimeout:
                missing.append(f"{sid} ({name})")
        if missing:
            self.bus.close()
            found = len(self.ids) - len(missing)
            raise DeviceError(
                f"servo{'s' if len(missing) > 1 else ''} {', '.join(missing)} did not answer on "
                f"{self.bus.port} ({found}/{len(self.ids)} found): check power, the daisy-chain cable "
                f"to {'them' if len(missing) > 1 else 'it'}, and that id and baud ({self.config.baud}) "
                "match the profile")
        self._read_limits()
        if self._dx:
            t = self.bus.sync_read(dxl.ADDR_TORQUE_ENABLE, 1, self.ids)
        else:
            t = self.bus.sync_read(fts.ADDR_TORQUE_ENABLE, 1, self.ids)
        self._torque = all(v[0] for v in t.values())
        self._connected = True

    def _read_limits(self) -> None:
        """Tick range per servo from its mode and limits; refuse modes where goals do nothing."""
        addr = dxl.ADDR_OPERATING_MODE if self._dx else fts.ADDR_OPERATING_MODE
        modes = self.bus.sync_read(addr, 1, self.ids)
        ok = (3, 4, 5) if self._dx else (0,)
        bad = [f"{sid} ({name}): mode {modes[sid][0]}" for sid, name in zip(self.ids, self.joint_names)
               if modes[sid][0] not in ok]
        if bad:
            self.bus.close()
            want = ("3 (position) or 4 (extended position)" if self._dx else "0 (position)")
            raise DeviceError(f"servos not in a position mode on {self.bus.port}: {'; '.join(bad)}. "
                              f"Set operating mode {want} with torque off (address {addr}), e.g. "
                              f"arm.bus.write(id, {addr}, bytes([{ok[0]}])) or the vendor tool")
        if self._dx:
            lims = self.bus.sync_read(dxl.ADDR_MAX_POSITION_LIMIT, 8, self.ids)
            for k, sid in enumerate(self.ids):
                if modes[sid][0] == 3:
                    self._hi[k] = dxl.decode(lims[sid][0:4])
                    self._lo[k] = dxl.decode(lims[sid][4:8])
                else:                     # extended / current-based position: multi-turn range
                    self._lo[k], self._hi[k] = -1048575, 1048575
        else:
            lims = self.bus.sync_read(fts.ADDR_MIN_ANGLE_LIMIT, 4, self.ids)
            for k, sid in enumerate(self.ids):
                lo, hi = fts.decode(lims[sid][0:2], False), fts.decode(lims[sid][2:4], False)
                if lo == hi == 0:          # multi-turn: anything the sign-magnitude word holds
                    lo, hi = -32767, 32767
                self._lo[k], self._hi[k] = lo, hi

    def disconnect(self) -> None:
        if self._connected and self.config.torque_off_on_disconnect:
            try:
                self.set_torque(False)
            except DeviceError:
                pass
        self.bus.close()
        self._connected = False

    def _need(self) -> None:
        if not self._connected:
            raise DeviceNotConnected(f"servo arm on {self.config.port} is not connected: call connect()")

    def read_ticks(self) -> np.ndarray:
        """Raw present positions (ticks) in joint order, one sync read."""
        self._need()
        if self._dx:
            d = self.bus.sync_read(dxl.ADDR_PRESENT_POSITION, 4, self.ids)
            return np.array([dxl.decode(d[i]) for i in self.ids], dtype=float)
        d = self.bus.sync_read(fts.ADDR_PRESENT_POSITION, 2, self.ids)
        return np.array([fts.decode(d[i]) for i in self.ids], dtype=float)

    def get_observation(self) -> JointState:
        self._need()
        names = self.joint_names
        vel = cur = None
        if not self.config.read_velocity:
            ticks = self.read_ticks()
            ts = self.bus.last_request_time
        elif self._dx:   # 126 current(2) | 128 velocity(4) | 132 position(4): one contiguous block
            # (126 is current on XM/XL330 in 2.69 mA units; on XL430 it is load in 0.1 %)
            d = self.bus.sync_read(dxl.ADDR_PRESENT_CURRENT, 10, self.ids)
            ts = self.bus.last_request_time     # servos latch present values on receiving it
            ticks = np.array([dxl.decode(d[i][6:10]) for i in self.ids], dtype=float)
            rv = np.array([dxl.decode(d[i][2:6]) for i in self.ids], dtype=float)
            vel = self.calibration.rate_from_rad_s(names, rv * dxl.VELOCITY_UNIT_RAD_S)
            cur = np.array([dxl.decode(d[i][0:2]) for i in self.ids], dtype=float) * dxl.CURRENT_UNIT_A
        else:            # 56 position(2) | 58 speed(2)
            d = self.bus.sync_read(fts.ADDR_PRESENT_POSITION, 4, self.ids)
            ts = self.bus.last_request_time
            ticks = np.array([fts.decode(d[i][0:2]) for i in self.ids], dtype=float)
            rv = np.array([fts.decode(d[i][2:4]) for i in self.ids], dtype=float)
            vel = self.calibration.rate_from_rad_s(names, rv * fts.SPEED_UNIT_RAD_S)
        return JointState(self.calibration.from_ticks(names, ticks), ts, vel, cur)

    def send_action(self, target) -> np.ndarray:
        """Write all goals in one sync write; returns what was written (after clamping to the
        servos' tick limits and rounding to whole ticks), in profile units."""
        self._need()
        q = np.asarray(target, dtype=float).reshape(-1)
        if q.shape != (len(self.ids),) or not np.all(np.isfinite(q)):
            raise ValueError(f"target must be {len(self.ids)} finite numbers ({self.joint_names}), "
                             f"got {target!r}")
        ticks = np.clip(np.rint(self.calibration.to_ticks(self.joint_names, q)), self._lo, self._hi)
        if self._dx:
            self.bus.sync_write(dxl.ADDR_GOAL_POSITION, 4,
                                {sid: dxl.encode(int(t), 4) for sid, t in zip(self.ids, ticks)})
        else:
            self.bus.sync_write(fts.ADDR_GOAL_POSITION, 2,
                                {sid: fts.encode(int(t), 2) for sid, t in zip(self.ids, ticks)})
        return self.calibration.from_ticks(self.joint_names, ticks)

    def set_torque(self, enabled: bool) -> None:
        """Torque off makes the arm back-drivable (kinesthetic teaching); readings keep working."""
        self._need()
        addr = dxl.ADDR_TORQUE_ENABLE if self._dx else fts.ADDR_TORQUE_ENABLE
        self.bus.sync_write(addr, 1, {sid: bytes((1 if enabled else 0,)) for sid in self.ids})
        self._torque = bool(enabled)
