"""Human-in-the-loop command sources (issue 11), on the CommandSource protocol of sources.py:

  LeaderArmSource    a hand-moved leader arm drives the follower joint for joint, with a safe start
                     (refuse beyond max_start_distance, GELLO's 0.8 rad, naming the joint; else ramp
                     in slowly) and hold + message when the leader is unplugged
  CartesianPadSource the sticks drive the end effector (x, y, z, yaw; roll/pitch where bound) through
                     damped-least-squares IK on the profile's [kinematics] chain, base or tool frame,
                     inside workspace bounds
  TakeoverSource     a policy (or any autonomous source) that the operator can take over (a button,
                     a stick past a threshold, moving the leader, the API) and hand back; both
                     handovers start from the present state, so the safety layer's step limit is the
                     only bound ever needed. Reports per tick `intervention`, `active` (who produced
                     the action) and the policy's `uncertainty`; above `ask_threshold` it pauses and
                     asks the operator to take over.

Sources run inside the control tick: no disk, no network, bounded serial reads only.
"""
from __future__ import annotations

import math

import numpy as np

from teleop_app.kinematics import SerialChain, rotation_error, rotvec_matrix
from teleop_app.policy.uncertainty import chunk_disagreement
from teleop_app.sources import BaseSource, TickContext


def _gripper_from_pad(ctx: TickContext, current: float) -> float:
    """The gripper target from the pad (buttons / triggers), as the joint mode does."""
    cmd, inp = ctx.pad_cmd, ctx.inputs
    if inp.gripper is None:
        inp.gripper = float(current)
    if cmd is not None:
        if cmd.gripper is not None:
            inp.gripper = cmd.gripper
        elif cmd.joint_velocity[-1]:
            g = ctx.profile.gripper
            inp.gripper = float(np.clip(inp.gripper + cmd.joint_velocity[-1] * ctx.period, g.lower, g.upper))
    return inp.gripper


# ==================================================================== leader arm
class LeaderArmSource(BaseSource):
    """Follow a leader arm (drivers.leader.LeaderArm, connected, torque off).

    far = "refuse": while any joint of the leader is more than `max_start_distance` rad from the
    follower, hold and say which joint and how far (the operator moves the leader to the follower);
    within it, ramp in at `ramp_speed` x max joint speed until the two meet, then follow directly.
    far = "ramp": ramp in from any distance. A leader that stops answering holds the follower at once;
    after `lost_after` failed reads in a row it counts as unplugged (message), is retried every
    `retry_s` seconds, and when it is back the safe start runs again.
    """
    name = "leader"
    uses_pad = False

    def __init__(self, leader, profile, *, far: str = "refuse", max_start_distance: float = 0.8,
                 ramp_speed: float = 0.25, retry_s: float = 1.0, lost_after: int = 2):
        if far not in ("refuse", "ramp"):
            raise ValueError(f"far must be 'refuse' or 'ramp', got {far!r}")
        self.leader, self.far = leader, far
        self.max_start_distance, self.ramp_speed, self.retry_s = float(max_start_distance), ramp_speed, retry_s
        self.lost_after = max(1, int(lost_after))     # failed reads in a row before the leader counts as gone
        self._fails = 0
        names = list(leader.joint_names)
        want = profile.joint_names
        if len(names) != len(want):
            raise ValueError(f"leader has {len(names)} joints {names}, follower '{profile.name}' has "
                             f"{len(want)} {want}: use the leader profile made for this follower")
        missing = [n for n in want[:-1] if n not in names[:-1]]
        if missing:
            raise ValueError(f"leader joints {names} lack follower joint(s) {missing}: the leader profile "
                             f"must use the follower's joint names")
        self._order = [names.index(n) for n in want[:-1]] + [len(names) - 1]   # gripper <- handle
        self.joint_names = want
        self.state = "idle"          # idle | refused | ramping | following | lost
        self.last_leader: np.ndarray | None = None
        self._lost_at = 0.0
        self._said = ("", 0.0)

    def _say_once(self, ctx: TickContext, key: str, msg: str, every: float = 2.0) -> None:
        k, t = self._said
        if key != k or ctx.now - t >= every:
            self._said = (key, ctx.now)
            ctx.say(msg)

    def start(self, ctx):
        self.state = "idle"

    def stop(self, ctx):
        self.state = "idle"

    def status(self) -> dict:
        """Plain data for Status: idle | refused | ramping | following | lost."""
        return {"source": self.name, "leader": self.state, "intervention": False}

    def read(self) -> np.ndarray:
        """Leader reading in follower joint order (raises when unplugged)."""
        return np.asarray(self.leader.read(), float)[self._order]

    def distance(self, q_leader: np.ndarray, q_follower: np.ndarray) -> tuple[str, float]:
        """Worst arm joint (name, rad) between leader and follower."""
        d = np.abs(q_leader[:-1] - np.asarray(q_follower, float)[:-1])
        j = int(np.argmax(d))
        return self.joint_names[j], float(d[j])

    def command(self, ctx):
        from drivers.leader import UNPLUGGED
        if self.state == "lost":
            if ctx.now - self._lost_at < self.retry_s:
                return None
            self._lost_at = ctx.now
            if not self.leader.reconnect():
                return None
            ctx.say("leader arm answers again: matching it to the follower before it drives")
            self.state = "idle"
        try:
            q_l = self.read()
        except UNPLUGGED as e:
            self._fails += 1                 # hold this tick; one lost reply is a glitch, not an unplug
            if self._fails >= self.lost_after:
                self.state, self._lost_at, self._fails = "lost", ctx.now, 0
                ctx.say(f"leader arm unplugged or silent ({e}): holding the follower")
            return None
        self._fails = 0
        self.last_leader = q_l
        lo, hi = ctx.profile.lower(), ctx.profile.upper()
        goal = np.clip(q_l, lo, hi)
        if self.state == "following":
            return goal
        name, dist = self.distance(goal, ctx.q)
        if dist > self.max_start_distance and self.far == "refuse":
            self.state = "refused"
            self._say_once(ctx, f"refuse:{name}",
                           f"leader arm is {dist:.2f} rad from the follower at joint '{name}' (limit "
                           f"{self.max_start_distance:g} rad): move the leader to the follower's pose; "
                           "it takes over when close enough")
            return None
        if self.state != "ramping":
            ctx.say(f"leader arm within {dist:.2f} rad ('{name}'): ramping in")
        self.state = "ramping"
        base = ctx.base
        step = ctx.profile.max_speed() * ctx.period * self.ramp_speed
        t = base + np.clip(goal - base, -step, step)
        if np.all(np.abs(goal - base) <= step):
            self.state = "following"
            ctx.say("leader arm engaged: the follower tracks it")
        return t


# ==================================================================== Cartesian pad
def default_bounds(profile, chain: SerialChain) -> dict[str, list[float]]:
    """The profile's workspace if it has one, else a box of the chain's reach above the base."""
    if profile.workspace:
        return {k: list(v) for k, v in profile.workspace.items()}
    reach = sum(float(np.linalg.norm(j.origin)) for j in chain.joints) + float(np.linalg.norm(chain.tool[:3, 3]))
    return {"x": [-reach, reach], "y": [-reach, reach], "z": [0.0, reach]}


class CartesianPadSource(BaseSource):
    """The sticks steer the end effector. Each tick the pad's twist (mapping.cartesian_twist, in the
    base or the tool frame) moves a desired TCP pose, clamped to the workspace bounds; a few DLS
    iterations warm-started at the last command turn it into a joint target. An arm with fewer than
    six joints keeps orientation only loosely (weighted rows). The pose never winds up: when the
    arm cannot follow (limits, singularity) the desired pose is pulled back to what it reached."""
    name = "cartesian"
    uses_pad = True

    def __init__(self, profile, mapping, *, frame: str = "base", bounds: dict | None = None,
                 iterations: int = 3, damping: float = 0.02):
        chain = profile.kinematics
        if chain is None:
            raise ValueError(f"profile '{profile.name}' has no [kinematics] chain: Cartesian mode needs one "
                             "(see teleop_app/profiles/sim7.toml)")
        if frame not in ("base", "tool"):
            raise ValueError(f"frame must be 'base' or 'tool', got {frame!r}")
        self.chain, self.mapping, self.frame = chain, mapping, frame
        self.bounds = bounds if bounds is not None else default_bounds(profile, chain)
        self.iterations, self.damping = int(iterations), float(damping)
        self.n = chain.n
        rot_w = 1.0 if self.n >= 6 else 0.3
        self.weights = np.array([1.0, 1.0, 1.0, rot_w, rot_w, rot_w])
        self.goal: np.ndarray | None = None       # desired TCP pose (4x4)
        self.twist = np.zeros(6)

    def start(self, ctx):
        self.goal = self.chain.fk(ctx.base[:self.n])

    def status(self) -> dict:
        goal = None if self.goal is None else [float(x) for x in self.goal[:3, 3]]
        return {"source": self.name, "frame": self.frame, "intervention": False, "goal_xyz": goal}

    def toggle_frame(self) -> str:
        self.frame = "tool" if self.frame == "base" else "base"
        return self.frame

    def _clamp(self, p: np.ndarray) -> np.ndarray:
        p = p.copy()
        for i, ax in enumerate("xyz"):
            b = self.bounds.get(ax)
            if b:
                p[i] = min(max(p[i], b[0]), b[1])
        return p

    def command(self, ctx):
        from teleop_app.mapping import cartesian_twist
        if self.goal is None:
            self.start(ctx)
        if ctx.pad_cmd is not None and "toggle_frame" in ctx.pad_cmd.events:
            ctx.say(f"Cartesian frame: {self.toggle_frame()}")
        base = ctx.base
        q = base[:self.n].copy()
        tw = cartesian_twist(self.mapping, ctx.pad)
        if self.frame == "tool":
            r = self.goal[:3, :3]
            tw = np.concatenate([r @ tw[:3], r @ tw[3:]])
        self.twist = tw
        out = base.copy()
        out[-1] = _gripper_from_pad(ctx, base[-1])
        if not np.any(tw):
            return out                           # sticks at rest: hold the arm, gripper may move
        goal = self.goal.copy()
        goal[:3, 3] = self._clamp(goal[:3, 3] + tw[:3] * ctx.period)
        goal[:3, :3] = rotvec_matrix(tw[3:] * ctx.period) @ goal[:3, :3]
        lo, hi = ctx.profile.lower()[:self.n], ctx.profile.upper()[:self.n]
        for _ in range(self.iterations):
            t = self.chain.fk(q)
            e = np.concatenate([goal[:3, 3] - t[:3, 3], rotation_error(goal[:3, :3], t[:3, :3])])
            q = np.clip(q + self.chain.dls_step(q, e, damping=self.damping, weights=self.weights), lo, hi)
        reached = self.chain.fk(q)
        if (np.linalg.norm(goal[:3, 3] - reached[:3, 3]) > 0.01
                or np.linalg.norm(rotation_error(goal[:3, :3], reached[:3, :3])) > 0.1 * self.weights[3] + 0.05):
            goal = reached                       # cannot follow here: no wind-up
        if self.n < 6:
            goal[:3, :3] = reached[:3, :3]       # orientation the arm can hold, not the one asked for
        self.goal = goal
        out[:self.n] = q
        return out


# ==================================================================== takeover
class TakeoverSource(BaseSource):
    """An autonomous source (the policy) the operator can take over and hand back.

    Take over: the mapping's "takeover" button, any stick past `stick_threshold`, a leader arm moved
    more than `leader_threshold` rad from where it was when the policy started, or take_over().
    Hand back: the button again or hand_back(); the policy restarts from the present state
    (reset: no buffered chunk of the old state is used) and re-observes. While the policy runs its
    `uncertainty` (chunk disagreement) is tracked; `ask_threshold` exceeded for `ask_ticks` ticks
    pauses the policy (hold) and asks for help until the operator takes over or hands back.
    `trigger(ctx, action)` / `release(ctx, action)`: optional callables for a simulated operator
    (DAgger) deciding to take over / hand back from the policy's proposed action.
    """
    record_mode = "policy"
    uses_pad = True

    def __init__(self, auto, human, *, stick_threshold: float | None = 0.5, leader_threshold: float = 0.15,
                 ask_threshold: float | None = None, ask_ticks: int = 3, trigger=None, release=None,
                 keep_auto_running: bool = False):
        self.auto, self.human = auto, human
        self.stick_threshold = stick_threshold
        self.leader_threshold = float(leader_threshold)
        self.ask_threshold, self.ask_ticks = ask_threshold, int(ask_ticks)
        self.trigger, self.release = trigger, release
        self.keep_auto_running = keep_auto_running    # query the policy while the human drives (DAgger)
        self.name = getattr(auto, "name", "policy")
        self.intervention = False
        self.asking = False
        self.active = self.name
        self.uncertainty = float("nan")
        self.proposal: np.ndarray | None = None       # the policy's action this tick (if queried)
        self.takeovers = 0
        self._want: str | None = None                 # "take" | "give", from any thread
        self._leader_ref: np.ndarray | None = None
        self._leader_retry_at = 0.0
        self._high = 0

    # ---- any thread
    def take_over(self) -> None:
        self._want = "take"

    def hand_back(self) -> None:
        self._want = "give"

    # ---- tick
    def start(self, ctx):
        self.intervention = self.asking = False
        self.active = self.name
        self.auto.start(ctx)
        self._leader_ref = None

    def reset(self, ctx):
        if self.intervention:
            self.human.stop(ctx)
        self.start(ctx)

    def stop(self, ctx):
        if self.intervention:
            self.human.stop(ctx)
        self.auto.stop(ctx)

    def _stick_past(self, ctx) -> bool:
        if self.stick_threshold is None or not ctx.pad.connected:
            return False
        sticks = [a for i, a in enumerate(ctx.pad.axes) if i in (0, 1, 3, 4)]
        return bool(sticks) and max(abs(a) for a in sticks) > self.stick_threshold

    def _leader_moved(self, ctx) -> bool:
        read = getattr(self.human, "read", None)
        if read is None or not hasattr(self.human, "leader") or ctx.now < self._leader_retry_at:
            return False
        try:
            q = read()
        except Exception:  # noqa: BLE001 - an unplugged leader cannot take over; do not stall every tick
            self._leader_retry_at = ctx.now + 1.0
            return False
        if self._leader_ref is None:
            self._leader_ref = q
            return False
        return float(np.max(np.abs(q[:-1] - self._leader_ref[:-1]))) > self.leader_threshold

    def _take(self, ctx, why: str) -> None:
        self.intervention, self.asking = True, False
        self.takeovers += 1
        ctx.inputs.gripper = float(ctx.base[-1])      # the gripper stays as the policy left it
        self.human.start(ctx)
        ctx.say(f"operator took over ({why})")

    def _give(self, ctx) -> None:
        self.human.stop(ctx)
        self.intervention, self.asking = False, False
        self._leader_ref = None
        self._high = 0
        self._restart_auto(ctx)
        ctx.say("handed back to the policy (restarts from the present state)")

    def command(self, ctx):
        events = ctx.pad_cmd.events if ctx.pad_cmd is not None else []
        want, self._want = self._want, None
        pressed = "takeover" in events
        if self.intervention:
            proposal = self._query_auto(ctx) if self.keep_auto_running else None
            if want == "give" or pressed or (self.release is not None and self.release(ctx, proposal)):
                self._give(ctx)
            else:
                self.active = self.human.name
                return self.human.command(ctx)
        elif want == "take" or (pressed and not self.asking) or self._stick_past(ctx) or self._leader_moved(ctx):
            self._take(ctx, "button" if pressed or want else "moved")
            self.active = self.human.name
            return self.human.command(ctx)
        elif self.asking:
            if pressed or want == "give":
                self.asking, self._high = False, 0
                self._restart_auto(ctx)
                ctx.say("policy resumed without help")
            else:
                self.active = "hold"
                return None
        a = self._query_auto(ctx)
        if self.trigger is not None and self.trigger(ctx, a):
            self._take(ctx, "drift")
            self.active = self.human.name
            return self.human.command(ctx)
        if self.ask_threshold is not None and math.isfinite(self.uncertainty):
            self._high = self._high + 1 if self.uncertainty > self.ask_threshold else 0
            if self._high >= self.ask_ticks:
                self.asking = True
                ctx.say(f"policy is uncertain ({self.uncertainty:.3f} rad chunk spread): take over "
                        "(pad/leader) or press take over to let it continue")
                self.active = "hold"
                return None
        self.active = self.name
        return a

    def _restart_auto(self, ctx) -> None:
        """From the present state: drop buffered chunks (PolicyRunner.reset) and re-observe next."""
        (getattr(self.auto, "reset", None) or self.auto.start)(ctx)

    def _query_auto(self, ctx):
        a = self.auto.command(ctx)
        self.proposal = None if a is None else np.asarray(a, float)
        runner = getattr(self.auto, "runner", None)
        self.uncertainty = chunk_disagreement(runner) if runner is not None else float("nan")
        return a

    def status(self) -> dict:
        """Plain data for Status / the policy tab."""
        return {"intervention": bool(self.intervention), "source": self.active, "asking": bool(self.asking),
                "uncertainty": float(self.uncertainty), "takeovers": int(self.takeovers)}



# ==================================================================== session wiring
def attach_leader(session, spec: str = "sim", *, profile: str | None = None, calibration: str | None = None,
                  far: str = "refuse"):
    """Open a leader arm for `session` (connected): spec "sim" = a simulated leader on its own pty,
    starting at the follower's present pose (session.sim_leader moves it); else the leader's serial
    port, with `profile` (e.g. "koch_leader") and its calibration JSON. Enables Mode.LEADER and
    makes takeovers use the leader. Returns the LeaderArm."""
    from drivers.bus.arm import ServoArmConfig
    from drivers.leader import LeaderArm, LeaderCalibration, SimLeaderArm
    from teleop_app.profiles import load_profile
    fol = session.profile
    grip = (fol.gripper.lower, fol.gripper.upper)
    if spec == "sim":
        q0 = session.devices.robot.get_observation().position
        sim = SimLeaderArm(fol.dof, q0=q0).start()
        leader = sim.leader(fol.joint_names, gripper_range=grip)
        session.sim_leader = sim
        session.devices.closers.append(sim.stop)
        session.leader_far = far
    else:
        lp = load_profile(profile or f"{fol.name}_leader")
        want = lp.leader.get("follower")
        if want and want != fol.name:
            raise ValueError(f"leader profile '{lp.name}' is made for follower '{want}', not '{fol.name}'")
        if calibration is None:
            raise ValueError(f"a leader arm needs its calibration file (--leader-calibration): record it "
                             f"with the leader held in the follower's home pose")
        cal = LeaderCalibration.load(calibration)
        cfg = ServoArmConfig(protocol=lp.bus.kind, port=spec, baud=lp.bus.baud,
                             ids=[j.servo_id for j in lp.all_joints], joint_names=lp.joint_names,
                             timeout_s=0.02, retries=2, read_velocity=False)
        leader = LeaderArm.from_config(cfg, cal, gripper_range=grip)
        session.leader_far = far
        session.leader_max_start = lp.leader.get("max_start_distance", 0.8)
    leader.connect()
    session.devices.closers.insert(0, leader.disconnect)
    session.leader = leader
    return leader


def _leader_source(s):
    leader = getattr(s, "leader", None)
    if leader is None:
        raise ValueError("no leader arm attached: start with --leader sim|PORT (attach_leader)")
    return LeaderArmSource(leader, s.profile, far=getattr(s, "leader_far", "refuse"),
                           max_start_distance=getattr(s, "leader_max_start", 0.8))


def _takeover_source(s):
    if getattr(s, "leader", None) is not None:
        human = _leader_source(s)
    elif getattr(s, "takeover_cartesian", False):
        human = CartesianPadSource(s.profile, s.mapping)
    else:
        from teleop_app.sources import GamepadSource
        human = GamepadSource()
    return TakeoverSource(s._policy_source(), human, ask_threshold=getattr(s, "ask_threshold", None))


def register_modes(register) -> None:
    """Session registry: Mode.LEADER, Mode.CARTESIAN, Mode.TAKEOVER (policy + operator takeover)."""
    register("leader", _leader_source)
    register("cartesian", lambda s: CartesianPadSource(s.profile, s.mapping))
    register("takeover", _takeover_source)
