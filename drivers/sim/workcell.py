"""The simulated workcell: a 7-joint arm + parallel gripper, a table, a red and a blue cube, a bowl.

Workcell(config) builds the backend the config asks for: MuJoCo contact physics (physics.py, the
default) or, with SimConfig(physics=False), this module's kinematic fast mode.

Kinematic model (no physics engine): each joint moves toward its goal at <= max_speed; a cube
attaches when the gripper closes through the cube width with the cube between the fingers,
and drops (onto the table, another cube or into the bowl) when the gripper opens again. The
TCP never goes below the table. `lock` guards all state; render() snapshots under the lock
and draws outside it, so a camera thread never blocks the control loop for long.
"""
from __future__ import annotations

import difflib
import threading
from dataclasses import dataclass, field

import numpy as np

from . import kinematics as kin
from .render import BOWL_H, BOWL_R, CUBE, Renderer, Snapshot, make_style, style_rng

TASKS: dict[str, str] = {
    "pick_red": "pick up the red cube",
    "pick_blue": "pick up the blue cube",
    "red_in_bowl": "put the red cube in the bowl",
}

GRIPPER_MAX_OPEN = 0.08       # m at fraction 1.0
GRASP_FRACTION = CUBE / GRIPPER_MAX_OPEN          # fingers touch the cube below this
HOLD_FRACTION = GRASP_FRACTION - 0.03             # measured opening while squeezing a cube
RELEASE_FRACTION = GRASP_FRACTION + 0.05
TCP_MIN_Z = 0.012             # finger tips end 1 cm below the TCP: keep them above the table
LIFT_SUCCESS = 0.05           # m above resting height for pick_* success
BOWL_FLOOR = 0.012
PLACE_X = (0.33, 0.62)        # where cubes and bowl are placed (m, base frame)
PLACE_Y = (-0.22, 0.22)


def task_from_instruction(text: str) -> str:
    """Task key for a task key or instruction, tolerant of case and whitespace."""
    norm = " ".join(str(text).lower().replace("_", " ").split()).rstrip(".!")
    for key, instr in TASKS.items():
        if norm in (key.replace("_", " "), instr):
            return key
    close = difflib.get_close_matches(norm, list(TASKS.values()), n=1, cutoff=0.85)
    if close:
        return next(k for k, v in TASKS.items() if v == close[0])
    raise KeyError(f"unknown task/instruction {text!r}; known: "
                   + ", ".join(f"{k} ({v!r})" for k, v in TASKS.items()))


@dataclass
class Randomization:
    light: bool = False
    colors: bool = False
    camera_jitter: bool = False
    noise: bool = False


@dataclass
class SimConfig:
    seed: int = 0
    task: str = "pick_red"
    width: int = 224
    height: int = 224
    randomization: Randomization = field(default_factory=Randomization)
    # True (the default): MuJoCo contact physics (physics.PhysicsWorkcell); False: the kinematic fast mode
    physics: bool = True


@dataclass
class _Cube:
    pos: np.ndarray
    yaw: float
    vz: float = 0.0
    falling: bool = False
    rest_z: float = CUBE / 2


class Workcell:
    """Arm + gripper + objects. Gripper unit: fraction open, 0 = closed, 1 = open 8 cm.

    Workcell(config) builds the MuJoCo backend (physics.PhysicsWorkcell) unless config.physics is
    False; Workcell() is the default config's (physics)."""
    physics = False
    sim = "kinematic"            # the backend's name in episodes, eval results and the UI ("physics")

    def __new__(cls, config: SimConfig | None = None):
        # __class__, not the module's name Workcell: a patched or re-bound name must not change the choice
        if cls is __class__ and (config or SimConfig()).physics:
            from .physics import PhysicsWorkcell     # lazy: mujoco only when asked for
            return super().__new__(PhysicsWorkcell)
        return super().__new__(cls)

    def __init__(self, config: SimConfig | None = None):
        self.config = config or SimConfig()
        c = self.config
        if not (16 <= int(c.width) <= 4096 and 16 <= int(c.height) <= 4096):
            raise ValueError(f"SimConfig width/height must be 16..4096 pixels, got {c.width}x{c.height}")
        self.episode = 0             # incremented by every reset (lets helpers notice a new scene)
        self.joint_names = list(kin.JOINT_NAMES)
        self.lower = kin.LOWER.copy()
        self.upper = kin.UPPER.copy()
        self.home = kin.HOME.copy()
        self.max_speed = kin.MAX_SPEED.copy()
        self.lock = threading.RLock()
        self.renderer = Renderer()
        self.torque = True
        self.time = 0.0              # simulated seconds since reset
        self._frame_index = 0
        self.reset(seed=self.config.seed, task=self.config.task)

    # ---- episode ---------------------------------------------------------------------
    def reset(self, seed: int | None = None, task: str | None = None) -> None:
        """New scene: seeded cube/bowl placement, arm at home, gripper open.

        seed None -> the next seed (previous + 1), so repeated resets give new scenes.
        """
        with self.lock:
            if seed is None:
                seed = self.seed + 1 if hasattr(self, "seed") else self.config.seed
            self.seed = int(seed)
            self.episode += 1
            if task is not None:
                self.task = task
            elif not hasattr(self, "_task"):
                self.task = self.config.task
            rng = np.random.default_rng(self.seed)
            bowl, red, blue = self._place(rng)
            self._bowl = np.array([*bowl, 0.0])
            self._cubes = {
                "red_cube": _Cube(np.array([*red, CUBE / 2]), float(rng.uniform(-0.4, 0.4))),
                "blue_cube": _Cube(np.array([*blue, CUBE / 2]), float(rng.uniform(-0.4, 0.4))),
            }
            self._q = self.home.copy()
            self._goal = self.home.copy()
            self._qd = np.zeros(8)
            self._q_last_step = self._q.copy()
            self._grasped: str | None = None
            self._grasp_local = np.zeros(3)
            self._grasp_yaw = 0.0
            self.torque = True
            self.time = 0.0
            r = self.config.randomization
            style = make_style(style_rng(self.seed), r.light, r.colors,
                               r.camera_jitter, r.noise)
            # a fresh renderer (not set_style): a camera thread still drawing the previous
            # scene keeps its own renderer and caches, so it never sees half-cleared caches
            self.renderer = Renderer(style)
            self._colors = {"red_cube": style.red_rgb, "blue_cube": style.blue_rgb}
            self._publish()

    @property
    def task(self) -> str:
        return self._task

    @task.setter
    def task(self, value: str) -> None:
        """Switching task keeps the scene (placement depends on the seed only)."""
        self._task = task_from_instruction(value)

    @property
    def instruction(self) -> str:
        return TASKS[self._task]

    @staticmethod
    def _place(rng: np.random.Generator):
        """Bowl, red and blue positions with minimum separations (rejection sampling)."""
        def sample():
            return np.array([rng.uniform(*PLACE_X), rng.uniform(*PLACE_Y)])
        for _ in range(1000):
            bowl, red, blue = sample(), sample(), sample()
            if (np.linalg.norm(red - blue) > 0.10 and np.linalg.norm(red - bowl) > BOWL_R + 0.07
                    and np.linalg.norm(blue - bowl) > BOWL_R + 0.07):
                return bowl, red, blue
        raise RuntimeError("could not place objects")  # pragma: no cover - region is large enough

    # ---- state -----------------------------------------------------------------------
    def _publish(self) -> None:
        """Called under the lock after every change of the joints: the state joint_state() returns."""
        self._state = (self._q.copy(), self._qd.copy())

    def joint_state(self) -> tuple[np.ndarray, np.ndarray]:
        """(qpos, qvel) as of the last step, read WITHOUT the lock: the control loop's observation must
        not wait for a physics step or a snapshot holding it (one reference swap: never torn)."""
        q, qd = self._state
        return q.copy(), qd.copy()

    def qpos(self) -> np.ndarray:
        with self.lock:
            return self._q.copy()

    def qvel(self) -> np.ndarray:
        with self.lock:
            return self._qd.copy()

    def goal(self) -> np.ndarray:
        with self.lock:
            return self._goal.copy()

    def set_target(self, q8) -> None:
        """Position-servo goals (clipped to limits). Ignored while torque is off."""
        q8 = np.asarray(q8, dtype=float).reshape(-1)
        if q8.shape != (8,) or not np.all(np.isfinite(q8)):
            raise ValueError(f"target must be 8 finite numbers (7 joints + gripper), got {q8!r}")
        with self.lock:
            if self.torque:
                self._goal = np.clip(q8, self.lower, self.upper)

    def set_torque(self, on: bool) -> None:
        """Torque off = back-drivable: goals ignored, the arm stays where pushed."""
        with self.lock:
            self.torque = bool(on)
            self._goal = self._q.copy()   # re-enabling holds the current pose, no jump
            self._qd[:] = 0.0
            self._publish()

    def push(self, q8) -> None:
        """The operator's hand moves the back-drivable arm (ignored while torque is on)."""
        q8 = np.asarray(q8, dtype=float).reshape(-1)
        if q8.shape != (8,) or not np.all(np.isfinite(q8)):
            raise ValueError(f"push expects 8 finite numbers, got {q8!r}")
        with self.lock:
            if self.torque:
                return
            prev = self._q.copy()
            new = self._clamp_table(prev, np.clip(q8, self.lower, self.upper))
            self._q = new
            self._goal = new.copy()
            self._after_move(prev, 0.0)
            self._publish()

    def step(self, dt: float) -> None:
        """Advance the world by dt seconds."""
        if dt <= 0:
            return
        with self.lock:
            prev = self._q.copy()
            if self.torque:
                lim = self.max_speed * dt
                new = prev + np.clip(self._goal - prev, -lim, lim)
                if self._grasped is not None:   # fingers stop on the cube
                    new[7] = max(new[7], HOLD_FRACTION) if self._goal[7] < RELEASE_FRACTION else new[7]
                new = self._clamp_table(prev, new)
            else:
                new = prev
            self._q = new
            # velocity over the step, including any hand pushes since the last step
            self._qd = (new - self._q_last_step) / dt
            self._q_last_step = new.copy()
            self.time += dt
            self._after_move(prev, dt)
            self._publish()

    def _fk(self, q: np.ndarray) -> np.ndarray:
        """kin.fk with a one-entry cache: a step asks for the TCP of the same joints twice."""
        key = np.asarray(q, float)[:7].tobytes()
        hit = getattr(self, "_fk_last", None)
        if hit is not None and hit[0] == key:
            return hit[1]
        t = kin.fk(q)
        self._fk_last = (key, t)
        return t

    def _tcp_ok(self, q: np.ndarray) -> bool:
        z = self._fk(q)[2, 3]
        zmin = TCP_MIN_Z
        if self._grasped is not None:
            zmin = max(zmin, CUBE / 2 + self._grasp_local[2] - 0.001)  # cube bottom >= table
        return z >= zmin

    def _clamp_table(self, prev: np.ndarray, new: np.ndarray) -> np.ndarray:
        """Largest part of the joint move prev->new that keeps the TCP above the table."""
        if self._tcp_ok(new) or np.allclose(new[:7], prev[:7]):
            return new
        if not self._tcp_ok(prev):      # already too low (e.g. pushed): allow moves that go up
            return new if self._fk(new)[2, 3] >= self._fk(prev)[2, 3] else np.concatenate([prev[:7], new[7:]])
        lo, hi = 0.0, 1.0
        for _ in range(12):
            mid = (lo + hi) / 2
            if self._tcp_ok(prev + (new - prev) * np.r_[np.full(7, mid), 1.0]):
                lo = mid
            else:
                hi = mid
        out = prev + (new - prev) * lo
        out[7] = new[7]
        return out

    def _after_move(self, prev: np.ndarray, dt: float) -> None:
        """Grasp / release / carry / fall, after the joints moved from prev to self._q."""
        g0, g1 = prev[7], self._q[7]
        tcp = self._fk(self._q)
        r, p = tcp[:3, :3], tcp[:3, 3]
        if self._grasped is None and g0 >= GRASP_FRACTION > g1:
            best, best_d = None, 1e9
            for name, c in self._cubes.items():
                local = r.T @ (c.pos - p)
                if abs(local[0]) < 0.025 and abs(local[1]) < 0.5 * g0 * GRIPPER_MAX_OPEN \
                        and abs(local[2]) < 0.025:
                    d = float(np.linalg.norm(local))
                    if d < best_d:
                        best, best_d = name, d
            if best is not None:
                c = self._cubes[best]
                local = r.T @ (c.pos - p)
                local[1] = 0.0              # closing fingers centre the cube
                self._grasped = best
                self._grasp_local = local
                self._grasp_yaw = c.yaw - float(np.arctan2(r[1, 0], r[0, 0]))
                c.falling = False
                self._q[7] = max(self._q[7], HOLD_FRACTION)
        elif self._grasped is not None and g1 > RELEASE_FRACTION:
            c = self._cubes[self._grasped]
            self._grasped = None
            self._drop(c)
        if self._grasped is not None:
            c = self._cubes[self._grasped]
            c.pos = p + r @ self._grasp_local
            c.yaw = self._grasp_yaw + float(np.arctan2(r[1, 0], r[0, 0]))
        for c in self._cubes.values():
            if c.falling and dt > 0:
                c.vz -= 9.81 * dt
                c.pos[2] += c.vz * dt
                if c.pos[2] <= c.rest_z:
                    c.pos[2], c.vz, c.falling = c.rest_z, 0.0, False

    def _drop(self, cube: _Cube) -> None:
        """Where a released cube comes to rest: in the bowl, on the other cube, or on the table."""
        d = cube.pos[:2] - self._bowl[:2]
        dist = float(np.linalg.norm(d))
        rest = CUBE / 2
        if dist < BOWL_R:
            lim = BOWL_R - CUBE * 0.6
            if dist > lim:
                cube.pos[:2] = self._bowl[:2] + d / dist * lim
            rest = BOWL_FLOOR + CUBE / 2
        else:
            for other in self._cubes.values():
                if other is not cube and np.all(np.abs(other.pos[:2] - cube.pos[:2]) < CUBE) \
                        and not other.falling:
                    rest = max(rest, other.pos[2] + CUBE)
        cube.rest_z = rest
        cube.falling = cube.pos[2] > rest + 1e-6
        if not cube.falling:
            cube.pos[2] = rest
        cube.vz = 0.0

    # ---- queries ---------------------------------------------------------------------
    def ee_pose(self) -> np.ndarray:
        with self.lock:
            return kin.fk(self._q)

    def objects(self) -> dict[str, np.ndarray]:
        with self.lock:
            out = {k: c.pos.copy() for k, c in self._cubes.items()}
            out["bowl"] = self._bowl.copy()
            return out

    def object_yaws(self) -> dict[str, float]:
        with self.lock:
            return {k: c.yaw for k, c in self._cubes.items()}

    def grasped(self) -> str | None:
        with self.lock:
            return self._grasped

    def success(self) -> bool:
        """The current task's success test."""
        with self.lock:
            if self.task in ("pick_red", "pick_blue"):
                name = "red_cube" if self.task == "pick_red" else "blue_cube"
                return self._grasped == name and self._cubes[name].pos[2] - CUBE / 2 >= LIFT_SUCCESS
            if self.task == "red_in_bowl":
                c = self._cubes["red_cube"]
                return (self._grasped != "red_cube" and not c.falling
                        and float(np.linalg.norm(c.pos[:2] - self._bowl[:2])) < BOWL_R
                        and c.pos[2] < BOWL_H + CUBE)
            return False

    def snapshot(self) -> tuple:
        """(renderer, Snapshot, frame index): what render() draws, copied under the lock (cheap; the
        drawing is done outside it, here or in a render process: drivers/sim/render_proc.py)."""
        with self.lock:
            q = self._q.copy()
            cubes = {k: (c.pos.copy(), c.yaw) for k, c in self._cubes.items()}
            bowl = self._bowl.copy()
            colors = dict(self._colors)
            renderer = self.renderer
            self._frame_index += 1
            idx = self._frame_index
        return renderer, Snapshot(frames=kin.chain(q[:7]), grip=float(q[7]), cubes=cubes, bowl=bowl,
                                  colors=colors), idx

    def render(self, view: str = "front", width: int | None = None, height: int | None = None) -> np.ndarray:
        """RGB uint8 HxWx3 image from the 'front' or 'wrist' camera."""
        renderer, snap, idx = self.snapshot()
        return renderer.render(snap, view, width or self.config.width, height or self.config.height, idx)
