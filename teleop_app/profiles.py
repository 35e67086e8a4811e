"""Robot profiles: TOML files describing an arm, its bus and its cameras, validated on load."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

BUILTIN_DIR = Path(__file__).parent / "profiles"
BUS_KINDS = ("sim", "dynamixel", "feetech")
CAMERA_KINDS = ("sim", "opencv", "file")


class ProfileError(ValueError):
    """A profile is malformed; the message names the file and the field."""


@dataclass
class JointSpec:
    name: str
    lower: float
    upper: float
    home: float
    max_speed: float          # rad/s (gripper: units/s)
    servo_id: int | None = None


@dataclass
class BusSpec:
    kind: str = "sim"
    port: str = ""
    baud: int = 1_000_000
    model: str = ""           # e.g. "xl430" / "sts3215", informational


@dataclass
class CameraSpec:
    name: str
    kind: str = "sim"
    device: str = ""          # index, /dev/videoN, or file path
    width: int = 224
    height: int = 224
    fps: float = 30.0
    view: str = "front"       # sim only: front / wrist


@dataclass
class RobotProfile:
    name: str
    joints: list[JointSpec]   # arm joints, without the gripper
    gripper: JointSpec
    bus: BusSpec
    cameras: list[CameraSpec]
    description: str = ""
    fps: float = 10.0
    workspace: dict[str, list[float]] = field(default_factory=dict)  # x/y/z bounds (m), optional
    source: str = ""
    kinematics: object | None = None   # teleop_app.kinematics.SerialChain of the arm joints, optional
    leader: dict = field(default_factory=dict)   # leader arms only: follower, handle range, start check

    @property
    def all_joints(self) -> list[JointSpec]:
        return [*self.joints, self.gripper]

    @property
    def joint_names(self) -> list[str]:
        return [j.name for j in self.all_joints]

    @property
    def dof(self) -> int:
        """State/action dimension: arm joints + gripper."""
        return len(self.joints) + 1

    def lower(self):
        import numpy as np
        return np.array([j.lower for j in self.all_joints])

    def upper(self):
        import numpy as np
        return np.array([j.upper for j in self.all_joints])

    def home(self):
        import numpy as np
        return np.array([j.home for j in self.all_joints])

    def max_speed(self):
        import numpy as np
        return np.array([j.max_speed for j in self.all_joints])


def _req(d: dict, key: str, typ, where: str):
    if key not in d:
        raise ProfileError(f"{where}: missing field '{key}'")
    v = d[key]
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, typ) or isinstance(v, bool) and typ is not bool:
        raise ProfileError(f"{where}: field '{key}' must be {typ.__name__}, got {v!r}")
    return v


def _opt(d: dict, key: str, typ, default, where: str):
    return _req(d, key, typ, where) if key in d else default


def _joint(d: dict, where: str) -> JointSpec:
    if not isinstance(d, dict):
        raise ProfileError(f"{where}: must be a table")
    name = _req(d, "name", str, where)
    where = f"{where} '{name}'"
    j = JointSpec(
        name=name,
        lower=_req(d, "lower", float, where),
        upper=_req(d, "upper", float, where),
        home=_req(d, "home", float, where),
        max_speed=_req(d, "max_speed", float, where),
        servo_id=_opt(d, "servo_id", int, None, where),
    )
    if not j.lower < j.upper:
        raise ProfileError(f"{where}: 'lower' ({j.lower}) must be below 'upper' ({j.upper})")
    if not j.lower <= j.home <= j.upper:
        raise ProfileError(f"{where}: 'home' ({j.home}) is outside [{j.lower}, {j.upper}]")
    if j.max_speed <= 0:
        raise ProfileError(f"{where}: 'max_speed' must be > 0")
    if j.servo_id is not None and not 0 <= j.servo_id <= 252:
        raise ProfileError(f"{where}: 'servo_id' {j.servo_id} outside 0..252")
    return j


def parse_profile(data: dict, source: str = "<profile>") -> RobotProfile:
    w = source
    name = _req(data, "name", str, w)
    fps = _opt(data, "fps", float, 10.0, w)
    if not 1 <= fps <= 50:
        raise ProfileError(f"{w}: field 'fps' must be within 1..50 Hz, got {fps}")
    joints_raw = _req(data, "joints", list, w)
    if not joints_raw:
        raise ProfileError(f"{w}: 'joints' is empty")
    joints = [_joint(j, f"{w}: joints[{i}]") for i, j in enumerate(joints_raw)]
    gripper = _joint(_req(data, "gripper", dict, w), f"{w}: gripper")
    names = [j.name for j in joints] + [gripper.name]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ProfileError(f"{w}: duplicate joint names {sorted(dup)}")

    b = _opt(data, "bus", dict, {}, w)
    bus = BusSpec(
        kind=_opt(b, "kind", str, "sim", f"{w}: bus"),
        port=_opt(b, "port", str, "", f"{w}: bus"),
        baud=_opt(b, "baud", int, 1_000_000, f"{w}: bus"),
        model=_opt(b, "model", str, "", f"{w}: bus"),
    )
    if bus.kind not in BUS_KINDS:
        raise ProfileError(f"{w}: bus: field 'kind' must be one of {BUS_KINDS}, got {bus.kind!r}")
    if bus.kind != "sim":
        missing = [j.name for j in joints + [gripper] if j.servo_id is None]
        if missing:
            raise ProfileError(f"{w}: bus kind '{bus.kind}' needs 'servo_id' on joints {missing}")
        ids = [j.servo_id for j in joints + [gripper]]
        if len(set(ids)) != len(ids):
            raise ProfileError(f"{w}: servo_id values must be unique, got {ids}")

    cams = []
    for i, c in enumerate(_opt(data, "cameras", list, [], w)):
        cw = f"{w}: cameras[{i}]"
        if not isinstance(c, dict):
            raise ProfileError(f"{cw}: must be a table")
        cam = CameraSpec(
            name=_req(c, "name", str, cw),
            kind=_opt(c, "kind", str, "sim", cw),
            device=str(c.get("device", "")),
            width=_opt(c, "width", int, 224, cw),
            height=_opt(c, "height", int, 224, cw),
            fps=_opt(c, "fps", float, 30.0, cw),
            view=_opt(c, "view", str, "front", cw),
        )
        if cam.kind not in CAMERA_KINDS:
            raise ProfileError(f"{cw}: field 'kind' must be one of {CAMERA_KINDS}, got {cam.kind!r}")
        if not (16 <= cam.width <= 4096 and 16 <= cam.height <= 4096):
            raise ProfileError(f"{cw}: width/height out of range: {cam.width}x{cam.height}")
        cams.append(cam)
    cnames = [c.name for c in cams]
    if len(set(cnames)) != len(cnames):
        raise ProfileError(f"{w}: duplicate camera names {cnames}")

    ws = _opt(data, "workspace", dict, {}, w)
    for k, v in ws.items():
        if k not in ("x", "y", "z") or not (isinstance(v, list) and len(v) == 2 and v[0] < v[1]):
            raise ProfileError(f"{w}: workspace.{k} must be x/y/z = [low, high]")
    chain = None
    if "kinematics" in data:
        from teleop_app.kinematics import KinematicsError, chain_from_dict
        try:
            chain = chain_from_dict(data["kinematics"], len(joints), f"{w}: kinematics")
        except KinematicsError as e:
            raise ProfileError(str(e)) from None
    leader = _leader(_opt(data, "leader", dict, {}, w), f"{w}: leader")
    known = {"name", "description", "fps", "joints", "gripper", "bus", "cameras", "workspace",
             "kinematics", "leader"}
    extra = set(data) - known
    if extra:
        raise ProfileError(f"{w}: unknown field(s) {sorted(extra)}")
    return RobotProfile(name=name, joints=joints, gripper=gripper, bus=bus, cameras=cams,
                        description=_opt(data, "description", str, "", w), fps=fps,
                        workspace={k: [float(x) for x in v] for k, v in ws.items()}, source=source,
                        kinematics=chain, leader=leader)


def _leader(d: dict, where: str) -> dict:
    """[leader] of a leader-arm profile: which follower it drives, its handle's open/closed
    readings (leader gripper units) and the start check (GELLO refuses beyond 0.8 rad)."""
    if not d:
        return {}
    extra = set(d) - {"follower", "handle_open", "handle_closed", "max_start_distance"}
    if extra:
        raise ProfileError(f"{where}: unknown field(s) {sorted(extra)}; known: follower, handle_open, "
                           "handle_closed, max_start_distance")
    out = {"follower": _req(d, "follower", str, where),
           "handle_open": _req(d, "handle_open", float, where),
           "handle_closed": _req(d, "handle_closed", float, where),
           "max_start_distance": _opt(d, "max_start_distance", float, 0.8, where)}
    if out["handle_open"] == out["handle_closed"]:
        raise ProfileError(f"{where}: 'handle_open' and 'handle_closed' must differ "
                           f"(both {out['handle_open']})")
    if not out["max_start_distance"] > 0:
        raise ProfileError(f"{where}: 'max_start_distance' must be > 0 rad")
    return out


def load_profile(name_or_path: str | Path) -> RobotProfile:
    """Load a built-in profile by name (e.g. 'sim7') or any TOML file by path."""
    p = Path(name_or_path)
    if not p.suffix and not p.exists():
        p = BUILTIN_DIR / f"{name_or_path}.toml"
        if not p.exists():
            raise ProfileError(f"unknown profile '{name_or_path}'; built-in: {', '.join(builtin_profiles())}"
                               " (or give a path to a .toml file)")
    if not p.exists():
        raise ProfileError(f"profile file not found: {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:    # (not UTF-8: found by fuzzing)
        raise ProfileError(f"{p}: not valid TOML: {e}") from None
    return parse_profile(data, str(p))


def builtin_profiles() -> list[str]:
    return sorted(f.stem for f in BUILTIN_DIR.glob("*.toml"))
