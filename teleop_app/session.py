"""The teleop session: one fixed-rate loop that reads the arm, decides a command from the active
mode (gamepad, kinesthetic, scripted, policy, replay, homing), passes it through the safety layer,
sends it, and hands the step to the recorder. The GUI and the CLI are views/drivers of this object.

Threads: the control loop owns the robot, gamepad and writer hand-off. Other threads (GUI, CLI)
only post commands (under `_lock`) and read `status` (an immutable snapshot swapped each tick).
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

import numpy as np

from drivers.interfaces import DeviceError, GamepadState
from teleop_app import __version__
from teleop_app.devices import Devices, fk_for, make_devices
from teleop_app.loop import LoopStats, RateLoop
from teleop_app.profiles import RobotProfile, load_profile
from teleop_app.safety import SafetyLayer
from teleop_app.workflow import State, Workflow, WorkflowConfig

log = logging.getLogger("teleop")


class Mode(str, Enum):
    HOLD = "hold"               # keep position; commands from the API/sliders only
    GAMEPAD = "gamepad"
    KINESTHETIC = "kinesthetic"
    SCRIPTED = "scripted"
    POLICY = "policy"
    REPLAY = "replay"
    HOMING = "homing"


class SessionError(RuntimeError):
    pass


@dataclass
class SessionConfig:
    profile: str = "sim7"
    robot: str = "sim"                 # sim | sim-serial | real
    port: str | None = None
    protocol: str = "dynamixel"        # sim-serial only: which servo protocol the pty speaks
    calibration: str | None = None
    fps: float | None = None           # default: the profile's
    cameras: list[str] | None = None   # default: all in the profile
    dataset: str = "data/default"
    mapping: str | None = None         # TOML; default mapping for the profile's dof
    use_gamepad: bool = True
    operator: str = ""
    seed: int = 0
    task: str = "pick_red"
    randomize: bool = False
    jpeg: bool = True
    watchdog_s: float = 0.5
    home_speed: float = 0.4            # fraction of max joint speed for "go home"
    realtime: bool = True              # False: sim steps once per tick (headless, faster than real time)
    workflow: WorkflowConfig = field(default_factory=WorkflowConfig)


@dataclass(frozen=True)
class Status:
    """Snapshot for views. Arrays are copies; never mutated after creation."""
    t: float = 0.0
    connected: bool = False
    mode: str = Mode.HOLD.value
    qpos: np.ndarray | None = None
    target: np.ndarray | None = None       # raw command of this tick
    sent: np.ndarray | None = None         # after safety
    torque: bool = True
    estopped: bool = False
    gamepad: GamepadState = field(default_factory=lambda: GamepadState(connected=False))
    group: str = ""
    loop: LoopStats | None = None
    workflow: str = State.IDLE.value
    time_left: float = 0.0
    kept: int = 0
    target_episodes: int = 0
    instruction: str = ""
    recording_steps: int = 0
    label: int = -1
    sim_success: bool | None = None
    safety: dict = field(default_factory=dict)
    last_safety: tuple = ()
    message: str = ""
    replay_progress: tuple[int, int] = (0, 0)
    policy: str = ""


class Session:
    def __init__(self, config: SessionConfig | None = None):
        self.config = config or SessionConfig()
        self.profile: RobotProfile = load_profile(self.config.profile)
        self.fps = float(self.config.fps or self.profile.fps)
        if not 1 <= self.fps <= 50:
            raise SessionError(f"fps must be within 1..50 Hz, got {self.fps}")
        self.period = 1.0 / self.fps
        self.devices: Devices | None = None
        self.gamepad = None
        self.mapping = None
        self.store = None
        self.safety: SafetyLayer | None = None
        self.loop = RateLoop(self.fps, self._tick, on_error=self._on_loop_error)
        self._lock = threading.RLock()
        self.status = Status()
        self.mode = Mode.HOLD
        self.messages: deque[str] = deque(maxlen=200)
        self.history: deque[tuple[float, np.ndarray, np.ndarray]] = deque(maxlen=int(self.fps * 30))
        self.workflow = Workflow(self.config.workflow, self._begin_recording, self._end_recording,
                                 self._keep_episode, self._discard_episode)
        self._writer = None
        self._last_episode_path: Path | None = None
        self._pending_kin = None           # kinesthetic: step t waits for measured position t+1
        self._target: np.ndarray | None = None
        self._gripper_cmd: float | None = None
        self._ext_target: tuple[float, np.ndarray] | None = None
        self._jog: tuple[float, np.ndarray] | None = None
        self._pad_state = None
        self._expert = None
        self._episode_seed = self.config.seed
        self._replay: dict | None = None
        self._home_goal: np.ndarray | None = None
        self._mode_after_home = Mode.HOLD
        self.policy_runner = None
        self.policy_name = ""
        self.camera_errors: dict[str, str] = {}

    # ================================================================ lifecycle
    def connect(self) -> None:
        """Open robot, cameras, gamepad and dataset. Raises SessionError with what to do."""
        c = self.config
        try:
            self.devices = make_devices(self.profile, c.robot, port=c.port, period=self.period, seed=c.seed,
                                        task=c.task, realtime=c.realtime, cameras=c.cameras,
                                        protocol=c.protocol, calibration=c.calibration,
                                        randomize=c.randomize)
            self.devices.robot.connect()
        except (DeviceError, OSError, ValueError) as e:
            if self.devices:
                self.devices.close()
            self.devices = None
            raise SessionError(f"robot: {e}") from e
        try:
            self._connect_rest()
        except Exception as e:            # a bad dataset, mapping or servo: release the hardware again
            self.devices.close()
            self.devices = None
            if self.gamepad is not None:
                self.gamepad.disconnect()
                self.gamepad = None
            raise SessionError(str(e)) from e
        self.say(f"connected: {self.profile.name} via {c.robot}, {len(self.devices.cameras)} camera(s), "
                 f"{self.fps:g} Hz")

    def _connect_rest(self) -> None:
        for name, cam in self.devices.cameras.items():
            try:
                cam.connect()
            except (DeviceError, OSError) as e:
                self.camera_errors[name] = str(e)
                self.say(f"camera '{name}' unavailable: {e}")
        self.safety = SafetyLayer.from_profile(self.profile, self.period, fk=fk_for(self.devices))
        self._load_mapping()
        if self.config.use_gamepad:
            self._open_gamepad()
        self._open_store()
        obs = self.devices.robot.get_observation()
        if not self.devices.robot.torque_enabled:
            # Servos power up limp: hold where the arm is first, then stiffen (no jump).
            self.devices.robot.send_action(obs.position)
            self.devices.robot.set_torque(True)
        self._target = obs.position.copy()
        self._gripper_cmd = float(obs.position[-1])
        self.safety.reset(obs.position)
        self._publish(obs.position, None, None)

    def start(self) -> None:
        if self.devices is None:
            self.connect()
        # The loop shares the GIL with camera, render, writer and UI threads; Python's default 5 ms
        # switch interval would let any of them delay a tick by that much (measured: 50 Hz p99 4-6 ms).
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        self.loop.start()

    def open(self) -> "Session":
        self.start()
        return self

    def close(self) -> None:
        self.loop.stop()
        with self._lock:
            if self._writer is not None:   # never lose an episode on close: keep it, unlabelled
                self._end_recording()
                self._keep_episode(-1)
        if self.gamepad is not None:
            try:
                self.gamepad.disconnect()
            except Exception:
                pass
        if self.devices:
            self.devices.close()
        self.devices = None
        self.status = replace(self.status, connected=False)

    def __enter__(self):
        return self.open()

    def __exit__(self, *a):
        self.close()

    def _load_mapping(self) -> None:
        from teleop_app.mapping import default_mapping, load_mapping
        self.mapping = load_mapping(self.config.mapping) if self.config.mapping else default_mapping(self.profile.dof)
        self.mapping.validate(self.profile.dof)

    def set_mapping(self, mapping) -> None:
        mapping.validate(self.profile.dof)
        with self._lock:
            self.mapping = mapping
            self._pad_state = None

    def _open_gamepad(self) -> None:
        try:
            from drivers.gamepad import Gamepad, GamepadConfig
            self.gamepad = Gamepad(GamepadConfig())
            self.gamepad.connect()
        except Exception as e:   # no SDL, no pad: teleop by pad is off, everything else works
            self.gamepad = None
            self.say(f"gamepad unavailable: {e}")

    def _open_store(self) -> None:
        from recorder.store import EpisodeStore
        cams = {n: (c.height, c.width) for n, c in self._camera_specs().items()}
        # create() reopens an existing dataset after checking robot, fps and joints match (resume).
        self.store = EpisodeStore.create(Path(self.config.dataset), self.profile.name, self.fps,
                                         self.profile.joint_names, cams)
        from recorder.h5proc import prestart
        prestart()      # a warm HDF5 writer process, so even the first short episode finalizes fast
        if self.store.last_recovered:
            self.say(f"recovered interrupted episode(s) {self.store.last_recovered} from a crash")

    def _camera_specs(self):
        names = set(self.devices.cameras) if self.devices else set()
        return {c.name: c for c in self.profile.cameras if c.name in names}

    # ================================================================ commands (any thread)
    def say(self, msg: str) -> None:
        log.info(msg)
        self.messages.append(f"{time.strftime('%H:%M:%S')} {msg}")

    def set_mode(self, mode: Mode | str) -> None:
        mode = Mode(mode)
        with self._lock:
            if mode == self.mode:
                return
            if self.workflow.state == State.RECORDING:
                raise SessionError("stop the episode before switching mode")
            self._leave_mode(self.mode)
            self.mode = mode
            if mode == Mode.KINESTHETIC:
                self.devices.robot.set_torque(False)
            elif mode == Mode.SCRIPTED:
                self._require_sim("scripted mode")
                self._new_expert()
            self.say(f"mode: {mode.value}")

    def _leave_mode(self, mode: Mode) -> None:
        robot = self.devices.robot
        if mode == Mode.KINESTHETIC:
            # Hold where the hand left the arm: target = measured, then torque on (no jump).
            q = robot.get_observation().position
            self._target = q.copy()
            self.safety.reset(q)
            robot.send_action(q)
            robot.set_torque(True)
        elif mode == Mode.REPLAY:
            self._replay = None
        elif mode == Mode.POLICY and self.policy_runner is not None:
            self.policy_runner.reset()

    def _require_sim(self, what: str):
        if self.devices is None or self.devices.workcell is None:
            raise SessionError(f"{what} needs the simulated workcell (--robot sim or sim-serial)")
        return self.devices.workcell

    def estop(self) -> None:
        """Halts within one tick: the safety layer latches the current position."""
        with self._lock:
            q = self.status.qpos if self.status.qpos is not None else self._target
            self.safety.estop(q)
            self.workflow.abort()
            self.say("E-STOP: holding position (release with reset_estop)")

    def reset_estop(self) -> None:
        with self._lock:
            q = self.devices.robot.get_observation().position
            self._target = q.copy()
            self.safety.reset_estop(q)
            self.say("e-stop released")

    def go_home(self) -> None:
        with self._lock:
            if self.mode == Mode.KINESTHETIC:
                self._leave_mode(Mode.KINESTHETIC)
            self._mode_after_home = self.mode if self.mode != Mode.HOMING else Mode.HOLD
            self._home_goal = self.profile.home()
            self.mode = Mode.HOMING
            self.say("moving home")

    def command(self, target) -> None:
        """Absolute joint target from a script or slider (HOLD mode). Stale after watchdog_s."""
        with self._lock:
            self._ext_target = (time.monotonic(), np.asarray(target, float).copy())

    def jog(self, velocity) -> None:
        """Joint velocities (rad/s) from GUI buttons; must be refreshed or the watchdog stops them."""
        with self._lock:
            self._jog = (time.monotonic(), np.asarray(velocity, float).copy())

    def push(self, q) -> None:
        """Kinesthetic teaching in the sim: the 'hand' moves the back-drivable arm."""
        robot = self.devices.robot
        if hasattr(robot, "push"):
            robot.push(np.asarray(q, float))
        elif self.devices.workcell is not None:
            self.devices.workcell.push(np.asarray(q, float))

    def set_gripper(self, value: float) -> None:
        with self._lock:
            self._gripper_cmd = float(value)

    def set_instruction(self, text: str) -> None:
        with self._lock:
            self.workflow.set_instruction(text)

    def start_episode(self):
        with self._lock:
            self.workflow.start()

    def stop_episode(self):
        with self._lock:
            self.workflow.stop()

    def next(self):
        with self._lock:
            self.workflow.next()

    def rerecord(self):
        with self._lock:
            self.workflow.rerecord()

    def keep(self, success: bool | None = None):
        with self._lock:
            self.workflow.keep(success)

    def discard(self):
        with self._lock:
            self.workflow.discard()

    def label(self, success: bool):
        with self._lock:
            self.workflow.set_label(success)

    def reset_scene(self, seed: int | None = None, task: str | None = None) -> None:
        """Sim only: new object placement (seeded) and arm at home."""
        wc = self._require_sim("reset_scene")
        with self._lock:
            self._episode_seed = self._episode_seed + 1 if seed is None else seed
            with wc.lock:
                wc.reset(seed=self._episode_seed, task=task)
            q = self.devices.robot.get_observation().position
            self._target = q.copy()
            self._gripper_cmd = float(q[-1])
            self.safety.reset(q)
            if self.mode == Mode.SCRIPTED:
                self._new_expert()
            if self.policy_runner is not None:
                self.policy_runner.reset()

    def start_replay(self, episode_path) -> None:
        """Play a recorded episode's sent actions back at its recorded rate, through safety."""
        from recorder.reader import read_episode
        ep = read_episode(episode_path)
        if list(ep.meta.joint_names) != self.profile.joint_names:
            raise SessionError(f"episode joints {ep.meta.joint_names} do not match profile "
                               f"'{self.profile.name}' {self.profile.joint_names}")
        with self._lock:
            if self.workflow.state == State.RECORDING:
                raise SessionError("stop the episode before replaying")
            if self.mode == Mode.KINESTHETIC:
                self._leave_mode(Mode.KINESTHETIC)
            if abs(ep.meta.fps - self.fps) > 1e-6:
                self.say(f"replay at the recorded {ep.meta.fps:g} Hz (session runs at {self.fps:g} Hz)")
                self.loop.set_rate(ep.meta.fps)
            self._replay = {"actions": np.asarray(ep.action, float), "i": 0, "path": str(episode_path),
                            "fps": ep.meta.fps}
            # First glide to the episode's first pose (homing), then play.
            self._home_goal = self._replay["actions"][0].copy()
            self._mode_after_home = Mode.REPLAY
            self.mode = Mode.HOMING
            self.say(f"replaying {Path(episode_path).name} ({len(ep.action)} steps)")

    def stop_replay(self) -> None:
        with self._lock:
            if self.mode in (Mode.REPLAY, Mode.HOMING) and self._replay is not None:
                self._finish_replay("replay stopped")

    def _finish_replay(self, msg: str) -> None:
        fps = self._replay["fps"] if self._replay else self.fps
        self._replay = None
        self.mode = Mode.HOLD
        if abs(fps - self.fps) > 1e-6:
            self.loop.set_rate(self.fps)
        self.say(msg)

    def set_workflow(self, **params) -> None:
        """Change countdown_s / episode_s / reset_s / target_episodes / auto_keep while running."""
        import dataclasses
        cfg = self.workflow.config
        types = {f.name: f.type if isinstance(f.type, str) else f.type.__name__ for f in dataclasses.fields(cfg)}
        casts = {"float": float, "int": int, "bool": bool}
        with self._lock:
            for k, v in params.items():
                if k not in types or k == "instructions":
                    raise AttributeError(f"workflow has no setting {k!r}")
                setattr(cfg, k, casts.get(types[k], lambda x: x)(v))   # by declared type: 0.8 stays 0.8

    def set_policy(self, runner, name: str = "") -> None:
        """Install a policy runner (teleop_app.policy.runner). Its metadata is checked against this robot
        and rate before anything moves: PolicyMismatchError says what differs."""
        meta = getattr(getattr(runner, "policy", None), "meta", None)
        if meta is not None:
            from dataclasses import replace as _replace
            from teleop_app.policy.base import check_compatible
            check_compatible(meta, _replace(self.profile, fps=self.fps))
        with self._lock:
            self.policy_runner = runner
            self.policy_name = name

    # ================================================================ recording effects
    def _begin_recording(self, instruction: str) -> None:
        from recorder.schema import EpisodeMeta
        from recorder.writer import EpisodeWriter
        mode = {Mode.GAMEPAD: "teleop", Mode.HOLD: "teleop", Mode.KINESTHETIC: "kinesthetic",
                Mode.SCRIPTED: "scripted", Mode.POLICY: "policy", Mode.REPLAY: "scripted",
                Mode.HOMING: "teleop"}[self.mode]
        extra = {"robot_kind": self.config.robot, "control_mode": self.mode.value}
        if self.devices.workcell is not None:
            wc = self.devices.workcell
            extra.update(task=wc.task, seed=int(wc.seed))
        meta = EpisodeMeta(instruction=instruction, fps=self.fps, robot=self.profile.name,
                           joint_names=self.profile.joint_names, mode=mode, operator=self.config.operator,
                           software_version=__version__, extra=extra)
        cams = {n: (c.height, c.width) for n, c in self._camera_specs().items()}
        path = self.store.new_episode_path()
        try:
            self._writer = EpisodeWriter(path, meta, cameras=cams, dof=self.profile.dof, jpeg=self.config.jpeg)
        except Exception as e:
            self._writer = None
            self.say(f"cannot record: {e}")
            self.workflow.abort()
            return
        self._pending_kin = None
        self.say(f"recording: '{instruction}'")

    def _end_recording(self) -> None:
        w, self._writer = self._writer, None
        if w is None:
            return
        if self._pending_kin is not None:      # last kinesthetic step: action = hold its own position
            step = self._pending_kin
            self._pending_kin = None
            w.add_step(**step)
        self._last_episode_path = w.finish(success=-1)
        if self.devices and self.devices.workcell is not None:
            self.workflow.label = 1 if self.devices.workcell.success() else 0
        self.say(f"episode stopped: {w.num_steps} steps")

    def _keep_episode(self, success: int) -> None:
        p = self._last_episode_path
        if p is None:
            return
        ep_id = self.store.add(p).id
        if success != -1:
            self.store.relabel(ep_id, int(success))
        self.say(f"kept episode {ep_id} ({'success' if success == 1 else 'failure' if success == 0 else 'unlabelled'})")
        self._last_episode_path = None
        self._settled()

    def _discard_episode(self) -> None:
        p = self._last_episode_path
        if p is not None:
            Path(p).unlink(missing_ok=True)
            self.say("episode discarded")
        self._last_episode_path = None
        self._settled()

    # ================================================================ the tick
    def _on_loop_error(self, e: BaseException) -> None:
        self.say(f"control loop error: {type(e).__name__}: {e}")
        log.exception("control loop error", exc_info=e)
        try:
            with self._lock:
                q = self.status.qpos if self.status.qpos is not None else self._target
                self.safety.estop(q)
                self.workflow.abort()
        except Exception:
            pass

    def _tick(self, deadline: float, start: float) -> None:
        with self._lock:
            self._tick_locked(start)

    def _tick_locked(self, now: float) -> None:
        robot = self.devices.robot
        obs = robot.get_observation()
        q = obs.position
        pad = self._read_pad()
        cmd = self._pad_command(pad)
        for ev in cmd.events:           # buttons (e-stop above all) work in every mode
            self._pad_event(ev)
        if self.mode not in (Mode.GAMEPAD, Mode.KINESTHETIC, Mode.HOLD):
            cmd = None                  # sticks only drive in the modes where a human drives
        self.workflow.update(now)

        raw = self._raw_target(q, obs, cmd, now)
        if self.mode == Mode.KINESTHETIC:
            sent, rep = q.copy(), None           # torque off: nothing is commanded
        elif raw is None:
            sent, rep = self.safety.hold(q, watchdog=self._watchdog_tripped(now))
        else:
            sent, rep = self.safety.filter(raw, q)
            if rep.rejected_nonfinite and self.mode == Mode.POLICY:
                self.say("policy output was NaN/inf: policy stopped, nothing sent")
                self.mode = Mode.HOLD
        if self.mode != Mode.KINESTHETIC:
            robot.send_action(sent)
            self._target = sent.copy()
        if self._writer is not None:
            self._record(obs, sent, raw, cmd)
        self._after_tick(q)
        self.history.append((now, q.copy(), sent.copy()))
        self._publish(q, raw, sent, pad, rep)

    def _read_pad(self) -> GamepadState:
        if self.gamepad is None:
            return GamepadState(connected=False)
        try:
            return self.gamepad.read()
        except Exception as e:
            self.say(f"gamepad error: {e}")
            return GamepadState(connected=False)

    def _pad_command(self, pad: GamepadState):
        from teleop_app.mapping import MappingState
        if self._pad_state is None or self._pad_state.mapping is not self.mapping:
            self._pad_state = MappingState(self.mapping)
        cmd = self._pad_state.update(pad, self.profile.max_speed(), self.profile.dof - 1)
        if cmd.gripper is not None:     # the mapping speaks fraction open; the profile has its own units
            g = self.profile.gripper
            cmd.gripper = g.lower + cmd.gripper * (g.upper - g.lower)
        return cmd

    def _pad_event(self, ev: str) -> None:
        actions = {"start_episode": self.workflow.next, "stop_episode": self.workflow.stop,
                   "rerecord": self.workflow.rerecord, "estop": self.estop, "home": self.go_home,
                   "success": lambda: self._label_and_keep(True),
                   "failure": lambda: self._label_and_keep(False)}
        fn = actions.get(ev)
        if fn:
            fn()

    def _label_and_keep(self, success: bool) -> None:
        if self.workflow.state == State.REVIEW:
            self.workflow.keep(success)
        else:
            self.workflow.set_label(success)

    def _watchdog_tripped(self, now: float) -> bool:
        """True on the first tick after a command stream went stale (one trip per stream, not per tick)."""
        src = self._ext_target or self._jog
        if src is None or now - src[0] <= self.config.watchdog_s or src[0] == self._watchdog_seen:
            return False
        self._watchdog_seen = src[0]
        return True

    _watchdog_seen = 0.0

    def _raw_target(self, q, obs, cmd, now) -> np.ndarray | None:
        base = self._target if self._target is not None else q
        mode = self.mode
        if self.safety.estopped:
            return None
        if mode == Mode.GAMEPAD or (mode == Mode.HOLD and cmd is not None and np.any(cmd.joint_velocity)):
            if cmd is None:
                return None
            t = base + cmd.joint_velocity * self.period
            if cmd.gripper is not None:
                self._gripper_cmd = cmd.gripper
            elif self._gripper_cmd is not None and cmd.joint_velocity[-1]:
                g = self.profile.gripper
                self._gripper_cmd = float(np.clip(self._gripper_cmd + cmd.joint_velocity[-1] * self.period,
                                                  g.lower, g.upper))
            t[-1] = self._gripper_cmd if self._gripper_cmd is not None else base[-1]
            return self._add_jog(t, now)
        if mode == Mode.KINESTHETIC:
            if cmd is not None:
                if cmd.gripper is not None:
                    self._gripper_cmd = cmd.gripper
                if np.any(cmd.joint_velocity) and self.devices.workcell is not None:
                    self.push(q + cmd.joint_velocity * self.period)  # the pad plays the operator's hand
            raw = q.copy()
            if self._gripper_cmd is not None:
                raw[-1] = self._gripper_cmd
            return raw
        if mode == Mode.SCRIPTED:
            if self.workflow.state == State.RECORDING and self._expert is not None:
                if self._expert.done:
                    self.workflow.stop()
                    return None
                return np.asarray(self._expert.act(q), float)
            return None
        if mode == Mode.POLICY:
            if self.policy_runner is None:
                return None
            from teleop_app.policy.runner import PolicyOutputError
            try:
                return self.policy_runner.act(self._observation(obs), now)
            except PolicyOutputError as e:    # NaN / far out of range: never sent; stop the policy only
                self.mode = Mode.HOLD
                self.say(f"policy stopped, nothing sent: {e}")
                return None
        if mode == Mode.REPLAY:
            r = self._replay
            if r is None or r["i"] >= len(r["actions"]):
                self._finish_replay("replay finished")
                return None
            r["i"] += 1
            return r["actions"][r["i"] - 1]
        if mode == Mode.HOMING:
            goal = self._home_goal
            step = self.profile.max_speed() * self.period * self.config.home_speed
            t = base + np.clip(goal - base, -step, step)
            if np.allclose(t, goal, atol=1e-3) and np.allclose(q, goal, atol=2e-2):
                self.mode = self._mode_after_home
                if self.mode != Mode.REPLAY:
                    self.say("home reached")
            return t
        # HOLD: sliders / scripts
        if self._ext_target is not None and now - self._ext_target[0] <= self.config.watchdog_s:
            return self._ext_target[1].copy()
        if self._jog is not None and now - self._jog[0] <= self.config.watchdog_s:
            return self._add_jog(base.copy(), now)
        return None

    def _add_jog(self, t, now):
        if self._jog is not None and now - self._jog[0] <= self.config.watchdog_s:
            t = t + self._jog[1] * self.period
        return t

    def _observation(self, obs) -> dict:
        images = {}
        for name, cam in (self.devices.cameras or {}).items():
            f = cam.read_latest() if cam.is_connected else None
            if f is not None:
                images[name] = f.image
        return {"images": images, "qpos": obs.position.copy(), "instruction": self.workflow.instruction,
                "timestamp": obs.timestamp}

    def _record(self, obs, sent, raw, cmd) -> None:
        images, stamps = {}, {}
        for name, cam in self.devices.cameras.items():
            if name in self.camera_errors:
                continue
            f = cam.read_latest()
            if f is not None:
                images[name], stamps[name] = f.image, f.timestamp
        raw_a = sent if raw is None else raw
        step = dict(qpos=obs.position.copy(), action=sent.copy(), action_raw=np.asarray(raw_a, float).copy(),
                    timestamp=obs.timestamp, images=images, image_timestamps=stamps, qvel=obs.velocity)
        if self.mode == Mode.KINESTHETIC:
            # Action t = measured position t+1 (gripper from the button), so the pending step is written now.
            if self._pending_kin is not None:
                prev = self._pending_kin
                act = obs.position.copy()
                act[-1] = prev["action_raw"][-1]
                prev["action"] = act
                prev["action_raw"] = act.copy()
                self._writer.add_step(**prev)
            step["action"] = step["action_raw"].copy()
            self._pending_kin = step
        else:
            self._writer.add_step(**step)
        if getattr(self._writer, "error", None):
            self.say(f"recording stopped: {self._writer.error}")
            self.workflow.stop()

    def _after_tick(self, q) -> None:
        # Unattended modes in the sim put a fresh scene out once the last episode is settled.
        if self._scene_reset_pending and not self.safety.estopped and self.workflow.state in (State.RESETTING, State.IDLE, State.DONE,
                                                                 State.COUNTDOWN):
            self._scene_reset_pending = False
            self.reset_scene()

    _scene_reset_pending = False

    def _settled(self) -> None:
        if self.mode in (Mode.SCRIPTED, Mode.POLICY) and self.devices.workcell is not None:
            self._scene_reset_pending = True

    def _new_expert(self) -> None:
        from drivers.sim import ScriptedExpert
        wc = self._require_sim("scripted mode")
        self._expert = ScriptedExpert(wc, seed=self._episode_seed, dt=self.period)
        self._expert.reset()

    _loop_stats: LoopStats | None = None
    _loop_stats_t = 0.0

    def _publish(self, q, raw, sent, pad=None, rep=None) -> None:
        wf = self.workflow
        now = time.monotonic()
        # Percentiles over thousands of ticks cost 0.5-2 ms: refresh them 4x/s, not inside every tick.
        if self.loop.ticks and now - self._loop_stats_t > 0.25:
            self._loop_stats, self._loop_stats_t = self.loop.stats(), now
        wc = self.devices.workcell if self.devices else None
        self.status = Status(
            t=now, connected=True, mode=self.mode.value, qpos=q.copy(),
            target=None if raw is None else np.asarray(raw, float).copy(),
            sent=None if sent is None else sent.copy(),
            torque=self.devices.robot.torque_enabled, estopped=self.safety.estopped,
            gamepad=pad or GamepadState(connected=False),
            group=self._pad_state.group if self._pad_state else "",
            loop=self._loop_stats, workflow=wf.state.value,
            time_left=wf.time_left(), kept=wf.kept, target_episodes=wf.config.target_episodes,
            instruction=wf.instruction, recording_steps=self._writer.num_steps if self._writer else 0,
            label=wf.label, sim_success=bool(wc.success()) if wc is not None else None,
            safety=self.safety.counters.as_dict(), last_safety=tuple(rep.reasons()) if rep else (),
            message=self.messages[-1] if self.messages else "",
            replay_progress=(self._replay["i"], len(self._replay["actions"])) if self._replay else (0, 0),
            policy=self.policy_name)
