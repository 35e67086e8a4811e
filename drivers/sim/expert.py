"""Scripted IK expert that solves the workcell tasks, with small seeded human-like variation.

Behaviour is a function of what the cameras show plus the arm state: a top-down grasp with a
fixed gripper yaw, Cartesian waypoints (above the cube, descend, close, lift; for red_in_bowl
also carry above the bowl, lower, open, retreat). Each tick moves the *measured* TCP a
speed-limited step toward the current waypoint and solves IK warm-started at the measured
joints, so the demos are closed-loop and every joint step is feasible at max_speed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kinematics as kin
from .render import BOWL_H, BOWL_R, CUBE, PLATE_H, PLATE_R
from .workcell import BOWL_FLOOR, HOLD_FRACTION, Workcell


@dataclass
class _Waypoint:
    pos: np.ndarray | None      # None = stay where you are (gripper-only step)
    grip: float                 # gripper target, fraction open
    speed: float                # m/s
    pause: float = 0.0          # s to wait after reaching it
    wait_grip: bool = False     # wait until the gripper has (nearly) reached `grip` (or stalled on an object)
    rot: np.ndarray | None = None   # tool orientation (None: the expert's default, pointing down yaw 0)
    name: str = ""


PERTURB_STEPS = 40      # ticks a detour may take before the expert gives up on reaching it and recovers
DETOUR_RADIUS = (0.03, 0.07)    # m from the target's centre where a detour comes down (1.5-7 cm, tried on Dec 6
                                # against grasps 2 cm off the centre, left those drops as they were: docs)


class ScriptedExpert:
    """perturb (physics sim): the probability, drawn per scene from the seeds, that the expert first
    drives a detour, to a point 3-7 cm beside the object (DETOUR_RADIUS) and down towards the table as a policy that
    misjudged where the object is would, and then recovers from there with its normal plan (DART-style
    noise injection, Laskey et al. 2017). `perturbing` says whether the action act() last returned
    belongs to such a detour: recorded as the action source "perturbation", it is not to be imitated
    (training drops those steps and keeps the recovery)."""

    def __init__(self, workcell: Workcell, seed: int = 0, dt: float = 0.1, perturb: float = 0.0):
        if not 0.0 <= float(perturb) <= 1.0:
            raise ValueError(f"perturb is a probability in [0, 1], got {perturb}")
        self.workcell = workcell
        self.seed = int(seed)
        self.dt = float(dt)
        self.perturb = float(perturb)
        self.rot = kin.rot_down(0.0)
        self._grasp_z = 0.0
        self.reset()

    def reset(self) -> None:
        """Plan the waypoints for the workcell's current scene and task (call after workcell.reset;
        act() also replans by itself when it notices a new episode)."""
        self._retries = 0
        self.perturbing = False
        self._detour = False
        self._plan()
        wc = self.workcell
        if (self.perturb > 0 and getattr(wc, "physics", False) and wc.scene.kind != "push"
                and np.random.default_rng([self.seed, wc.seed, 77]).random() < self.perturb):
            self.waypoints = plan_detour(wc, np.random.default_rng([self.seed, wc.seed, 78]), wc.qpos())
            self._detour = True

    def _plan(self) -> None:
        wc = self.workcell
        self._episode = wc.episode
        self._prev_grip = None
        if getattr(wc, "physics", False):
            self.waypoints = plan_physics(wc, np.random.default_rng([self.seed, wc.seed, 99, self._retries]),
                                          wc.qpos())
            self.index, self._wait, self.done, self.steps = 0, 0.0, False, 0
            self.rot = kin.rot_down(0.0)
            return
        rng = np.random.default_rng([self.seed, wc.seed, 99, self._retries])
        obj = wc.objects()
        task = wc.task
        cube = obj["blue_cube" if task == "pick_blue" else "red_cube"]
        off = rng.uniform(-0.004, 0.004, 2)
        above = np.array([cube[0] + off[0], cube[1] + off[1], cube[2] + rng.uniform(0.08, 0.11)])
        grasp = np.array([above[0], above[1], cube[2] + rng.uniform(-0.003, 0.003)])
        lift = np.array([grasp[0], grasp[1], cube[2] + rng.uniform(0.10, 0.13)])
        v = rng.uniform(0.17, 0.22)
        wps = [
            _Waypoint(above, 1.0, v, pause=rng.choice([0.0, 0.0, 0.1])),
            _Waypoint(grasp, 1.0, rng.uniform(0.10, 0.13), pause=rng.choice([0.0, 0.1])),
            _Waypoint(None, 0.0, 0.0, pause=rng.choice([0.1, 0.2]), wait_grip=True),
            _Waypoint(lift, 0.0, rng.uniform(0.13, 0.17)),
        ]
        if task == "red_in_bowl":
            bowl = obj["bowl"]
            bo = rng.uniform(-0.008, 0.008, 2)
            carry = np.array([bowl[0] + bo[0], bowl[1] + bo[1], lift[2] + rng.uniform(0.0, 0.03)])
            lower = np.array([carry[0], carry[1], BOWL_H + CUBE / 2 + rng.uniform(0.015, 0.03)])
            retreat = np.array([carry[0], carry[1], lower[2] + rng.uniform(0.06, 0.09)])
            wps += [
                _Waypoint(carry, 0.0, rng.uniform(0.24, 0.30)),
                _Waypoint(lower, 0.0, rng.uniform(0.12, 0.16), pause=rng.choice([0.0, 0.1])),
                _Waypoint(None, 1.0, 0.0, pause=0.1, wait_grip=True),
                _Waypoint(retreat, 1.0, rng.uniform(0.15, 0.2)),
            ]
        else:
            wps.append(_Waypoint(None, 0.0, 0.0, pause=0.2))   # hold the lifted cube briefly
        self.waypoints = wps
        self.index = 0
        self._wait = 0.0
        self.done = False
        self.steps = 0

    @property
    def phase(self) -> str:
        if getattr(self.workcell, "physics", False):
            return "done" if self.done else self.waypoints[min(self.index, len(self.waypoints) - 1)].name
        names = ["approach", "descend", "close", "lift"] + (
            ["carry", "lower", "open", "retreat"] if len(self.waypoints) > 5 else ["hold"])
        return "done" if self.done else names[min(self.index, len(names) - 1)]

    def act(self, qpos: np.ndarray) -> np.ndarray:
        """Absolute 8-D joint target for the next control tick, given the measured joints."""
        q = np.asarray(qpos, dtype=float).reshape(-1)
        if self.workcell.episode != self._episode:
            self.reset()
        self.steps += 1
        if getattr(self.workcell, "physics", False):
            if self._detour:          # the deliberate mistake, then the recovery from wherever it left the arm
                self.perturbing = True
                out = self._follow(q)
                if self.done or self.steps >= PERTURB_STEPS:
                    self._detour = False
                    steps = self.steps
                    self._plan()
                    self.steps = steps
                return out
            self.perturbing = False
            if not self.done and self._retries < 2 and self._physics_failed(q):
                self._retries += 1
                steps = self.steps
                self._plan()
                self.steps = steps
            return self._follow(q)
        # missed the cube (e.g. someone else was driving): go back and try again from here
        wanted = "blue_cube" if self.workcell.task == "pick_blue" else "red_cube"
        if (not self.done and self.index == 3 and self._retries < 2 and self.waypoints[3].pos is not None
                and self.workcell.grasped() != wanted and q[7] < HOLD_FRACTION - 0.05):
            self._retries += 1
            steps = self.steps
            self._plan()
            self.steps = steps
        return self._follow(q)

    def _physics_failed(self, q: np.ndarray) -> bool:
        """Physics sim: the object slipped out during the lift/carry, or the push missed the spot."""
        wc = self.workcell
        wp = self.waypoints[min(self.index, len(self.waypoints) - 1)]
        target = wc.scene.target.name
        if wp.name in ("lift", "carry", "lower"):
            lifted = kin.fk(q)[2, 3] - self._grasp_z > 0.02 or wp.name != "lift"
            return lifted and wc.grasped() != target
        if wp.name == "check":
            spot = wc.objects()["spot"]
            return float(np.linalg.norm(wc.objects()[target][:2] - spot[:2])) > 0.015
        return False

    def _follow(self, q: np.ndarray) -> np.ndarray:
        if self.done or self.index >= len(self.waypoints):
            self.done = True
            return self._hold(q)
        wp = self.waypoints[self.index]
        if wp.rot is not None:
            self.rot = wp.rot
        grip = wp.grip
        if wp.pos is None:
            target = self._hold(q)
            target[7] = grip
            if getattr(self.workcell, "physics", False):
                stalled = self._prev_grip is not None and abs(q[7] - self._prev_grip) < 0.004
                reached = not wp.wait_grip or abs(q[7] - grip) < 0.03 or (grip < 0.5 and stalled)
                if wp.name == "close":
                    self._grasp_z = kin.fk(q)[2, 3]
            else:
                reached = (not wp.wait_grip or (abs(q[7] - grip) < 0.03 if grip > 0.5
                                                else q[7] <= HOLD_FRACTION + 0.02))
            self._prev_grip = q[7]
        else:
            tcp = kin.fk(q)[:3, 3]
            d = wp.pos - tcp
            dist = float(np.linalg.norm(d))
            # physics servos lag ~50 ms behind their setpoint: at fast control rates aim that far
            # ahead so the arm still moves at wp.speed (the kinematic sim follows within a tick)
            horizon = max(self.dt, 0.05) if getattr(self.workcell, "physics", False) else self.dt
            step = min(wp.speed * horizon, dist)
            p_next = tcp + (d / dist * step if dist > 1e-9 else 0.0)
            target = self._ik(p_next, q)
            target[7] = grip
            reached = dist <= max(0.003, 0.25 * wp.speed * self.dt)
        if reached:
            self._wait += self.dt
            if self._wait >= wp.pause - 1e-9:
                self.index += 1
                self._wait = 0.0
                if self.index >= len(self.waypoints):
                    self.done = True
        return target

    def _hold(self, q: np.ndarray) -> np.ndarray:
        """Stay where the arm is (gripper target set by the caller)."""
        return q.copy()

    def _ik(self, p: np.ndarray, q: np.ndarray) -> np.ndarray:
        try:
            q7 = kin.ik(p, self.rot, q_init=q[:7], restarts=0, max_iter=60, tol_pos=5e-4)
        except kin.IKError:
            q7 = q[:7].copy()
        lim = self.workcell.max_speed[:7] * self.dt * 0.98
        q7 = q[:7] + np.clip(q7 - q[:7], -lim, lim)
        out = np.empty(8)
        out[:7] = np.clip(q7, self.workcell.lower[:7], self.workcell.upper[:7])
        out[7] = q[7]
        return out


GRASP_CLEAR = 0.012     # m between an open fingertip and anything else for a grasp yaw to be usable
CUBE_SLACK = 0.5        # rad a cube may sit off the fingers' axis and still be squared up by them as they close
YAW_STEP = np.pi / 36   # rad between the tool yaws tried where the shape allows a range
_YAW_GRID = YAW_STEP * np.arange(-18, 18)      # -90 .. 85 degrees, 0 exactly


def _grasp_yaw(spec, yaw: float, p: np.ndarray, obstacles: list[tuple[np.ndarray, float]]) -> float:
    """Tool yaw for the grasp: of the yaws the shape allows whose open fingers keep GRASP_CLEAR from other
    things, the one with the least wrist rotation (none clear: the one that keeps farthest).

    The yaws allowed: any for a cylinder; for a cube any within CUBE_SLACK of its faces (the closing
    fingers square it up; the scenes place objects within +-CUBE_SLACK, so yaw 0 always qualifies); for a
    prism or an oblong block only the yaws across its flats (its narrow side). So the wrist turns for a
    seen object only when a neighbour (the bowl's wall, another object) is in the way, and then by the least
    turn that clears it: a function of where things are, which a policy's keypoints carry. Demos that
    turned to every cube's own yaw (+-28 degrees, which 96-px keypoints do not carry) taught a regression
    policy the median, no turn at all, even where the bowl needed one (docs/policy_results.md); demos whose
    yaw jumps between symmetric choices (+90 and -90 are the same grasp, far apart in joint space) teach
    their average, which misses."""
    if spec.kind == "cylinder":
        cands = _YAW_GRID
    elif spec.kind == "box" and spec.size[0] == spec.size[1]:
        off = (_YAW_GRID - yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4      # from the nearest face-aligned yaw
        cands = _YAW_GRID[np.abs(off) <= CUBE_SLACK + 1e-9]
    else:
        period = np.pi / 3 if spec.kind == "prism" else np.pi
        base = yaw + (np.pi / 2 if spec.kind == "box" and spec.size[0] < spec.size[1] else 0.0)
        cands = [base + k * period for k in range(int(round(np.pi / period)))]
    scored = []
    for y in cands:
        y = float((y + np.pi / 2) % np.pi - np.pi / 2)
        axis = np.array([np.sin(y), -np.cos(y)])      # tool y: the fingers' closing axis
        tips = [p[:2] + axis * 0.058, p[:2] - axis * 0.058]
        scored.append((y, min([np.linalg.norm(t - c) - r for t in tips for c, r in obstacles] + [1.0])))
    clear = [c for c in scored if c[1] >= GRASP_CLEAR]
    if clear:
        return min(clear, key=lambda c: (round(abs(c[0]), 6), -c[1]))[0]   # a tie: the side with more room
    return max(scored, key=lambda c: c[1] - 0.01 * abs(c[0]))[0]


def _obstacles(wc, name: str, obj: dict) -> list[tuple[np.ndarray, float]]:
    """(xy, radius) of everything the open fingers around object `name` must keep clear of: the other
    objects' footprints and points along the bowl's and plate's rims."""
    obstacles = [(obj[n][:2], o.footprint) for n, o in wc.object_specs().items() if n != name]
    for fix, r in (("bowl", BOWL_R), ("plate", PLATE_R)):
        if fix in obj:
            obstacles += [(obj[fix][:2] + r * np.array([np.cos(a), np.sin(a)]), 0.005)
                          for a in np.linspace(0, 2 * np.pi, 16, endpoint=False)]
    return obstacles


def grasp_turned_by_neighbours(wc) -> bool:
    """Physics workcell, as the current scene was reset: whether the expert's grasp of the target turns away
    from a neighbour (the bowl's wall, another object): with nothing around it would take the object at the
    least turn its shape allows (none for a cube or a cylinder). A policy that never learnt that turn meets
    the neighbour with an open finger there."""
    if wc.scene.kind == "push":                 # pushed, not grasped
        return False
    spec = wc.scene.target
    obj = wc.objects()
    p, yaw = obj[spec.name], wc.object_yaws()[spec.name]
    return _grasp_yaw(spec, yaw, p, _obstacles(wc, spec.name, obj)) != _grasp_yaw(spec, yaw, p, [])


def _extent_along(spec, yaw: float, d: np.ndarray) -> float:
    """Half extent of the object's footprint along the table direction d."""
    if spec.kind != "box":
        return spec.size[0]
    c, s = np.cos(yaw), np.sin(yaw)
    return abs(spec.size[0] * (c * d[0] + s * d[1])) + abs(spec.size[1] * (-s * d[0] + c * d[1]))


def plan_physics(wc, rng: np.random.Generator, q: np.ndarray) -> list[_Waypoint]:
    """Waypoints for the physics workcell's scene: slow approach, force grasp, settle."""
    sc = wc.scene
    obj = wc.objects()
    spec = sc.target
    p = obj[spec.name]
    yaw = wc.object_yaws()[spec.name]
    hh = spec.half_height
    tcp_z = kin.fk(q)[2, 3]
    v = rng.uniform(0.17, 0.22)
    safe = 0.15
    if sc.kind == "push":
        spot = obj["spot"]
        d = spot[:2] - p[:2]
        d = d / max(np.linalg.norm(d), 1e-9)
        rot = kin.rot_down(float((np.arctan2(d[1], d[0]) + np.pi / 2) % np.pi - np.pi / 2))
        ext = _extent_along(spec, yaw, d) + 0.011
        start = np.r_[p[:2] - d * (ext + 0.025), 0.022]
        end = np.r_[spot[:2] - d * (ext + 0.002), 0.022]
        return [
            _Waypoint(np.r_[start[:2], max(tcp_z, 0.10)], 0.0, v, rot=rot, name="approach"),
            _Waypoint(start, 0.0, rng.uniform(0.08, 0.10), pause=0.1, rot=rot, name="descend"),
            _Waypoint(end, 0.0, rng.uniform(0.04, 0.06), pause=0.3, rot=rot, name="push"),
            _Waypoint(None, 0.0, 0.0, pause=0.1, rot=rot, name="check"),
            _Waypoint(np.r_[end[:2] - d * 0.02, 0.10], 0.0, 0.12, pause=0.2, rot=rot, name="retreat"),
        ]
    rot = kin.rot_down(_grasp_yaw(spec, yaw, p, _obstacles(wc, spec.name, obj)))
    off = rng.uniform(-0.003, 0.003, 2)
    grasp = np.array([p[0] + off[0], p[1] + off[1], max(p[2], 0.018) + rng.uniform(-0.002, 0.002)])
    above = np.r_[grasp[:2], max(grasp[2] + rng.uniform(0.08, 0.11), min(tcp_z, 0.2))]
    wps = [
        _Waypoint(above, 1.0, v, pause=0.1, rot=rot, name="approach"),
        _Waypoint(grasp, 1.0, rng.uniform(0.07, 0.09), pause=0.1, rot=rot, name="descend"),
        _Waypoint(None, 0.0, 0.0, pause=rng.choice([0.3, 0.4]), wait_grip=True, rot=rot, name="close"),
        _Waypoint(np.r_[grasp[:2], grasp[2] + rng.uniform(0.10, 0.12)], 0.0, rng.uniform(0.09, 0.11),
                  rot=rot, name="lift"),
    ]
    if sc.kind == "pick":
        return wps + [_Waypoint(None, 0.0, 0.0, pause=0.3, name="hold")]
    if sc.kind == "place_bowl":
        dest, z = obj["bowl"], BOWL_FLOOR + hh + rng.uniform(0.015, 0.025)
        jitter = 0.008
    elif sc.kind == "place_plate":
        dest, z = obj["plate"], PLATE_H + hh + rng.uniform(0.008, 0.014)
        jitter = 0.015
    else:  # stack
        dest = obj[sc.support.name]
        z = dest[2] + sc.support.half_height + hh + rng.uniform(0.006, 0.010)
        jitter = 0.002
    do = rng.uniform(-jitter, jitter, 2)
    carry = np.r_[dest[:2] + do, max(safe, z + 0.06)]
    lower = np.r_[carry[:2], z]
    return wps + [
        _Waypoint(carry, 0.0, rng.uniform(0.20, 0.25), pause=0.1, name="carry"),
        _Waypoint(lower, 0.0, rng.uniform(0.06, 0.08), pause=0.2, name="lower"),
        _Waypoint(None, 1.0, 0.0, pause=0.2, wait_grip=True, name="open"),
        _Waypoint(lower + [0, 0, rng.uniform(0.07, 0.09)], 1.0, rng.uniform(0.10, 0.14), name="retreat"),
        _Waypoint(None, 1.0, 0.0, pause=0.5, name="settle"),
    ]


def plan_detour(wc, rng: np.random.Generator, q: np.ndarray) -> list[_Waypoint]:
    """The perturbation's waypoints: above a point DETOUR_RADIUS from the target in a random direction, then
    down to 0-6 cm above grasp height, gripper open; the expert's real plan starts from where this ends."""
    p = wc.objects()[wc.scene.target.name]
    gz = max(p[2], 0.018)
    a = rng.uniform(0.0, 2 * np.pi)
    off = p[:2] + rng.uniform(*DETOUR_RADIUS) * np.array([np.cos(a), np.sin(a)])
    rot = kin.rot_down(float(rng.uniform(-np.pi / 4, np.pi / 4)))
    tcp_z = kin.fk(q)[2, 3]
    return [
        _Waypoint(np.r_[off, max(gz + rng.uniform(0.08, 0.11), min(tcp_z, 0.2))], 1.0, rng.uniform(0.17, 0.22),
                  rot=rot, name="perturb"),
        _Waypoint(np.r_[off, gz + rng.uniform(0.0, 0.06)], 1.0, rng.uniform(0.07, 0.09),
                  pause=float(rng.choice([0.0, 0.1, 0.2])), rot=rot, name="perturb"),
    ]


def run_episode(workcell: Workcell, expert: ScriptedExpert, max_steps: int = 200,
                seed: int | None = None, task: str | None = None) -> tuple[bool, int]:
    """Reset, run the expert until done (or max_steps); returns (success, steps)."""
    workcell.reset(seed=seed, task=task)
    expert.reset()
    for i in range(max_steps):
        workcell.set_target(expert.act(workcell.qpos()))
        workcell.step(expert.dt)
        if expert.done:
            return workcell.success(), i + 1
    return workcell.success(), max_steps
