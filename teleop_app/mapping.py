"""Editable gamepad -> robot mapping (TOML), and turning pad states into teleop commands.

A `Mapping` has joint *groups* (the pad has fewer stick axes than the arm has joints:
LB/RB switch which joints the sticks drive), plus global button and d-pad (hat) bindings.
Axes drive joint *velocities* (fraction of each joint's max_speed); buttons and hats fire
edge-triggered actions once per press.

Gripper targets are a fraction open: 1.0 = fully open, 0.0 = closed; the control loop maps
that to the profile's gripper range. Axis bindings on the gripper joint drive its velocity.

    mapping = load_mapping("teleop_app/mappings/xbox_sim7.toml"); mapping.validate(dof=8)
    ms = MappingState(mapping)
    cmd = ms.update(gamepad.read(), max_speed, gripper_index=7)   # -> TeleopCommand
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drivers.interfaces import GamepadState

ACTIONS = ("gripper_open", "gripper_close", "gripper_toggle", "joint_plus", "joint_minus",
           "start_episode", "stop_episode", "rerecord", "success", "failure", "estop",
           "next_group", "prev_group", "home", "toggle_cartesian", "takeover", "toggle_frame")
# Actions applied inside the mapping (not reported as events): group switching, gripper
# targets and held joint jogs. All the others are reported in TeleopCommand.events.
_INTERNAL = {"gripper_open", "gripper_close", "gripper_toggle", "joint_plus", "joint_minus",
             "next_group", "prev_group"}
_JOINT_ACTIONS = {"joint_plus", "joint_minus"}
HAT_DIRECTIONS = {"up": (1, 1), "down": (1, -1), "left": (0, -1), "right": (0, 1)}  # (component, sign)
# Cartesian mode: each bound axis drives one component of the end-effector twist.
CARTESIAN_DIRECTIONS = ("x", "y", "z", "roll", "pitch", "yaw")


class MappingError(ValueError):
    """A mapping file or object is wrong; the message names the field and what to do."""


@dataclass
class AxisBinding:
    axis: int
    joint: int
    scale: float = 1.0          # multiplies joint max_speed * mapping.speed_scale
    invert: bool = False
    deadzone: float = 0.1       # extra per-axis deadzone (rescaled), on top of the driver's
    trigger: bool = False       # analog trigger resting at -1: used as 0..1


@dataclass
class ButtonBinding:
    button: int
    action: str
    joint: int | None = None    # for joint_plus / joint_minus
    value: float = 0.0          # joint_plus/minus: speed fraction (0 = 1.0); gripper_close: close fraction


@dataclass
class HatBinding:
    hat: int
    direction: str              # up / down / left / right
    action: str
    joint: int | None = None
    value: float = 0.0


@dataclass
class CartesianAxis:
    """Cartesian mode: a pad axis -> one twist component (x/y/z in m/s, roll/pitch/yaw in rad/s,
    at full deflection `scale` x the mapping's linear/angular speed x speed_scale)."""
    axis: int
    direction: str
    scale: float = 1.0
    invert: bool = False
    deadzone: float = 0.1
    trigger: bool = False


@dataclass
class Group:
    name: str
    axes: list[AxisBinding] = field(default_factory=list)


@dataclass
class Mapping:
    name: str
    groups: list[Group]
    buttons: list[ButtonBinding] = field(default_factory=list)
    hats: list[HatBinding] = field(default_factory=list)
    speed_scale: float = 1.0    # fraction of each joint's max_speed at full deflection
    cartesian: list[CartesianAxis] = field(default_factory=list)   # Cartesian mode's axes
    linear_speed: float = 0.15  # m/s of the end effector at full deflection (x speed_scale)
    angular_speed: float = 0.8  # rad/s

    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]

    def validate(self, dof: int) -> None:
        """Raise MappingError naming the bad field if this mapping cannot drive `dof` joints
        (dof counts the gripper)."""
        _validate(self, dof)


@dataclass
class TeleopCommand:
    joint_velocity: np.ndarray          # (dof,) rad/s (gripper: units/s)
    gripper: float | None = None        # target fraction open, None = unchanged
    events: list[str] = field(default_factory=list)   # edge-triggered actions this read
    group: str = ""


# --------------------------------------------------------------------------- validation
def _validate(m: Mapping, dof: int | None) -> None:
    def bad(where: str, msg: str) -> MappingError:
        return MappingError(f"mapping '{m.name}': {where}: {msg}")

    if not isinstance(m.speed_scale, (int, float)) or not 0 < m.speed_scale <= 1.0:
        raise bad("speed_scale", f"must be in (0, 1] (fraction of max speed), got {m.speed_scale!r}")
    if not m.groups:
        raise bad("groups", "at least one [[groups]] entry is needed")
    seen = set()
    for gi, g in enumerate(m.groups):
        if not g.name or g.name in seen:
            raise bad(f"groups[{gi}].name", f"must be a unique non-empty name, got {g.name!r}")
        seen.add(g.name)
        for ai, a in enumerate(g.axes):
            w = f"groups[{gi}] '{g.name}' axes[{ai}]"
            if a.axis < 0:
                raise bad(f"{w}.axis", f"must be >= 0, got {a.axis}")
            if dof is not None and not 0 <= a.joint < dof:
                raise bad(f"{w}.joint", f"joint {a.joint} out of range for dof {dof} (0..{dof - 1})")
            if not 0.0 <= a.deadzone < 1.0:
                raise bad(f"{w}.deadzone", f"must be in [0, 1), got {a.deadzone}")
    for ci, c in enumerate(m.cartesian):
        w = f"cartesian[{ci}]"
        if c.axis < 0:
            raise bad(f"{w}.axis", f"must be >= 0, got {c.axis}")
        if c.direction not in CARTESIAN_DIRECTIONS:
            raise bad(f"{w}.direction", f"must be one of {', '.join(CARTESIAN_DIRECTIONS)}, got {c.direction!r}")
        if not 0.0 <= c.deadzone < 1.0:
            raise bad(f"{w}.deadzone", f"must be in [0, 1), got {c.deadzone}")
    for key in ("linear_speed", "angular_speed"):
        v = getattr(m, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 5.0:
            raise bad(key, f"must be in (0, 5] ({'m/s' if key == 'linear_speed' else 'rad/s'}), got {v!r}")
    for kind, items in (("buttons", m.buttons), ("hats", m.hats)):
        for i, b in enumerate(items):
            w = f"{kind}[{i}]"
            if b.action not in ACTIONS:
                raise bad(f"{w}.action", f"unknown action {b.action!r}; known: {', '.join(ACTIONS)}")
            if kind == "buttons" and b.button < 0:
                raise bad(f"{w}.button", f"must be >= 0, got {b.button}")
            if kind == "hats":
                if b.hat < 0:
                    raise bad(f"{w}.hat", f"must be >= 0, got {b.hat}")
                if b.direction not in HAT_DIRECTIONS:
                    raise bad(f"{w}.direction", f"must be one of up/down/left/right, got {b.direction!r}")
            if b.action in _JOINT_ACTIONS:
                if b.joint is None:
                    raise bad(f"{w}.joint", f"action {b.action!r} needs a joint index")
                if dof is not None and not 0 <= b.joint < dof:
                    raise bad(f"{w}.joint", f"joint {b.joint} out of range for dof {dof} (0..{dof - 1})")


# --------------------------------------------------------------------------- TOML
_TYPES: dict[str, tuple] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _field(d: dict, key: str, kind: str, where: str, default: Any = ..., optional=False):
    if key not in d:
        if default is ...:
            raise MappingError(f"{where}: missing field '{key}' ({kind})")
        return default
    v = d[key]
    if optional and v is None:
        return None
    ok = isinstance(v, _TYPES[kind]) and not (kind in ("int", "float") and isinstance(v, bool))
    if not ok:
        raise MappingError(f"{where}.{key}: expected {kind}, got {type(v).__name__} {v!r}")
    return float(v) if kind == "float" else v


def _check_keys(d: dict, known: set[str], where: str) -> None:
    if not isinstance(d, dict):
        raise MappingError(f"{where}: expected a table, got {type(d).__name__}")
    extra = set(d) - known
    if extra:
        raise MappingError(f"{where}: unknown field(s) {sorted(extra)}; known: {sorted(known)}")


def mapping_from_dict(data: dict, source: str = "<mapping>") -> Mapping:
    """Build a Mapping from parsed TOML, with errors naming the bad field."""
    _check_keys(data, {"name", "speed_scale", "groups", "buttons", "hats", "cartesian", "linear_speed",
                       "angular_speed"}, source)
    name = _field(data, "name", "str", source)
    speed = _field(data, "speed_scale", "float", source, 1.0)
    groups = []
    for gi, gd in enumerate(data.get("groups", [])):
        w = f"{source}: groups[{gi}]"
        _check_keys(gd, {"name", "axes"}, w)
        axes = []
        for ai, ad in enumerate(gd.get("axes", [])):
            wa = f"{w}.axes[{ai}]"
            _check_keys(ad, {"axis", "joint", "scale", "invert", "deadzone", "trigger"}, wa)
            axes.append(AxisBinding(axis=_field(ad, "axis", "int", wa), joint=_field(ad, "joint", "int", wa),
                                    scale=_field(ad, "scale", "float", wa, 1.0),
                                    invert=_field(ad, "invert", "bool", wa, False),
                                    deadzone=_field(ad, "deadzone", "float", wa, 0.1),
                                    trigger=_field(ad, "trigger", "bool", wa, False)))
        groups.append(Group(name=_field(gd, "name", "str", w), axes=axes))
    buttons = []
    for i, bd in enumerate(data.get("buttons", [])):
        w = f"{source}: buttons[{i}]"
        _check_keys(bd, {"button", "action", "joint", "value"}, w)
        buttons.append(ButtonBinding(button=_field(bd, "button", "int", w), action=_field(bd, "action", "str", w),
                                     joint=_field(bd, "joint", "int", w, None),
                                     value=_field(bd, "value", "float", w, 0.0)))
    hats = []
    for i, hd in enumerate(data.get("hats", [])):
        w = f"{source}: hats[{i}]"
        _check_keys(hd, {"hat", "direction", "action", "joint", "value"}, w)
        hats.append(HatBinding(hat=_field(hd, "hat", "int", w, 0), direction=_field(hd, "direction", "str", w),
                               action=_field(hd, "action", "str", w),
                               joint=_field(hd, "joint", "int", w, None),
                               value=_field(hd, "value", "float", w, 0.0)))
    cart = []
    for i, cd in enumerate(data.get("cartesian", [])):
        w = f"{source}: cartesian[{i}]"
        _check_keys(cd, {"axis", "direction", "scale", "invert", "deadzone", "trigger"}, w)
        cart.append(CartesianAxis(axis=_field(cd, "axis", "int", w), direction=_field(cd, "direction", "str", w),
                                  scale=_field(cd, "scale", "float", w, 1.0),
                                  invert=_field(cd, "invert", "bool", w, False),
                                  deadzone=_field(cd, "deadzone", "float", w, 0.1),
                                  trigger=_field(cd, "trigger", "bool", w, False)))
    m = Mapping(name=name, groups=groups, buttons=buttons, hats=hats, speed_scale=speed, cartesian=cart,
                linear_speed=_field(data, "linear_speed", "float", source, 0.15),
                angular_speed=_field(data, "angular_speed", "float", source, 0.8))
    try:
        _validate(m, None)
    except MappingError as e:
        raise MappingError(f"{source}: {e}") from None
    return m


def mapping_to_dict(m: Mapping) -> dict:
    def drop_none(d: dict) -> dict:
        return {k: v for k, v in d.items() if v is not None}
    return {
        "name": m.name,
        "speed_scale": float(m.speed_scale),
        "groups": [{"name": g.name, "axes": [
            {"axis": a.axis, "joint": a.joint, "scale": float(a.scale), "invert": a.invert,
             "deadzone": float(a.deadzone), "trigger": a.trigger} for a in g.axes]} for g in m.groups],
        "buttons": [drop_none({"button": b.button, "action": b.action, "joint": b.joint,
                               "value": float(b.value)}) for b in m.buttons],
        "hats": [drop_none({"hat": h.hat, "direction": h.direction, "action": h.action,
                            "joint": h.joint, "value": float(h.value)}) for h in m.hats],
        "cartesian": [{"axis": c.axis, "direction": c.direction, "scale": float(c.scale), "invert": c.invert,
                       "deadzone": float(c.deadzone), "trigger": c.trigger} for c in m.cartesian],
        "linear_speed": float(m.linear_speed), "angular_speed": float(m.angular_speed),
    }


def load_mapping(path: str | Path) -> Mapping:
    """Read a mapping TOML file. Errors name the file and the bad field."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise MappingError(f"mapping file {path} not found; built-in ones are in "
                           f"{MAPPINGS_DIR}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:    # (not UTF-8: found by fuzzing)
        raise MappingError(f"mapping file {path} is not valid TOML: {e}") from None
    return mapping_from_dict(data, str(path))


def save_mapping(mapping: Mapping, path: str | Path) -> None:
    """Write a mapping as TOML (atomically: a crash never leaves half a file)."""
    import os
    import tomli_w
    _validate(mapping, None)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        tomli_w.dump(mapping_to_dict(mapping), f)
    os.replace(tmp, path)


MAPPINGS_DIR = Path(__file__).with_name("mappings")


def builtin_mappings() -> list[str]:
    return sorted(p.stem for p in MAPPINGS_DIR.glob("*.toml"))


# --------------------------------------------------------------------------- defaults
# SDL joystick order of an Xbox pad on Linux.
LX, LY, LT, RX, RY, RT = range(6)
A, B, X, Y, LB, RB, BACK, START, GUIDE, LSTICK, RSTICK = range(11)


def default_mapping(dof: int) -> Mapping:
    """Xbox-layout default for an arm with `dof` = arm joints + gripper (gripper last).

    Sticks drive 4 arm joints at a time (LX, LY, RX, RY; up = +), LB/RB (or d-pad
    left/right) switch groups; LT opens, RT closes the gripper (analog); A closes, B opens
    it; Start = start episode, d-pad down = stop, Back = re-record, Y = success,
    X = failure, Guide or right stick click = e-stop, d-pad up = home.
    Left stick click: joint <-> Cartesian mode (and, while a policy runs, take over / hand back).
    Cartesian mode: left stick = x (forward) / y (left), right stick = z (up) / yaw.
    """
    if dof < 2:
        raise MappingError(f"default mapping needs at least one arm joint plus the gripper, dof={dof}")
    arm, grip = dof - 1, dof - 1
    names = ["shoulder", "wrist"]
    groups = []
    for gi, start in enumerate(range(0, arm, 4)):
        axes = [AxisBinding(axis=ax, joint=j, invert=inv, deadzone=0.0)
                for (ax, inv), j in zip([(LX, False), (LY, True), (RX, False), (RY, True)],
                                        range(start, min(start + 4, arm)))]
        axes += [AxisBinding(axis=LT, joint=grip, scale=1.0, trigger=True, deadzone=0.05),
                 AxisBinding(axis=RT, joint=grip, scale=1.0, invert=True, trigger=True, deadzone=0.05)]
        groups.append(Group(name=names[gi] if gi < len(names) else f"group{gi + 1}", axes=axes))
    buttons = [ButtonBinding(A, "gripper_close"), ButtonBinding(B, "gripper_open"),
               ButtonBinding(X, "failure"), ButtonBinding(Y, "success"),
               ButtonBinding(LB, "prev_group"), ButtonBinding(RB, "next_group"),
               ButtonBinding(BACK, "rerecord"), ButtonBinding(START, "start_episode"),
               ButtonBinding(GUIDE, "estop"), ButtonBinding(RSTICK, "estop"),
               ButtonBinding(LSTICK, "toggle_cartesian"), ButtonBinding(LSTICK, "takeover")]
    hats = [HatBinding(0, "up", "home"), HatBinding(0, "down", "stop_episode"),
            HatBinding(0, "left", "prev_group"), HatBinding(0, "right", "next_group")]
    cartesian = [CartesianAxis(LY, "x", invert=True, deadzone=0.0), CartesianAxis(LX, "y", invert=True, deadzone=0.0),
                 CartesianAxis(RY, "z", invert=True, deadzone=0.0), CartesianAxis(RX, "yaw", invert=True, deadzone=0.0)]
    return Mapping(name=f"xbox_default_{dof}", groups=groups, buttons=buttons, hats=hats,
                   speed_scale=0.5, cartesian=cartesian)


# --------------------------------------------------------------------------- apply
def _axis_value(b: AxisBinding, raw: float) -> float:
    v = (raw + 1.0) * 0.5 if b.trigger else raw
    mag = abs(v)
    if mag <= b.deadzone:
        return 0.0
    v = np.sign(v) * min(1.0, (mag - b.deadzone) / (1.0 - b.deadzone))
    return -v if b.invert else v


def _hat_on(state: GamepadState | None, h: HatBinding) -> bool:
    if state is None or not state.connected or h.hat >= len(state.hats):
        return False
    comp, sign = HAT_DIRECTIONS[h.direction]
    return state.hats[h.hat][comp] == sign


@dataclass
class MappingState:
    """What a mapping remembers between reads: active group, gripper target, the previous
    pad state (for edges) and which triggers have been seen moving."""
    mapping: Mapping
    group_index: int = 0
    gripper: float | None = None        # last commanded target fraction (None = never)
    prev: GamepadState | None = None
    armed_triggers: set[int] = field(default_factory=set)

    @property
    def group(self) -> str:
        return self.mapping.groups[self.group_index].name

    def update(self, state: GamepadState, max_speed: np.ndarray, gripper_index: int) -> TeleopCommand:
        """apply() with the previous state remembered here."""
        cmd = apply(self.mapping, state, self.prev, max_speed, gripper_index, self)
        self.prev = state
        return cmd


def apply(mapping: Mapping, state: GamepadState, prev: GamepadState | None,
          max_speed: np.ndarray, gripper_index: int,
          mstate: MappingState | None = None) -> TeleopCommand:
    """One pad read -> joint velocities, gripper target and edge-triggered events.

    Edges: a button fires if it is in `state.pressed` (driver-caught taps) or is down now
    and was up in `prev`. A disconnected pad gives zero velocity and no events.
    Pass the same `mstate` every call to keep group switching and gripper toggling.
    """
    max_speed = np.asarray(max_speed, dtype=float)
    if mstate is None:
        mstate = MappingState(mapping)
    vel = np.zeros(len(max_speed))
    group = mapping.groups[mstate.group_index]
    if not state.connected:
        mstate.armed_triggers.clear()
        return TeleopCommand(joint_velocity=vel, gripper=None, events=[], group=group.name)

    prev_ok = prev is not None and prev.connected
    edges = set(state.pressed)
    if prev_ok:
        edges |= {i for i, on in enumerate(state.buttons)
                  if on and (i >= len(prev.buttons) or not prev.buttons[i])}

    events: list[str] = []
    gripper: float | None = None
    n_groups = len(mapping.groups)

    def fire(action: str, value: float) -> None:
        nonlocal gripper
        if action == "next_group":
            mstate.group_index = (mstate.group_index + 1) % n_groups
        elif action == "prev_group":
            mstate.group_index = (mstate.group_index - 1) % n_groups
        elif action == "gripper_open":
            gripper = 1.0
        elif action == "gripper_close":
            gripper = float(value)
        elif action == "gripper_toggle":
            cur = mstate.gripper if mstate.gripper is not None else 1.0
            gripper = float(value) if cur > 0.5 else 1.0
        elif action not in _JOINT_ACTIONS:
            events.append(action)
        if gripper is not None:
            mstate.gripper = gripper

    def jog(b) -> None:
        if b.joint is not None and 0 <= b.joint < len(vel):
            frac = b.value if b.value else 1.0
            sign = 1.0 if b.action == "joint_plus" else -1.0
            vel[b.joint] += sign * frac * max_speed[b.joint] * mapping.speed_scale

    for b in mapping.buttons:
        down = b.button < len(state.buttons) and state.buttons[b.button]
        if b.action in _JOINT_ACTIONS:
            if down:
                jog(b)
        elif b.button in edges:
            fire(b.action, b.value)
    for h in mapping.hats:
        on = _hat_on(state, h)
        if h.action in _JOINT_ACTIONS:
            if on:
                jog(h)
        elif on and prev_ok and not _hat_on(prev, h):
            fire(h.action, h.value)

    # Axes of the group active *after* this read's switches.
    group = mapping.groups[mstate.group_index]
    for a in group.axes:
        if a.axis >= len(state.axes) or not 0 <= a.joint < len(vel):
            continue
        raw = state.axes[a.axis]
        if a.trigger:
            # Some drivers report 0 for a trigger until it is first touched (SDL on Linux):
            # that reads as half-pressed, so ignore it until it has been seen elsewhere.
            if a.axis not in mstate.armed_triggers:
                if raw == 0.0:
                    continue
                mstate.armed_triggers.add(a.axis)
        vel[a.joint] += _axis_value(a, raw) * a.scale * mapping.speed_scale * max_speed[a.joint]

    vel = np.clip(vel, -max_speed, max_speed)     # two bindings on one joint never exceed it
    if gripper is not None and 0 <= gripper_index < len(vel):
        vel[gripper_index] = 0.0        # a new gripper target wins over analog motion this tick
    return TeleopCommand(joint_velocity=vel, gripper=gripper, events=events, group=group.name)


def cartesian_twist(mapping: Mapping, state: GamepadState) -> np.ndarray:
    """Cartesian mode: the pad's axes -> end-effector twist (vx, vy, vz m/s, wx, wy, wz rad/s) in the
    frame the source works in. A disconnected pad gives zero."""
    tw = np.zeros(6)
    if not state.connected:
        return tw
    for c in mapping.cartesian:
        if c.axis >= len(state.axes):
            continue
        raw = state.axes[c.axis]
        if c.trigger and raw == 0.0:
            continue                    # an untouched trigger reads 0 on some drivers (see apply)
        v = _axis_value(AxisBinding(axis=c.axis, joint=0, invert=c.invert, deadzone=c.deadzone,
                                    trigger=c.trigger), raw)
        k = CARTESIAN_DIRECTIONS.index(c.direction)
        speed = mapping.linear_speed if k < 3 else mapping.angular_speed
        tw[k] += v * c.scale * speed * mapping.speed_scale
    return tw
