"""Command sources: one per control mode. Each tick the pipeline asks the active source for a raw
joint target (or None = hold); the safety layer, the driver and the recorder do the rest.

    class CommandSource(Protocol):
        name: str                                  # "gamepad", "kinesthetic", "scripted", "policy", ...
        record_mode: str                           # episode attr `mode`: teleop|kinesthetic|scripted|policy
        torque_off: bool                           # True: nothing is commanded (the hand moves the arm)
        def start(self, ctx) -> None               # bumpless: begin from the present state ctx.obs.position
        def command(self, ctx) -> np.ndarray | None
        def stop(self, ctx) -> None
        def reset(self, ctx) -> None               # optional: new episode / new sim scene

Sources run in the control thread, inside the tick: they must not block (no disk, no network; a policy
source uses an asynchronous runner). They talk back through the TickContext: `ctx.say(text)` and
`ctx.request(action, *args)` ("stop_episode", "stop_policy", "replay_finished", "mode").
Switching modes swaps the source (Session's registry maps Mode -> factory(session) -> source).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from drivers.interfaces import Frame, GamepadState, JointState
from recorder.schema import PERTURBATION


@dataclass
class OperatorInputs:
    """Commands from scripts, sliders and GUI buttons; written by any thread as whole tuples (atomic
    under the GIL, no lock), read by the sources in the tick. Stale after `watchdog_s`."""
    ext_target: tuple[float, np.ndarray] | None = None     # (time, absolute joint target)
    jog: tuple[float, np.ndarray] | None = None            # (time, joint velocities rad/s)
    gripper: float | None = None                           # gripper target in profile units
    watchdog_s: float = 0.5
    _seen: float = 0.0

    def fresh_target(self, now: float) -> np.ndarray | None:
        t = self.ext_target
        return t[1].copy() if t is not None and now - t[0] <= self.watchdog_s else None

    def fresh_jog(self, now: float) -> np.ndarray | None:
        j = self.jog
        return j[1] if j is not None and now - j[0] <= self.watchdog_s else None

    def watchdog_tripped(self, now: float) -> bool:
        """True on the first tick after a command stream went stale (one trip per stream, not per tick)."""
        src = self.ext_target or self.jog
        if src is None or now - src[0] <= self.watchdog_s or src[0] == self._seen:
            return False
        self._seen = src[0]
        return True


@dataclass
class TickContext:
    """What a source sees in one tick. One object, refilled by the pipeline every tick."""
    obs: JointState | None = None
    frames: dict[str, Frame] = field(default_factory=dict)   # the ONE camera read of this tick
    pad: GamepadState = field(default_factory=lambda: GamepadState(connected=False))
    pad_cmd: object | None = None      # mapping.TeleopCommand of this tick, None where sticks do not drive
    now: float = 0.0
    period: float = 0.1
    profile: object | None = None
    target: np.ndarray | None = None   # last command sent (the base for incremental sources)
    workcell: object | None = None     # the sim world, or None on hardware
    robot: object | None = None
    instruction: str = ""
    recording: bool = False
    seed: int = 0                      # sim scene seed of the current episode
    inputs: OperatorInputs = field(default_factory=OperatorInputs)
    say: Callable[[str], None] = lambda msg: None
    request: Callable[..., None] = lambda action, *args: None
    rebase: Callable[[np.ndarray], None] = lambda q: None    # forget the last command: hold q from here

    @property
    def q(self) -> np.ndarray:
        return self.obs.position

    @property
    def base(self) -> np.ndarray:
        return self.target if self.target is not None else self.obs.position

    def images(self) -> dict[str, np.ndarray]:
        return {n: f.image for n, f in self.frames.items()}

    def policy_obs(self, cameras=None, strict: bool = False) -> dict:
        """The policy's observation: exactly the frames recorded in this tick."""
        if strict:
            from teleop_app.policy.base import PolicyError
            for n in cameras or ():
                if n not in self.frames:
                    raise PolicyError(f"camera '{n}' has no frame yet; check it is connected and streaming")
        return {"images": self.images(), "qpos": self.obs.position.copy(), "instruction": self.instruction,
                "timestamp": self.obs.timestamp}


@runtime_checkable
class CommandSource(Protocol):
    name: str
    record_mode: str
    torque_off: bool

    def start(self, ctx: TickContext) -> None: ...
    def command(self, ctx: TickContext) -> np.ndarray | None: ...
    def stop(self, ctx: TickContext) -> None: ...


class BaseSource:
    name = "external"
    record_mode = "teleop"
    torque_off = False
    uses_pad = False            # the pipeline maps the sticks for this source
    intervention = False        # F: a human is overriding an autonomous source this tick

    def start(self, ctx: TickContext) -> None:
        pass

    def command(self, ctx: TickContext) -> np.ndarray | None:
        return None

    def stop(self, ctx: TickContext) -> None:
        pass

    def reset(self, ctx: TickContext) -> None:
        pass


def _with_jog(t: np.ndarray, ctx: TickContext) -> np.ndarray:
    v = ctx.inputs.fresh_jog(ctx.now)
    return t if v is None else t + v * ctx.period


def pad_target(ctx: TickContext) -> np.ndarray | None:
    """Sticks as joint velocities integrated from the last command; gripper from the mapping."""
    cmd = ctx.pad_cmd
    if cmd is None:
        return None
    base = ctx.base
    inp = ctx.inputs
    t = base + cmd.joint_velocity * ctx.period
    if cmd.gripper is not None:
        inp.gripper = cmd.gripper
    elif inp.gripper is not None and cmd.joint_velocity[-1]:
        g = ctx.profile.gripper
        inp.gripper = float(np.clip(inp.gripper + cmd.joint_velocity[-1] * ctx.period, g.lower, g.upper))
    t[-1] = inp.gripper if inp.gripper is not None else base[-1]
    return _with_jog(t, ctx)


class HoldSource(BaseSource):
    """HOLD: keep position; absolute targets / jogs from the API or sliders; the sticks when touched."""
    name = "external"
    uses_pad = True

    def command(self, ctx):
        if ctx.pad_cmd is not None and np.any(ctx.pad_cmd.joint_velocity):
            return pad_target(ctx)
        t = ctx.inputs.fresh_target(ctx.now)
        if t is not None:
            return t
        if ctx.inputs.fresh_jog(ctx.now) is not None:
            return _with_jog(ctx.base.copy(), ctx)
        return None


class GamepadSource(BaseSource):
    name = "gamepad"
    uses_pad = True

    def command(self, ctx):
        return pad_target(ctx)


class KinestheticSource(BaseSource):
    """Torque off: the hand moves the arm; the recorded action is the next measured position."""
    name = "kinesthetic"
    record_mode = "kinesthetic"
    torque_off = True
    uses_pad = True

    def start(self, ctx):
        ctx.robot.set_torque(False)

    def stop(self, ctx):
        # Hold where the hand left the arm: target = measured, then torque on (no jump).
        q = ctx.robot.get_observation().position
        ctx.rebase(q)
        ctx.robot.send_action(q)
        ctx.robot.set_torque(True)

    def command(self, ctx):
        q = ctx.q
        cmd = ctx.pad_cmd
        if cmd is not None:
            if cmd.gripper is not None:
                ctx.inputs.gripper = cmd.gripper
            if np.any(cmd.joint_velocity) and ctx.workcell is not None:
                push = getattr(ctx.robot, "push", None) or ctx.workcell.push
                push(q + cmd.joint_velocity * ctx.period)        # the pad plays the operator's hand
        raw = q.copy()
        if ctx.inputs.gripper is not None:
            raw[-1] = ctx.inputs.gripper
        return raw


class ScriptedSource(BaseSource):
    """The sim's IK expert. `only_recording`: moves only while an episode records (the live session).
    perturb: the share of scenes (physics sim) where the expert first drives a deliberate detour and then
    recovers (drivers/sim/expert.py); the detour's steps are recorded with the action source
    PERTURBATION, which training does not imitate."""
    name = "scripted"
    record_mode = "scripted"

    def __init__(self, only_recording: bool = True, perturb: float = 0.0):
        self.only_recording = only_recording
        self.perturb = float(perturb)
        self.expert = None

    @property
    def done(self) -> bool:
        return self.expert is not None and self.expert.done

    @property
    def active(self) -> str | None:
        """What produced the last action, for the recorder (None: this source, by name)."""
        return PERTURBATION if self.expert is not None and self.expert.perturbing else None

    def start(self, ctx):
        if ctx.workcell is None:
            raise ValueError("scripted mode needs the simulated workcell (--robot sim or sim-serial)")
        self.reset(ctx)

    def reset(self, ctx):
        from drivers.sim import ScriptedExpert
        self.expert = ScriptedExpert(ctx.workcell, seed=ctx.seed, dt=ctx.period, perturb=self.perturb)

    def command(self, ctx):
        if self.expert is None or (self.only_recording and not ctx.recording):
            return None
        if self.only_recording and self.expert.done:
            ctx.request("stop_episode")
            return None
        return np.asarray(self.expert.act(ctx.q), float)


class PolicyStopped(Exception):
    """Raised by a PolicySource with on_error='raise' (sim evaluation): the episode ends, nothing sent."""

    def __init__(self, reason: str, nan: bool = False):
        super().__init__(reason)
        self.reason, self.nan = reason, nan


class _RepeatLast:
    """A chunk-1 policy seen as a chunk of `n` repeats of its action: run asynchronously, its newest
    prediction is then held until the next one arrives (instead of being dropped as already expired)."""

    def __init__(self, policy, n: int):
        self.inner, self.n = policy, int(n)
        self.meta = policy.meta

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def reset(self):
        self.inner.reset()

    def predict(self, obs):
        a = np.asarray(self.inner.predict(obs), float)
        return np.repeat(a[None] if a.ndim == 1 else a[-1:], self.n, axis=0)


def make_async(runner, period: float, horizon_s: float = 2.0):
    """Switch a PolicyRunner (or a wrapper with .runner) to asynchronous inference, so the loop never
    waits for predict(). Chunk-1 policies keep their newest action (replan every tick) for up to
    horizon_s, since an async result always arrives after the tick it was computed for."""
    inner = getattr(runner, "runner", runner)
    if not hasattr(inner, "async_"):
        return runner
    inner.async_ = True
    k = int(getattr(inner.policy.meta, "chunk_size", 1) or 1)
    if k == 1 and not isinstance(inner.policy, _RepeatLast):
        inner.policy = _RepeatLast(inner.policy, max(2, int(np.ceil(horizon_s / period))))
        if inner.chunk_mode in ("ensemble", "replan", "auto"):   # averaging repeats of old actions would lag
            inner.chunk_mode, inner.replan_every = "replan", 1
    return runner


class PolicySource(BaseSource):
    """A PolicyRunner per tick. Live sessions run it asynchronously: a late result = hold this tick.

    A failing policy (exception, NaN/out-of-range output) or one that gives no action for `stall_s`
    (slow, hanging or unreachable server) is STOPPED: on_error='hold' asks the session to go back to
    hold (a message, never an e-stop); on_error='raise' raises PolicyStopped before anything is sent.
    `budget` = n (Session.step_policy): after n actions the source asks for hold mode (single-stepping).
    """
    name = "policy"
    record_mode = "policy"

    def __init__(self, runner, on_error: str = "hold", stall_s: float | None = 2.0, strict_cameras=None):
        self.runner = runner
        self.on_error = on_error
        self.stall_s = stall_s
        self.strict_cameras = strict_cameras
        self.stopped: str | None = None
        self.budget: int | None = None
        self._last_ok = 0.0

    def start(self, ctx):
        self.reset(ctx)

    def reset(self, ctx):
        self.runner.reset()
        self.stopped = None
        self._last_ok = ctx.now

    def stop(self, ctx):
        self.runner.reset()

    def _fail(self, ctx, msg: str, nan: bool = False):
        self.stopped = msg
        if self.on_error == "raise":
            raise PolicyStopped(msg, nan)
        ctx.request("stop_policy", msg)
        return None

    def command(self, ctx):
        from teleop_app.policy.base import PolicyError
        from teleop_app.policy.runner import PolicyOutputError
        if self.stopped:
            return None
        if self.strict_cameras is None:
            cams = getattr(getattr(self.runner, "policy", None), "meta", None)
            if any(c not in ctx.frames for c in getattr(cams, "cameras", ()) or ()):
                return None             # a camera has no frame yet: hold (the stall timer still runs)
        try:
            obs = ctx.policy_obs(self.strict_cameras, strict=self.strict_cameras is not None)
            a = self.runner.act(obs, ctx.now)
        except PolicyOutputError as e:
            return self._fail(ctx, str(e), nan=True)
        except PolicyError as e:
            return self._fail(ctx, str(e))
        except Exception as e:  # noqa: BLE001 - any policy failure stops the policy, never the loop
            return self._fail(ctx, f"policy failed: {type(e).__name__}: {e}")
        if a is None:
            if self.stall_s is not None and ctx.now - self._last_ok > self.stall_s:
                return self._fail(ctx, f"policy gave no action for {self.stall_s:g} s (slow, hanging or "
                                       "unreachable)")
            return None
        self._last_ok = ctx.now
        if self.budget is not None:
            self.budget -= 1
            if self.budget <= 0:
                self.budget = None
                ctx.request("mode")         # stepped: this action is sent, then hold
        return a


class ReplaySource(BaseSource):
    """Plays a recorded episode's actions back, one per tick, through safety."""
    name = "replay"
    record_mode = "scripted"

    def __init__(self, actions, path: str = "", fps: float | None = None):
        self.actions = np.asarray(actions, float)
        self.path, self.fps = path, fps
        self.i = 0

    @property
    def progress(self) -> tuple[int, int]:
        return self.i, len(self.actions)

    def command(self, ctx):
        if self.i >= len(self.actions):
            ctx.request("replay_finished")
            return None
        self.i += 1
        return self.actions[self.i - 1]


class HomingSource(BaseSource):
    """Glide to `goal` at `speed` x max joint speed, then ctx.request('mode', then) (e.g. hold, replay)."""
    name = "homing"

    def __init__(self, goal, speed: float = 0.4, then=None, say_done: bool = True):
        self.goal = np.asarray(goal, float)
        self.speed = speed
        self.then = then
        self.say_done = say_done

    def command(self, ctx):
        base = ctx.base
        step = ctx.profile.max_speed() * ctx.period * self.speed
        t = base + np.clip(self.goal - base, -step, step)
        if np.allclose(t, self.goal, atol=1e-3) and np.allclose(ctx.q, self.goal, atol=2e-2):
            if self.say_done:
                ctx.say("home reached")
            ctx.request("mode", self.then)
        return t
