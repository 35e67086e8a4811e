"""MuJoCo contact physics behind the Workcell interface (SimConfig(physics=True)).

The MJCF is written here from kinematics.py's DH table, so MuJoCo's link frames are exactly
kin.chain(q): FK/IK and the scripted expert stay valid. The arm is driven like servos: each
joint has a kp/kv position actuator with a torque limit, joint damping and armature, and its
setpoint moves toward the commanded goal at <= max_speed (the servo's profile). Links are
gravity-compensated (a holding servo) and do not collide; the hand and the two fingers do.
The parallel gripper closes with a limited force (GRIP_FORCE per finger), so a grasp holds
by friction only: a heavy or slippery object slips, a bad grasp drops it, objects can be
pushed, tip over, fall off the table or out of the bowl.

Contact friction between an object and anything else is the object's own friction (objects
have a higher contact priority), so a scene can make one object slippery.

Torque off = back-drivable: goals are ignored; the actuators then play the operator's hand,
holding the pose the hand last pushed to (push()), which is where the arm stays.

Rendering draws MuJoCo's body poses with the NumPy/OpenCV renderer (render.py): no GL.
"""
from __future__ import annotations

import math

import mujoco
import numpy as np

from . import kinematics as kin
from .objects import ObjectSpec
from .render import (BOWL_FOOT, BOWL_H, BOWL_R, PLATE_H, PLATE_R, SPOT_R, TABLE_X, TABLE_Y, Renderer,
                     Snapshot, make_style, style_rng)
from .tasks import KINDS, PHYSICS_TASKS, Scene, sim_tasks, task_scene
from .workcell import (BOWL_FLOOR, LIFT_SUCCESS, PLACE_X, PLACE_Y, Workcell,
                       task_from_instruction)

TIMESTEP = 0.002              # s: 500 Hz physics inside every control tick
GRIP_FORCE = 3.0              # N per finger
PROFILE_ACCEL = 20.0          # servo profile acceleration, in max_speeds per second (1.5 rad/s -> 30 rad/s^2)
FINGER_MAX = 0.04             # m per finger at fraction 1 (8 cm opening)
_ARM_KP = (12000, 12000, 12000, 12000, 4000, 4000, 4000)
_ARM_KV = (200, 200, 200, 200, 50, 50, 50)
_ARM_FORCE = (87, 87, 87, 87, 12, 12, 12)        # N m (Panda-like)
_HEX = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 6, endpoint=False)]


def _f(v) -> str:
    return " ".join(f"{x:.6g}" for x in np.atleast_1d(v))


def _quat_x(a: float) -> list[float]:
    return [math.cos(a / 2), math.sin(a / 2), 0.0, 0.0]


def _quat_z(a: float) -> list[float]:
    return [math.cos(a / 2), 0.0, 0.0, math.sin(a / 2)]


def _arm_xml() -> str:
    bodies, close = [], []
    for i, (a, d, al) in enumerate(kin._DH):
        pos = [a, -math.sin(al) * d, math.cos(al) * d]
        j = i + 1
        bodies.append(
            f'<body name="link{j}" pos="{_f(pos)}" quat="{_f(_quat_x(al))}" gravcomp="1">'
            f'<inertial pos="0 0 0" mass="{2.0 if j < 5 else 1.0}" diaginertia="0.02 0.02 0.02"/>'
            f'<joint name="joint{j}" type="hinge" axis="0 0 1" range="{kin.LOWER[i]} {kin.UPPER[i]}" '
            f'limited="true" damping="{2.0 if j < 5 else 0.5}" armature="{0.1 if j < 5 else 0.05}"/>')
        close.append("</body>")
    tcp = kin.TCP_D
    hand = (
        f'<body name="hand" pos="0 0 {kin.FLANGE_D}" quat="{_f(_quat_z(kin._HAND_ROT))}" gravcomp="1">'
        f'<inertial pos="0 0 0.04" mass="0.6" diaginertia="0.002 0.002 0.002"/>'
        f'<geom name="hand" type="box" pos="0 0 {tcp - 0.075}" size="0.026 0.088 0.028" rgba=".9 .9 .9 1"/>'
        f'<site name="tcp" pos="0 0 {tcp}"/>'
    )
    for side, sgn in (("l", 1), ("r", -1)):
        hand += (
            f'<body name="finger_{side}" pos="0 {sgn * 0.009} {tcp - 0.0175}" gravcomp="1">'
            f'<inertial pos="0 0 0" mass="0.03" diaginertia="1e-5 1e-5 1e-5"/>'
            f'<joint name="finger_{side}" type="slide" axis="0 {sgn} 0" range="-0.0005 {FINGER_MAX + 0.0005}" '
            f'limited="true" damping="2" armature="0.01"/>'
            f'<geom name="pad_{side}" type="box" size="0.011 0.009 0.0275" friction="1.0 0.02 0.001" '
            f'rgba=".4 .4 .44 1"/></body>')
    hand += "</body>"
    return "".join(bodies) + hand + "".join(close)


def _bowl_xml(p) -> str:
    walls = []
    slope = math.atan2(BOWL_R - BOWL_FOOT, BOWL_H)
    half_len = 0.5 * math.hypot(BOWL_R - BOWL_FOOT, BOWL_H)
    r_mid = 0.5 * (BOWL_R + BOWL_FOOT)
    n = 16
    for k in range(n):
        th = 2 * math.pi * k / n
        qz = _quat_z(th)
        qy = [math.cos(slope / 2), 0.0, math.sin(slope / 2), 0.0]
        q = np.empty(4)
        mujoco.mju_mulQuat(q, np.array(qz), np.array(qy))
        pos = [r_mid * math.cos(th), r_mid * math.sin(th), BOWL_H / 2]
        walls.append(f'<geom type="box" pos="{_f(pos)}" quat="{_f(q)}" '
                     f'size="0.003 {2 * math.pi * BOWL_R / n / 2 + 0.001:.4f} {half_len:.4f}" rgba=".2 .6 .4 1"/>')
    return (f'<body name="bowl" pos="{_f([p[0], p[1], 0.0])}">'
            f'<geom type="cylinder" pos="0 0 {BOWL_FLOOR / 2}" size="{BOWL_FOOT + 0.003} {BOWL_FLOOR / 2}" '
            f'rgba=".2 .6 .4 1"/>' + "".join(walls) + "</body>")


def _object_xml(o: ObjectSpec, pos, yaw: float) -> str:
    fr = f'friction="{o.friction} 0.01 0.0005" priority="1" condim="4" density="{600.0}"'
    if o.kind == "box":
        g = f'type="box" size="{_f(o.size)}"'
    elif o.kind == "cylinder":
        g = f'type="cylinder" size="{_f(o.size)}"'
    else:
        g = f'type="mesh" mesh="prism"'
    return (f'<body name="{o.name}" pos="{_f(pos)}" quat="{_f(_quat_z(yaw))}">'
            f'<freejoint name="{o.name}"/><geom name="{o.name}" {g} {fr}/></body>')


def _prism_mesh() -> str:
    r, h = 0.021, 0.02
    v = [(r * c, r * s, z) for z in (-h, h) for c, s in _HEX]
    return f'<mesh name="prism" vertex="{" ".join(f"{x:.5f} {y:.5f} {z:.5f}" for x, y, z in v)}"/>'


def model_xml(objects: list[tuple[ObjectSpec, np.ndarray, float]], bowl=None, plate=None) -> str:
    """MJCF of the workcell with `objects` [(spec, position, yaw)], an optional bowl and plate."""
    cx, cy = (TABLE_X[0] + TABLE_X[1]) / 2, (TABLE_Y[0] + TABLE_Y[1]) / 2
    hx, hy = (TABLE_X[1] - TABLE_X[0]) / 2, (TABLE_Y[1] - TABLE_Y[0]) / 2
    acts = "".join(
        f'<position joint="joint{j + 1}" kp="{_ARM_KP[j]}" kv="{_ARM_KV[j]}" '
        f'forcerange="{-_ARM_FORCE[j]} {_ARM_FORCE[j]}" forcelimited="true"/>' for j in range(7))
    acts += "".join(
        f'<position joint="finger_{s}" kp="400" kv="4" forcerange="{-GRIP_FORCE} {GRIP_FORCE}" '
        f'forcelimited="true"/>' for s in ("l", "r"))
    fixtures = ""
    if bowl is not None:
        fixtures += _bowl_xml(bowl)
    if plate is not None:
        fixtures += (f'<body name="plate" pos="{_f([plate[0], plate[1], 0.0])}"><geom type="cylinder" '
                     f'pos="0 0 {PLATE_H / 2}" size="{PLATE_R} {PLATE_H / 2}" rgba=".9 .9 .85 1"/></body>')
    objs = "".join(_object_xml(o, p, y) for o, p, y in objects)
    return f"""<mujoco model="teleop-workcell">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{TIMESTEP}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <asset>{_prism_mesh()}</asset>
  <worldbody>
    <geom name="table" type="box" pos="{cx} {cy} -0.02" size="{hx} {hy} 0.02" friction="0.8 0.01 0.001"/>
    <geom name="floor" type="plane" pos="0 0 -0.75" size="3 3 0.1"/>
    {_arm_xml()}
    {fixtures}
    {objs}
  </worldbody>
  <contact><exclude body1="finger_l" body2="finger_r"/><exclude body1="hand" body2="finger_l"/>
    <exclude body1="hand" body2="finger_r"/></contact>
  <actuator>{acts}</actuator>
</mujoco>"""


def _place(rng: np.random.Generator, kind: str, objs: list[ObjectSpec], target: int = 0,
           bowl_near: bool = False):
    """(object positions, yaws, fixtures {bowl, plate} xy, spot xy) with spacing (rejection
    sampling); for push the spot belongs to objs[target]. bowl_near: the target is placed first and
    the bowl beside it, its rim 2-5 cm from the target's footprint in any direction (a separate draw,
    so the scenes without it are unchanged)."""
    def xy():
        return np.array([rng.uniform(*PLACE_X), rng.uniform(*PLACE_Y)])
    for _ in range(2000):
        if bowl_near:
            first = xy()
            ang = rng.uniform(-math.pi, math.pi)
            bowl = first + (BOWL_R + objs[target].footprint + rng.uniform(0.02, 0.05)) * np.array(
                [math.cos(ang), math.sin(ang)])
            if not (PLACE_X[0] <= bowl[0] <= PLACE_X[1] and PLACE_Y[0] <= bowl[1] <= PLACE_Y[1]):
                continue
            fixtures = {"bowl": bowl}
        else:
            fixtures = {"bowl": xy()}
        if kind == "place_plate":
            fixtures["plate"] = xy()
        ok = all(np.linalg.norm(a - b) > BOWL_R + PLATE_R + 0.01
                 for i, a in enumerate(fixtures.values()) for b in list(fixtures.values())[i + 1:])
        if not ok:
            continue
        pts = []
        for i, o in enumerate(objs):
            p = first if bowl_near and i == target else xy()
            if any(np.linalg.norm(p - f) < (BOWL_R if k == "bowl" else PLATE_R) + o.footprint + 0.02
                   for k, f in fixtures.items()):
                break
            if any(np.linalg.norm(p - q) < o.footprint + r + 0.05 for q, r in pts):
                break
            pts.append((p, o.footprint))
        else:
            spot = None
            if kind == "push":
                spot = _push_spot(rng, pts[target][0], pts[:target] + pts[target + 1:], fixtures)
                if spot is None:
                    continue
            yaws = [float(rng.uniform(-0.5, 0.5)) for _ in objs]
            return [p for p, _ in pts], yaws, fixtures, spot
    raise RuntimeError("could not place the scene's objects")  # pragma: no cover


def _push_spot(rng, start, others, fixtures):
    """A spot 8-14 cm from the target with a clear straight path (and room behind to push from)."""
    for _ in range(30):
        ang = rng.uniform(-math.pi, math.pi)
        d = np.array([math.cos(ang), math.sin(ang)])
        spot = start + d * rng.uniform(0.08, 0.14)
        behind = start - d * 0.07
        if not (PLACE_X[0] - 0.02 <= spot[0] <= PLACE_X[1] + 0.02 and abs(spot[1]) <= PLACE_Y[1] + 0.02):
            continue
        if not (0.28 <= behind[0] <= 0.68 and abs(behind[1]) <= 0.28):
            continue
        path = [start + (spot - start) * t for t in np.linspace(0, 1, 8)] + [behind]
        clear = all(np.linalg.norm(p - q) > r + 0.06 for q, r in others for p in path)
        clear = clear and all(np.linalg.norm(p - f) > (BOWL_R if k == "bowl" else PLATE_R) + 0.04
                              for k, f in fixtures.items() for p in path)
        if clear:
            return spot
    return None


class PhysicsBackend:
    """The MuJoCo model and data of one scene, and the servo-like control of the arm."""

    def __init__(self, scene: Scene, seed: int, objects_override: dict | None = None):
        self.scene = scene
        rng = np.random.default_rng([seed, 4242])
        objects = list(scene.objects)
        if {o.name for o in objects} == {"red_cube", "blue_cube"}:
            objects.sort(key=lambda o: o.name != "red_cube")   # same placement for every legacy task
        pos, yaws, fixtures, spot = _place(rng, scene.kind, objects, objects.index(scene.target),
                                            bowl_near=getattr(scene, "bowl_near", False))
        self.bowl = np.array([*fixtures["bowl"], 0.0])
        self.plate = np.array([*fixtures["plate"], 0.0]) if "plate" in fixtures else None
        self.spot = np.array([*spot, 0.0]) if spot is not None else None
        objs = [(o, np.array([p[0], p[1], o.half_height + 1e-4]), y)
                for o, p, y in zip(objects, pos, yaws)]
        if objects_override:
            objs = [(objects_override.get(o.name, o), p, y) for o, p, y in objs]
        self.specs = {o.name: o for o, _, _ in objs}
        self.model = mujoco.MjModel.from_xml_string(model_xml(objs, self.bowl, self.plate))
        self.data = mujoco.MjData(self.model)
        m = self.model
        self.arm_qadr = np.array([m.jnt_qposadr[m.joint(f"joint{j}").id] for j in range(1, 8)])
        self.arm_dadr = np.array([m.jnt_dofadr[m.joint(f"joint{j}").id] for j in range(1, 8)])
        self.fing_qadr = np.array([m.jnt_qposadr[m.joint(f"finger_{s}").id] for s in "lr"])
        self.fing_dadr = np.array([m.jnt_dofadr[m.joint(f"finger_{s}").id] for s in "lr"])
        self.body = {n: m.body(n).id for n in self.specs}
        self.geom = {n: m.geom(n).id for n in self.specs}
        self.pads = (m.geom("pad_l").id, m.geom("pad_r").id)
        self.links = [m.body(f"link{j}").id for j in range(1, 8)]
        self.tcp_site = m.site("tcp").id
        self.rest_z = {n: o.half_height for n, o in self.specs.items()}

    def set_q(self, q8: np.ndarray) -> None:
        d = self.data
        d.qpos[self.arm_qadr] = q8[:7]
        d.qpos[self.fing_qadr] = q8[7] * FINGER_MAX
        d.qvel[:] = 0.0
        self.set_ctrl(q8)
        mujoco.mj_forward(self.model, d)

    def set_ctrl(self, ref8: np.ndarray) -> None:
        self.data.ctrl[:7] = ref8[:7]
        self.data.ctrl[7:9] = ref8[7] * FINGER_MAX

    def q(self) -> np.ndarray:
        d = self.data
        # the finger joints have 0.5 mm of travel past 0 / 1 so the setpoints never sit on a (soft)
        # joint limit; the reported opening is clipped like a servo's range
        frac = min(1.0, max(0.0, d.qpos[self.fing_qadr].sum() / (2 * FINGER_MAX)))
        return np.r_[d.qpos[self.arm_qadr], frac]

    def qd(self) -> np.ndarray:
        d = self.data
        return np.r_[d.qvel[self.arm_dadr], d.qvel[self.fing_dadr].sum() / (2 * FINGER_MAX)]

    def pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        b = self.body[name]
        return self.data.xpos[b].copy(), self.data.xmat[b].reshape(3, 3).copy()

    def tcp(self) -> np.ndarray:
        t = np.eye(4)
        t[:3, :3] = self.data.site_xmat[self.tcp_site].reshape(3, 3)
        t[:3, 3] = self.data.site_xpos[self.tcp_site]
        return t

    def touching(self) -> dict[str, set[int]]:
        """object name -> pads (0 left, 1 right) it touches."""
        d = self.data
        out: dict[str, set[int]] = {}
        inv = {g: n for n, g in self.geom.items()}
        for i in range(d.ncon):
            c = d.contact[i]
            g1, g2 = int(c.geom1), int(c.geom2)
            for pad_i, pad in enumerate(self.pads):
                other = g2 if g1 == pad else g1 if g2 == pad else None
                if other is not None and other in inv:
                    out.setdefault(inv[other], set()).add(pad_i)
        return out

    def frames(self) -> list[np.ndarray]:
        """Arm frames like kin.chain (joint1..7, flange, TCP), from MuJoCo's body poses."""
        d = self.data
        out = []
        for b in self.links:
            t = np.eye(4)
            t[:3, :3] = d.xmat[b].reshape(3, 3)
            t[:3, 3] = d.xpos[b]
            out.append(t)
        fl = out[-1].copy()
        fl[:3, 3] += fl[:3, 2] * kin.FLANGE_D
        out.append(fl)
        out.append(self.tcp())
        return out


def yaw_of(rot: np.ndarray) -> float:
    return float(math.atan2(rot[1, 0], rot[0, 0]))



class PhysicsWorkcell(Workcell):
    """Workcell with MuJoCo contact physics (same public interface as the kinematic one).

    reset(seed, task) takes a legacy task key (TASKS), a PHYSICS_TASKS key or instruction, or
    reset(seed, scene=Scene) any scene from tasks.py (its instruction becomes `instruction`).
    """
    physics = True
    sim = "physics"

    def reset(self, seed: int | None = None, task: str | None = None, scene: Scene | None = None,
              objects: dict | None = None) -> None:
        """New scene: seeded placement, arm at home, gripper open. `objects` {name: ObjectSpec}
        overrides object properties (e.g. friction) for this scene."""
        with self.lock:
            if seed is None and scene is not None:
                seed = scene.seed
            if seed is None:
                seed = self.seed + 1 if hasattr(self, "seed") else self.config.seed
            self.seed = int(seed)
            self.episode += 1
            if scene is not None:
                self._scene, self._task = scene, scene.kind
            else:
                if task is not None:
                    self._task = physics_task(task)
                elif not hasattr(self, "_task"):
                    self._task = physics_task(self.config.task)
                if self._task not in KINDS:         # a task key (a scene's kind keeps its scene)
                    self._scene = task_scene(self._task, self.seed)
            self._sim = PhysicsBackend(self._scene, self.seed, objects)
            self._q = self.home.copy()
            self._sim.set_q(self._q)
            self._goal = self.home.copy()
            self._ref = self.home.copy()
            self._vref = np.zeros(8)
            self._hand = self.home.copy()
            self._acc = 0.0
            self.torque = True
            self.time = 0.0
            r = self.config.randomization
            srng = style_rng(self.seed)
            style = make_style(srng, r.light, r.colors, r.camera_jitter, r.noise)
            self.renderer = Renderer(style)
            self._colors = {}
            for n, o in self._sim.specs.items():
                rgb = np.array(o.rgb, float)
                if r.colors:
                    rgb = np.clip(rgb + srng.uniform(-20, 20, 3), 0, 255)
                self._colors[n] = tuple(rgb)
            self._publish()

    @property
    def task(self) -> str:
        return self._task

    @task.setter
    def task(self, value: str) -> None:
        """Switching task keeps the placement seed; the scene changes to the task's objects."""
        key = physics_task(value)
        with self.lock:
            self._task = key
            if hasattr(self, "_sim"):
                self._scene = task_scene(key, self.seed)
                sim = self._sim
                same = ({o.name for o in self._scene.objects} == set(sim.specs)
                        and (self._scene.kind != "place_plate" or sim.plate is not None)
                        and (self._scene.kind != "push" or sim.spot is not None))
                if not same:            # other objects or fixtures: a new scene, same seed
                    self.reset(seed=self.seed)

    @property
    def scene(self) -> Scene:
        return self._scene

    def trace(self) -> "OutcomeTrace":
        """A tracker for the episode that starts now (see OutcomeTrace): call after reset()."""
        return OutcomeTrace(self)

    @property
    def instruction(self) -> str:
        return self._scene.instruction

    # ---- state -----------------------------------------------------------------------
    def _publish(self) -> None:
        """Under the lock, after the joints changed: what joint_state() returns (see Workcell)."""
        self._state = (self._sim.q(), self._sim.qd())

    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        """(qpos, qvel) as of the last physics step, read without the lock (one reference swap)."""
        q, qd = self._state
        return q.copy(), qd.copy()

    def qpos(self) -> np.ndarray:
        with self.lock:
            return self._sim.q()

    def qvel(self) -> np.ndarray:
        with self.lock:
            return self._sim.qd()

    def set_torque(self, on: bool) -> None:
        with self.lock:
            self.torque = bool(on)
            q = self._sim.q()
            self._goal, self._ref, self._hand = q.copy(), q.copy(), q.copy()
            self._vref = np.zeros(8)
            self._publish()

    def push(self, q8) -> None:
        q8 = np.asarray(q8, dtype=float).reshape(-1)
        if q8.shape != (8,) or not np.all(np.isfinite(q8)):
            raise ValueError(f"push expects 8 finite numbers, got {q8!r}")
        with self.lock:
            if not self.torque:
                self._hand = np.clip(q8, self.lower, self.upper)

    def step(self, dt: float) -> None:
        """Advance the world by dt seconds in TIMESTEP physics steps (remainders carry over)."""
        if dt <= 0:
            return
        with self.lock:
            sim = self._sim
            self._acc += dt
            n = int(self._acc / TIMESTEP + 1e-9)
            self._acc -= n * TIMESTEP
            vmax, amax = self.max_speed, self.max_speed * PROFILE_ACCEL
            for _ in range(n):
                if self.torque:
                    # trapezoidal servo profile: speed <= max_speed, |accel| <= amax, stops on the goal
                    e = self._goal - self._ref
                    v_want = np.sign(e) * np.minimum(vmax, np.sqrt(2.0 * amax * np.abs(e)))
                    self._vref += np.clip(v_want - self._vref, -amax * TIMESTEP, amax * TIMESTEP)
                    step = self._vref * TIMESTEP
                    near = np.abs(e) <= np.abs(step)          # arrive exactly, no dithering
                    self._ref = np.where(near, self._goal, self._ref + step)
                    self._vref[near] = np.where(np.abs(e[near]) < 1e-12, 0.0, self._vref[near])
                    sim.set_ctrl(self._ref)
                else:
                    sim.set_ctrl(self._hand)
                mujoco.mj_step(sim.model, sim.data)
            self.time += n * TIMESTEP
            self._publish()

    # ---- queries ---------------------------------------------------------------------
    def ee_pose(self) -> np.ndarray:
        with self.lock:
            return self._sim.tcp()

    def objects(self) -> dict[str, np.ndarray]:
        with self.lock:
            out = {n: self._sim.pose(n)[0] for n in self._sim.specs}
            out["bowl"] = self._sim.bowl.copy()
            if self._sim.plate is not None:
                out["plate"] = self._sim.plate.copy()
            if self._sim.spot is not None:
                out["spot"] = self._sim.spot.copy()
            return out

    def object_poses(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """name -> (position, 3x3 rotation) of every movable object."""
        with self.lock:
            return {n: self._sim.pose(n) for n in self._sim.specs}

    def object_yaws(self) -> dict[str, float]:
        with self.lock:
            return {n: yaw_of(self._sim.pose(n)[1]) for n in self._sim.specs}

    def object_specs(self) -> dict[str, ObjectSpec]:
        return dict(self._sim.specs)

    def grasped(self) -> str | None:
        """The object squeezed between both finger pads, if any."""
        with self.lock:
            both = [n for n, pads in self._sim.touching().items() if len(pads) == 2]
            return both[0] if both else None

    def _resting(self, name: str) -> bool:
        b = self._sim.body[name]
        v = self._sim.data.cvel[b]
        return float(np.linalg.norm(v[3:])) < 0.05 and name not in self._sim.touching()

    def success(self) -> bool:
        """The current scene's success test."""
        with self.lock:
            sc, sim = self._scene, self._sim
            t = sc.target.name
            p, rot = sim.pose(t)
            if sc.kind == "pick":
                return self.grasped() == t and p[2] - sim.rest_z[t] >= LIFT_SUCCESS
            if not self._resting(t):
                return False
            if sc.kind == "place_bowl":
                return (float(np.linalg.norm(p[:2] - sim.bowl[:2])) < BOWL_R
                        and p[2] < BOWL_H + sc.target.half_height)
            if sc.kind == "place_plate":
                return (float(np.linalg.norm(p[:2] - sim.plate[:2])) < PLATE_R
                        and abs(p[2] - (PLATE_H + sc.target.half_height)) < 0.01)
            if sc.kind == "push":
                return float(np.linalg.norm(p[:2] - sim.spot[:2])) < SPOT_R and p[2] < 0.05
            if sc.kind == "stack":
                s = sc.support.name
                ps, _ = sim.pose(s)
                top = ps[2] + sc.support.half_height
                return (float(np.linalg.norm(p[:2] - ps[:2])) < 0.6 * sc.support.size[0] + 0.01
                        and abs(p[2] - (top + sc.target.half_height)) < 0.01
                        and abs(ps[2] - sim.rest_z[s]) < 0.005)
            return False

    def snapshot(self) -> tuple:
        """(renderer, Snapshot, frame index) copied under the lock; see Workcell.snapshot."""
        with self.lock:
            sim = self._sim
            frames = sim.frames()
            grip = float(sim.q()[7])
            bodies = []
            for n, o in sim.specs.items():
                pos, rot = sim.pose(n)
                bodies.append((o.kind, pos, rot, o.size, self._colors[n]))
            bowl = sim.bowl.copy()
            plate = None if sim.plate is None else sim.plate.copy()
            spot = None if sim.spot is None else sim.spot.copy()
            renderer = self.renderer
            self._frame_index += 1
            idx = self._frame_index
        return renderer, Snapshot(frames=frames, grip=grip, cubes={}, bowl=bowl, colors={}, bodies=bodies,
                                  plate=plate, spot=spot), idx

    def render(self, view: str = "front", width: int | None = None, height: int | None = None) -> np.ndarray:
        renderer, snap, idx = self.snapshot()
        return renderer.render(snap, view, width or self.config.width, height or self.config.height, idx)


# How a failed episode failed, read off the sim's state the way a researcher reads a rollout's video.
OUTCOMES = {
    "success": "the task's success test passed",
    "wrong object": "another object was grasped, or the gripper came down nearest another object",
    "missed grasp": "the gripper came down at the target and never held it (it may have pushed it)",
    "dropped": "the target was held, and is not held at the end (it slipped or fell)",
    "held, not lifted enough": "the episode ended holding the target below the success height",
    "not placed": "the target was carried and did not end where the task wanted it (place, stack, push)",
    "knocked off the table": "the target fell off the table",
    "no attempt": "the gripper never came down to object height",
}
ATTEMPT_Z = 0.03            # m above the tallest object's top: lower than that, the gripper went for something
MOVED = 0.015               # m: an object this far from where it started was touched


class OutcomeTrace:
    """Follows one episode on a PhysicsWorkcell step by step (`observe()` after each step) and names how it
    ended (`verdict(success)`): one of OUTCOMES, whose values say what each means."""

    def __init__(self, wc: "PhysicsWorkcell"):
        self.wc = wc
        sc = wc.scene
        self.kind, self.target = sc.kind, sc.target.name
        with wc.lock:
            sim = wc._sim
            self.start = {n: sim.pose(n)[0] for n in sim.specs}
            self.attempt_z = max(2 * o.half_height for o in sim.specs.values()) + ATTEMPT_Z
        self.held: set[str] = set()
        self.max_lift = 0.0
        self.low: tuple[float, np.ndarray] | None = None       # (lowest TCP z, TCP xy there)

    def observe(self) -> None:
        wc = self.wc
        with wc.lock:
            sim = wc._sim
            tcp = sim.tcp()[:3, 3]
            held = wc.grasped()
            if held is not None:
                self.held.add(held)
            self.max_lift = max(self.max_lift, sim.pose(self.target)[0][2] - sim.rest_z[self.target])
        if self.low is None or tcp[2] < self.low[0]:
            self.low = (float(tcp[2]), tcp[:2].copy())

    def verdict(self, success: bool | None) -> str:
        if success:
            return "success"
        wc, t = self.wc, self.target
        with wc.lock:
            sim = wc._sim
            now = {n: sim.pose(n)[0] for n in sim.specs}
        held_now = wc.grasped()
        if now[t][2] < -0.05:
            return "knocked off the table"
        if t in self.held:
            carried = self.kind != "pick" and self.max_lift >= 0.02       # on its way somewhere
            if held_now == t:
                return "not placed" if carried else "held, not lifted enough"
            return "not placed" if carried else "dropped"
        if self.held - {t}:
            return "wrong object"
        if self.kind == "push" and float(np.linalg.norm(now[t][:2] - self.start[t][:2])) >= MOVED:
            return "not placed"
        if self.low is None or self.low[0] > self.attempt_z:
            return "no attempt"
        xy = self.low[1]
        nearest = min(self.start, key=lambda n: float(np.linalg.norm(self.start[n][:2] - xy)))
        return "missed grasp" if nearest == t else "wrong object"


def physics_task(text: str) -> str:
    """Task key for a legacy/physics task key or its instruction."""
    norm = " ".join(str(text).lower().replace("_", " ").split()).rstrip(".!")
    for key, instr in PHYSICS_TASKS.items():
        if norm in (key.replace("_", " "), instr):
            return key
    try:
        return task_from_instruction(text)
    except KeyError:
        known = ", ".join(f"{k} ({v!r})" for k, v in sim_tasks(True).items())
        raise KeyError(f"unknown task/instruction {text!r}; known: {known}") from None
