"""Observation / action layouts for openpi policy servers: which keys, shapes and units a server wants.

A layout turns the app's observation {"images": {cam: HxWx3}, "qpos": (D,), "instruction": str} into
the request dict one openpi example sends (image keys, state layout, prompt key) and the reply's
action chunk back into absolute joint targets (action slicing, units, gripper convention, horizon).
Templates ship for openpi's ALOHA, DROID and LIBERO examples and for sim7 (what `teleop serve
--protocol openpi` expects); copy one and edit it for another robot. `Layout.check(profile)` lists
every way the layout does not fit a robot profile, before anything moves.

    lay = load_layout("droid")            # a template name or a path to a .toml / .json file
    lay.check(load_profile("sim7"))       # -> PolicyMismatchError naming each problem
"""
from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..base import PolicyError, PolicyMismatchError

HERE = Path(__file__).resolve().parent
ACTION_KINDS = ("absolute", "delta", "velocity", "ee_delta")
STATE_SOURCES = ("all", "arm", "gripper", "eef_pos", "eef_axis_angle")


class LayoutError(PolicyError):
    """A layout file is malformed; the message names the file and the field."""


@dataclass
class ImageSpec:
    key: str | list[str]            # request key; a list = nested dicts (ALOHA: ["images", "cam_high"])
    camera: str                     # the robot camera it comes from
    height: int = 224
    width: int = 224
    order: str = "hwc"              # "hwc" or "chw" (ALOHA sends channels first)
    resize: str = "pad"             # "pad" = openpi image_tools.resize_with_pad (letterbox), "stretch"


@dataclass
class StateSpec:
    key: str | list[str]            # segments sharing a key are concatenated in file order
    source: str = "all"             # all | arm | gripper | eef_pos | eef_axis_angle
    dtype: str = "float32"
    # gripper values on the wire: the robot's closed..open range maps linearly onto closed..open
    gripper_closed: list[float] = field(default_factory=lambda: [0.0])
    gripper_open: list[float] = field(default_factory=lambda: [1.0])


@dataclass
class ActionSpec:
    key: str = "actions"
    dim: int = 8                    # width of one action row in the reply
    kind: str = "absolute"          # absolute joints | delta (from the observed joints) | velocity | ee_delta
    arm: list[int] = field(default_factory=lambda: [0, 7])     # [start, stop) of the arm values
    gripper_index: int = 7
    gripper_closed: float = 0.0
    gripper_open: float = 1.0
    gripper_binary: bool = False    # threshold at the midpoint (DROID / LIBERO grippers are open/closed)
    gripper_raw: bool = False       # the value is already in the robot's gripper units (teleop servers)
    scale: float = 1.0              # velocity: rad per step per unit; ee_delta: metres per unit
    rot_scale: float = 1.0          # ee_delta: radians per unit
    clip: float | None = None       # clip raw values to [-clip, clip] first (normalised controllers)
    horizon: int = 0                # actions used from each chunk (0 = all); openpi's open-loop horizon


@dataclass
class Layout:
    name: str
    description: str = ""
    fps: float = 10.0               # the rate the policy was trained at
    arm_joints: int = 7             # arm joints the layout drives (grippers separate)
    grippers: int = 1
    images: list[ImageSpec] = field(default_factory=list)
    state: list[StateSpec] = field(default_factory=list)
    prompt: str | list[str] = "prompt"
    action: ActionSpec = field(default_factory=ActionSpec)
    source: str = ""
    notes: str = ""

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, source: str = "<layout>") -> "Layout":
        def sub(klass, data, where):
            if not isinstance(data, dict):
                raise LayoutError(f"{source}: '{where}' must be a table, got {type(data).__name__}")
            known = set(klass.__dataclass_fields__)
            extra = sorted(set(data) - known)
            if extra:
                raise LayoutError(f"{source}: unknown field(s) {extra} in '{where}' (known: {sorted(known)})")
            try:
                return klass(**data)
            except TypeError as e:
                raise LayoutError(f"{source}: '{where}': {e}") from None
        d = dict(d)
        if "name" not in d:
            raise LayoutError(f"{source}: missing 'name'")
        lay = sub(cls, {k: v for k, v in d.items() if k not in ("images", "state", "action")}, "layout")
        lay.images = [sub(ImageSpec, x, f"images[{i}]") for i, x in enumerate(d.get("images", []))]
        lay.state = [sub(StateSpec, x, f"state[{i}]") for i, x in enumerate(d.get("state", []))]
        lay.action = sub(ActionSpec, d.get("action", {}), "action")
        lay.source = source
        lay._validate()
        return lay

    def _validate(self) -> None:
        src, a = self.source or self.name, self.action
        if a.kind not in ACTION_KINDS:
            raise LayoutError(f"{src}: action.kind {a.kind!r} is not one of {ACTION_KINDS}")
        if len(a.arm) != 2 or not 0 <= a.arm[0] < a.arm[1] <= a.dim:
            raise LayoutError(f"{src}: action.arm {a.arm} must be [start, stop) within dim {a.dim}")
        if self.grippers and not 0 <= a.gripper_index < a.dim:
            raise LayoutError(f"{src}: action.gripper_index {a.gripper_index} outside dim {a.dim}")
        for i, im in enumerate(self.images):
            if im.order not in ("hwc", "chw") or im.resize not in ("pad", "stretch"):
                raise LayoutError(f"{src}: images[{i}]: order must be hwc|chw and resize pad|stretch")
        for i, s in enumerate(self.state):
            if s.source not in STATE_SOURCES:
                raise LayoutError(f"{src}: state[{i}].source {s.source!r} is not one of {STATE_SOURCES}")
            if len(s.gripper_closed) != len(s.gripper_open):
                raise LayoutError(f"{src}: state[{i}]: gripper_closed and gripper_open differ in length")
            try:
                np.dtype(s.dtype)
            except TypeError:
                raise LayoutError(f"{src}: state[{i}].dtype {s.dtype!r} is not a numpy dtype") from None
        if not self.fps or self.fps <= 0:
            raise LayoutError(f"{src}: fps must be > 0")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("source", None)
        return d

    @property
    def cameras(self) -> list[str]:
        return list(dict.fromkeys(im.camera for im in self.images))

    @property
    def uses_ee(self) -> bool:
        return self.action.kind == "ee_delta" or any(s.source.startswith("eef") for s in self.state)

    # ---- the check before anything moves ---------------------------------------------------
    def problems(self, profile, fps: float | None = None) -> list[str]:
        out: list[str] = []
        n_arm = len(profile.joints)
        if self.arm_joints != n_arm or self.grippers != 1:
            out.append(f"layout '{self.name}' drives {self.arm_joints} arm joints + {self.grippers} "
                       f"gripper(s), robot '{profile.name}' has {n_arm} arm joints + 1 gripper")
        a = self.action
        if a.kind != "ee_delta" and a.arm[1] - a.arm[0] != n_arm:
            out.append(f"action.arm {a.arm} selects {a.arm[1] - a.arm[0]} values, robot has {n_arm} arm joints")
        have = {c.name for c in getattr(profile, "cameras", [])}
        missing = [c for c in self.cameras if c not in have]
        if missing:
            out.append(f"cameras {missing} are not on the robot (profile has {sorted(have)}; set each "
                       "image's 'camera' in the layout to one of them)")
        rate = float(fps if fps is not None else profile.fps)
        if abs(float(self.fps) - rate) > 0.05 * rate:
            out.append(f"the policy runs at {self.fps:g} Hz, robot '{profile.name}' at {rate:g} Hz (set the "
                       f"loop / profile fps to {self.fps:g}, or the layout's fps if the policy allows it)")
        return out

    def check(self, profile, fps: float | None = None) -> None:
        p = self.problems(profile, fps)
        if p:
            raise PolicyMismatchError(f"openpi layout '{self.name}' does not fit robot '{profile.name}': "
                                      + "; ".join(p))

    # ---- observation -> request ------------------------------------------------------------
    def request(self, obs: dict, profile, fk=None) -> dict:
        images, q = obs.get("images", {}), np.asarray(obs["qpos"], float)
        out: dict = {}
        for im in self.images:
            if im.camera not in images:
                raise PolicyError(f"observation lacks camera '{im.camera}' (layout '{self.name}' needs "
                                  f"{self.cameras}; have {sorted(images)})")
            img = fit_image(np.asarray(images[im.camera]), im.height, im.width, im.resize)
            _put(out, im.key, np.ascontiguousarray(img.transpose(2, 0, 1) if im.order == "chw" else img))
        lo, hi = profile.gripper.lower, profile.gripper.upper
        g01 = float(np.clip((q[-1] - lo) / (hi - lo), 0.0, 1.0)) if hi > lo else 0.0
        pose = None
        for s in self.state:
            if s.source in ("eef_pos", "eef_axis_angle"):
                if pose is None:
                    if fk is None:
                        raise PolicyError(f"layout '{self.name}' sends the end-effector pose: give fk")
                    pose = np.asarray(fk(q[:-1]))
                v = pose[:3, 3] if s.source == "eef_pos" else matrix_to_axis_angle(pose[:3, :3])
            elif s.source == "gripper":
                c, o = np.asarray(s.gripper_closed, float), np.asarray(s.gripper_open, float)
                v = c + g01 * (o - c)
            elif s.source == "arm":
                v = q[:-1]
            else:
                v = q
            v = np.asarray(v, dtype=s.dtype).reshape(-1)
            try:                        # several segments with one key are joined in order (LIBERO)
                v = np.concatenate([_get(out, s.key), v])
            except (KeyError, TypeError):
                pass
            _put(out, s.key, v)
        _put(out, self.prompt, str(obs.get("instruction", "")))
        return out

    # ---- reply -> absolute joint targets ---------------------------------------------------
    def joints(self, reply, q, profile, period: float, fk=None, ik=None) -> np.ndarray:
        if not isinstance(reply, dict):
            raise PolicyError(f"the server's reply is a {type(reply).__name__}, expected a dict with "
                              f"'{_name(self.action.key)}'")
        try:
            raw = _get(reply, self.action.key)
        except KeyError:
            raise PolicyError(f"the server's reply has no '{_name(self.action.key)}' (keys: "
                              f"{sorted(map(str, reply))})") from None
        a = self.action
        if not isinstance(raw, (np.ndarray, list)):
            raise PolicyError(f"'{_name(a.key)}' is a {type(raw).__name__}, expected an array")
        arr = np.asarray(raw, float)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] < a.dim:
            raise PolicyError(f"'{_name(a.key)}' has shape {arr.shape}, layout '{self.name}' expects "
                              f"(chunk, {a.dim}); check the layout matches the served policy")
        if a.horizon:
            arr = arr[: a.horizon]
        if a.clip is not None:
            arr = np.clip(arr, -a.clip, a.clip)
        q = np.asarray(q, float)
        lo, hi = profile.gripper.lower, profile.gripper.upper
        g = arr[:, a.gripper_index]
        if not a.gripper_raw:
            g01 = (g - a.gripper_closed) / (a.gripper_open - a.gripper_closed)
            g01 = (g01 > 0.5).astype(float) if a.gripper_binary else np.clip(g01, 0.0, 1.0)
            g = np.where(np.isfinite(g), lo + g01 * (hi - lo), np.nan)
        arm = arr[:, a.arm[0]:a.arm[1]]
        if a.kind == "absolute":
            arm_t = arm
        elif a.kind == "delta":
            arm_t = q[:-1] + arm
        elif a.kind == "velocity":
            arm_t = q[:-1] + np.cumsum(arm * a.scale, axis=0)
        else:
            arm_t = _ee_chain(arm, q, fk, ik, a.scale, a.rot_scale, self.name)
        return np.concatenate([arm_t, g[:, None]], axis=1)


def _name(key) -> str:
    return "/".join(key) if isinstance(key, list) else str(key)


def _put(d: dict, key, value) -> None:
    if isinstance(key, list):
        for k in key[:-1]:
            d = d.setdefault(k, {})
        d[key[-1]] = value
    else:
        d[key] = value


def _get(d: dict, key):
    for k in (key if isinstance(key, list) else [key]):
        d = d[k]
    return d


def fit_image(img: np.ndarray, h: int, w: int, mode: str = "pad") -> np.ndarray:
    """HxWx3 uint8 -> h x w x 3; "pad" keeps the aspect ratio with black bars (openpi resize_with_pad)."""
    import cv2
    if img.ndim != 3 or img.shape[2] != 3:
        raise PolicyError(f"camera image must be HxWx3, got shape {img.shape}")
    img = img.astype(np.uint8, copy=False)
    if img.shape[:2] == (h, w):
        return img
    if mode == "stretch":
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    ih, iw = img.shape[:2]
    r = min(h / ih, w / iw)
    nh, nw = max(1, round(ih * r)), max(1, round(iw * r))
    small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
    out = np.zeros((h, w, 3), np.uint8)
    y, x = (h - nh) // 2, (w - nw) // 2
    out[y:y + nh, x:x + nw] = small
    return out


def matrix_to_axis_angle(r: np.ndarray) -> np.ndarray:
    c = float(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))
    ang = math.acos(c)
    if ang < 1e-8:
        return np.zeros(3)
    v = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    n = np.linalg.norm(v)
    if n < 1e-8:       # ~180 degrees: axis from the diagonal
        axis = np.sqrt(np.maximum((np.diag(r) + 1) / 2, 0))
        return axis * ang
    return v / n * ang


def axis_angle_to_matrix(v: np.ndarray) -> np.ndarray:
    ang = float(np.linalg.norm(v))
    if ang < 1e-12:
        return np.eye(3)
    k = np.asarray(v, float) / ang
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(ang) * kx + (1 - math.cos(ang)) * kx @ kx


def _ee_chain(arm: np.ndarray, q: np.ndarray, fk, ik, scale: float, rot_scale: float, name: str) -> np.ndarray:
    """Per-step end-effector deltas [dx, dy, dz, axis-angle(3)] -> arm joints, step after step through IK."""
    if fk is None or ik is None:
        raise PolicyError(f"layout '{name}' sends end-effector deltas: the robot needs fk and ik")
    if arm.shape[1] != 6:
        raise PolicyError(f"layout '{name}': ee_delta needs 6 arm values (dx,dy,dz,rx,ry,rz), got {arm.shape[1]}")
    t = np.asarray(fk(q[:-1]))
    pos, rot, qa = t[:3, 3].copy(), t[:3, :3].copy(), q[:-1].copy()
    out = []
    for row in arm:
        if not np.all(np.isfinite(row)):
            out.append(np.full(len(qa), np.nan))
            continue
        pos = pos + scale * row[:3]
        rot = axis_angle_to_matrix(rot_scale * row[3:6]) @ rot
        try:
            qa = np.asarray(ik(pos, rot, qa), float)
        except Exception as e:  # noqa: BLE001 - say why, the runner holds
            raise PolicyError(f"IK found no joints for the server's end-effector target "
                              f"{np.round(pos, 3).tolist()}: {e}") from None
        out.append(qa)
    return np.asarray(out)


def template_names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.toml"))


def load_layout(spec) -> Layout:
    """A template name (aloha, droid, libero, sim7), a .toml / .json file, a dict, or a Layout."""
    if isinstance(spec, Layout):
        return spec
    if isinstance(spec, dict):
        return Layout.from_dict(spec, "<dict>")
    s = str(spec)
    path = Path(s)
    if not path.suffix and (HERE / f"{s}.toml").exists():
        path = HERE / f"{s}.toml"
    if not path.exists():
        raise LayoutError(f"no layout {s!r}: give a template ({', '.join(template_names())}) or a .toml/.json "
                          "file (copy a template from teleop_app/policy/layouts/)")
    try:
        data: Any = (json.loads(path.read_text()) if path.suffix == ".json"
                     else tomllib.loads(path.read_text()))
    except (OSError, ValueError) as e:
        raise LayoutError(f"{path}: cannot read layout ({e})") from None
    return Layout.from_dict(data, str(path))


def layout_for_meta(meta, image_size: tuple[int, int] | None = None) -> Layout:
    """The layout `teleop serve --protocol openpi` speaks for a checkpoint's PolicyMeta."""
    h, w = image_size or tuple(meta.image_size)
    d = len(meta.joint_names)
    return Layout(
        name=f"teleop:{meta.kind}", description="teleop checkpoint served over openpi's protocol",
        fps=float(meta.fps), arm_joints=d - 1, grippers=1,
        images=[ImageSpec(key=f"observation/{c}_image", camera=c, height=h, width=w) for c in meta.cameras],
        state=[StateSpec(key="observation/state", source="all", dtype="float32")],
        prompt="prompt",
        action=ActionSpec(key="actions", dim=int(meta.action_dim), kind="absolute", arm=[0, d - 1],
                          gripper_index=d - 1, gripper_raw=True, horizon=0))


__all__ = ["ActionSpec", "ImageSpec", "Layout", "LayoutError", "StateSpec", "fit_image", "layout_for_meta",
           "load_layout", "template_names"]
