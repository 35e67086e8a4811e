"""The teleop session: one fixed-rate loop (teleop_app.pipeline) that reads the arm and cameras once,
asks the active mode's command source (teleop_app.sources) for a target, passes it through the safety
layer, sends it, and hands the step to the recorder. The GUI (through the control process) and the CLI
are views/drivers of this object.

Threads: the control loop owns the robot, gamepad and writer hand-off and holds no lock other threads
wait on. Commands from any thread are queued (a deque) and run at the start of the next tick; e-stop is
one attribute store that the next tick checks first. Episode files (writer creation, finish, store
index, relabel, discard) are made on a housekeeping thread. Views read `status`, an immutable snapshot
swapped each tick, and `info` (static after connect).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Callable

import numpy as np

from drivers.interfaces import DeviceError, GamepadState
from teleop_app import __version__
from teleop_app.devices import Devices, fk_for, make_devices
from teleop_app.loop import LoopStats, RateLoop, promote_threads, realtime_helper
from teleop_app.pipeline import ControlPipeline, Housekeeper, finish_writer
from teleop_app.profiles import RobotProfile, load_profile
from teleop_app.safety import SafetyLayer
from teleop_app.sources import (GamepadSource, HoldSource, HomingSource, KinestheticSource, OperatorInputs,
                                PolicySource, ReplaySource, ScriptedSource, make_async)
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
    LEADER = "leader"           # helper modes registered by teleop_app.human (leader arm, Cartesian pad,
    CARTESIAN = "cartesian"     # policy with human takeover); refused until a source is registered
    TAKEOVER = "takeover"

    def __str__(self) -> str:
        return self.value


class PolicyState(str, Enum):
    NONE = "none"
    LOADING = "loading"
    READY = "ready"
    RUNNING = "running"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


class SessionError(RuntimeError):
    pass


# Mode -> factory(session) -> CommandSource. REPLAY and HOMING take arguments (start_replay, go_home).
SOURCES: dict[Mode, Callable[["Session"], object]] = {
    Mode.HOLD: lambda s: HoldSource(),
    Mode.GAMEPAD: lambda s: GamepadSource(),
    Mode.KINESTHETIC: lambda s: KinestheticSource(),
    Mode.SCRIPTED: lambda s: s._scripted_source(),
    Mode.POLICY: lambda s: s._policy_source(),
}


def register_source(mode: Mode | str, factory: Callable[["Session"], object]) -> None:
    """Make `mode` available in every session: factory(session) -> a CommandSource."""
    SOURCES[Mode(mode)] = factory


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
    physics: bool | None = None        # sim: True MuJoCo contact physics (grasps hold by friction), False the
    #                                    kinematic fast mode, None drivers.sim's default (physics)
    jpeg: bool = True
    watchdog_s: float = 0.5
    home_speed: float = 0.4            # fraction of max joint speed for "go home"
    realtime: bool = True              # False: sim steps once per tick (headless, faster than real time)
    policy_stall_s: float = 2.0        # a policy giving no action this long is stopped (arm held)
    # sim/camera/writer threads at a real-time priority below the loop's (TELEOP_RT_HELPERS=0: off)
    realtime_helpers: bool = field(default_factory=lambda: os.environ.get("TELEOP_RT_HELPERS", "1") != "0")
    leader: str | None = None          # leader arm (Mode.LEADER, takeovers): "sim" (own pty) or its serial port
    leader_profile: str | None = None  # e.g. "koch_leader" (default: "<profile>_leader")
    leader_calibration: str | None = None   # the leader's calibration JSON (drivers/leader.py)
    workflow: WorkflowConfig = field(default_factory=WorkflowConfig)


@dataclass(frozen=True)
class SessionInfo:
    """Static after connect; plain data only (serializable without pickle)."""
    profile: str = ""
    joint_names: tuple = ()
    dof: int = 0
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    home: np.ndarray | None = None
    fps: float = 0.0
    cameras: dict = field(default_factory=dict)      # name -> (height, width, fps)
    is_sim: bool = False
    sim: str = ""                      # the sim backend: "physics" | "kinematic" ("" for a real robot)
    robot_kind: str = ""
    dataset: str = ""
    tasks: tuple = ()
    workflow: dict = field(default_factory=dict)
    mapping: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Status:
    """Snapshot for views. Arrays are copies; never mutated after creation."""
    t: float = 0.0
    connected: bool = False
    mode: Mode = Mode.HOLD
    qpos: np.ndarray | None = None
    target: np.ndarray | None = None       # raw command of this tick
    sent: np.ndarray | None = None         # after safety (what the driver wrote)
    torque: bool = True
    estopped: bool = False
    gamepad: GamepadState = field(default_factory=lambda: GamepadState(connected=False))
    group: str = ""
    loop: LoopStats | None = None
    workflow: State = State.IDLE
    time_left: float = 0.0
    kept: int = 0
    target_episodes: int = 0
    instruction: str = ""
    recording_steps: int = 0
    label: int = -1
    sim_success: bool | None = None
    sim_task: str = ""                  # the instruction the sim's success test judges (its scene's task)
    safety: dict = field(default_factory=dict)
    last_safety: tuple = ()
    message: str = ""
    replay_progress: tuple[int, int] = (0, 0)
    policy: str = ""
    policy_state: PolicyState = PolicyState.NONE
    seq: int = 0                           # tick counter
    estop_latency_s: float | None = None   # the last e-stop: request -> first held command sent (control side)
    messages_seq: int = 0                  # messages said so far
    human: dict = field(default_factory=dict)   # leader/Cartesian/takeover source state (intervention,
    #                                             source, uncertainty, asking, ...): teleop_app.human


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
        self.pipeline: ControlPipeline | None = None
        self.loop = RateLoop(self.fps, self._tick, on_error=self._on_loop_error)
        self.status = Status()
        self.info = SessionInfo()
        self.mode = Mode.HOLD
        self.sources = dict(SOURCES)
        self._source = None
        self.messages: deque[str] = deque(maxlen=200)
        self._n_messages = 0
        self.history: deque[tuple[float, np.ndarray, np.ndarray]] = deque(maxlen=int(self.fps * 30))
        self.workflow = Workflow(self.config.workflow, self._begin_recording, self._end_recording,
                                 self._keep_episode, self._discard_episode)
        self.inputs = OperatorInputs(watchdog_s=self.config.watchdog_s)
        self._cmds: deque[tuple[Future, Callable]] = deque()
        self._hk: Housekeeper | None = None
        self._last_episode: Future | None = None
        self._prepared: tuple[tuple, Future] | None = None
        self._pad_state = None
        self._episode_seed = self.config.seed
        self._scene_reset_pending = False
        self._seq = 0
        self._loop_stats: LoopStats | None = None
        self._stats_job: Future | None = None
        self._stats_t = 0.0
        self._promoted: set[tuple] = set()
        self.policy_runner = None
        self.policy_name = ""
        self.policy_state = PolicyState.NONE
        self.camera_errors: dict[str, str] = {}

    # ================================================================ lifecycle
    def connect(self) -> None:
        """Open robot, cameras, gamepad and dataset. Raises SessionError with what to do."""
        c = self.config
        try:
            self.devices = make_devices(self.profile, c.robot, port=c.port, period=self.period, seed=c.seed,
                                        task=c.task, realtime=c.realtime, cameras=c.cameras,
                                        protocol=c.protocol, calibration=c.calibration,
                                        randomize=c.randomize, physics=c.physics)
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
            if self._hk is not None:
                self._hk.close()
                self._hk = None
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
        self._hk = Housekeeper("session-housekeeping")
        robot = self.devices.robot
        if hasattr(robot, "set_period"):
            robot.set_period(self.period)      # a servo that stops answering costs <= half a tick
        self.pipeline = ControlPipeline(robot, self.devices.cameras, self.safety, self.period,
                                        profile=self.profile, workcell=self.devices.workcell,
                                        camera_errors=self.camera_errors, inputs=self.inputs,
                                        before=self._before, after=self._after, on_estop=self._on_estop)
        self.pipeline.ctx.say = self.say
        self.pipeline.ctx.request = self._request
        obs = robot.get_observation()
        if not robot.torque_enabled:
            # Servos power up limp: hold where the arm is first, then stiffen (no jump).
            robot.send_action(obs.position)
            robot.set_torque(True)
        self.pipeline.rebase(obs.position)
        self.pipeline.ctx.obs = obs
        self.pipeline.last_q = obs.position.copy()
        self.inputs.gripper = float(obs.position[-1])
        self._source = HoldSource()
        self.pipeline.set_source(self._source)
        if self.config.leader:
            from teleop_app.human import attach_leader
            attach_leader(self, self.config.leader, profile=self.config.leader_profile,
                          calibration=self.config.leader_calibration)
        self.info = self._make_info()
        self._publish(obs.position, None, obs.position)

    def _make_info(self) -> SessionInfo:
        p = self.profile
        cams = {n: (c.height, c.width, float(c.fps)) for n, c in self._camera_specs().items()}
        tasks = ()
        if self.devices.workcell is not None:
            from drivers.sim import TASKS
            tasks = tuple(TASKS)
        import dataclasses
        wf = {k: (list(v) if isinstance(v, list) else v)
              for k, v in dataclasses.asdict(self.workflow.config).items()}
        from teleop_app.mapping import mapping_to_dict
        mapping = mapping_to_dict(self.mapping)
        return SessionInfo(profile=p.name, joint_names=tuple(p.joint_names), dof=p.dof, lower=p.lower(),
                           upper=p.upper(), home=p.home(), fps=self.fps, cameras=cams,
                           is_sim=self.devices.workcell is not None,
                           sim=getattr(self.devices.workcell, "sim", ""), robot_kind=self.config.robot,
                           dataset=str(self.config.dataset), tasks=tasks, workflow=wf, mapping=mapping)

    def start(self) -> None:
        if self.devices is None:
            self.connect()
        # The loop shares the GIL with camera, render, writer and UI threads; Python's default 5 ms
        # switch interval would let any of them delay a tick by that much (measured: 50 Hz p99 4-6 ms).
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        self.loop.start()
        self.loop.priority_set.wait(1.0)
        self._promote_helpers()

    @property
    def _realtime_helpers(self) -> bool:
        """Helper threads get real-time priority (below the loop's): asked for, and the loop has it."""
        return bool(self.config.realtime_helpers and self.loop.realtime_priority)

    def _promote_helpers(self) -> None:
        """Real-time priority for the GIL-taking helper threads already running (see _realtime_helpers)."""
        if self._realtime_helpers:
            promote_threads(done=self._promoted)

    def open(self) -> "Session":
        self.start()
        return self

    def close(self) -> None:
        """Stop the loop; an episode still recording is kept (unlabelled); every file op finishes."""
        self.loop.stop()
        self._run_queued()
        if self.pipeline is not None and self.pipeline.recorder.active:
            self._end_recording()            # never lose an episode on close: keep it, unlabelled
            self._keep_episode(-1)
        self._drop_prepared()
        if self._hk is not None:
            try:
                self._hk.drain(timeout=180)
            except TimeoutError:    # a disk that hangs: the files stay for EpisodeStore.recover()
                self.say("episode files still being written after 180 s; they are recovered on the next open")
            self._hk.close(timeout=1.0)
            self._hk = None
        if self.policy_runner is not None and hasattr(self.policy_runner, "close"):
            try:
                self.policy_runner.close()
            except Exception:  # noqa: BLE001
                pass
        if self.gamepad is not None:
            try:
                self.gamepad.disconnect()
            except Exception:  # noqa: BLE001
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
        if isinstance(mapping, dict):
            from teleop_app.mapping import mapping_from_dict
            mapping = mapping_from_dict(mapping)
        mapping.validate(self.profile.dof)
        self.mapping = mapping           # one attribute store; the tick rebuilds its pad state

    def _open_gamepad(self) -> None:
        # SDL installs its own SIGINT/SIGTERM handlers unless told not to: the CLI's must stay in charge.
        os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")
        os.environ.setdefault("SDL_HINT_NO_SIGNAL_HANDLERS", "1")
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

    # ================================================================ command plumbing
    def say(self, msg: str) -> None:
        log.info(msg)
        self.messages.append(f"{time.strftime('%H:%M:%S')} {msg}")
        self._n_messages += 1

    def _post(self, fn: Callable) -> Future:
        """Run fn in the control thread at the start of the next tick (or now if the loop is not running)."""
        fut: Future = Future()
        if not self.loop.running or threading.current_thread() is getattr(self.loop, "_thread", None):
            self._run_one(fut, fn)
        else:
            self._cmds.append((fut, fn))
        return fut

    def _call(self, fn: Callable, timeout: float = 3.0):
        """_post and wait for the tick to have run it (re-raises its error)."""
        fut = self._post(fn)
        try:
            return fut.result(timeout)
        except TimeoutError:
            raise SessionError("the control loop did not take the command within "
                               f"{timeout:g} s") from None

    def _run_one(self, fut: Future, fn: Callable) -> None:
        try:
            fut.set_result(fn())
        except BaseException as e:  # noqa: BLE001 - handed back to the caller
            fut.set_exception(e)

    def _run_queued(self) -> None:
        while self._cmds:
            fut, fn = self._cmds.popleft()
            self._run_one(fut, fn)

    def _request(self, action: str, *args) -> None:
        """Sources asking for workflow/mode actions from inside the tick."""
        if action == "stop_episode":
            self.workflow.stop()
        elif action == "stop_policy":
            self.say(f"policy stopped, arm held: {args[0] if args else ''}")
            self.policy_state = PolicyState.ERROR if self.policy_runner is not None else PolicyState.NONE
            self._switch(Mode.HOLD, HoldSource(), quiet=True)
        elif action == "replay_finished":
            self._finish_replay("replay finished")
        elif action == "mode":
            then = args[0] if args else None
            mode, src = then if then else (Mode.HOLD, None)
            self._switch(mode, src, quiet=mode == Mode.REPLAY)
        else:
            raise SessionError(f"unknown request {action!r}")

    def _switch(self, mode: Mode, source=None, quiet: bool = False) -> None:
        """In the control thread: stop the old source, start the new one (bumpless)."""
        if source is None:
            factory = self.sources.get(mode)
            if factory is None:
                raise SessionError(f"mode '{mode.value}' is not available in this session")
            source = factory(self)
        ctx = self.pipeline.ctx
        if not self.loop.running:
            ctx.now = time.monotonic()
        old = self._source
        if old is not None:
            old.stop(ctx)
        self.mode = mode
        self._source = source
        self.pipeline.set_source(source)
        source.start(ctx)
        if self.policy_runner is not None:
            self.policy_state = PolicyState.RUNNING if mode in (Mode.POLICY, Mode.TAKEOVER) else (
                PolicyState.READY if self.policy_state == PolicyState.RUNNING else self.policy_state)
        # The snapshot says so at once: a caller of set_mode() reads the new mode, not the last tick's.
        self.status = replace(self.status, mode=mode, policy_state=self.policy_state)
        if not quiet:
            self.say(f"mode: {mode.value}")

    def _scripted_source(self):
        self._require_sim("scripted mode")
        return ScriptedSource(only_recording=True)

    def _policy_source(self):
        if self.policy_runner is None:
            raise SessionError("no policy loaded: load one first (load_policy / set_policy)")
        return PolicySource(self.policy_runner, on_error="hold", stall_s=self.config.policy_stall_s)

    def _require_sim(self, what: str):
        if self.devices is None or self.devices.workcell is None:
            raise SessionError(f"{what} needs the simulated workcell (--robot sim or sim-serial)")
        return self.devices.workcell

    # ================================================================ commands (any thread)
    def set_mode(self, mode: Mode | str) -> None:
        mode = Mode(mode)
        if mode not in self.sources:
            raise SessionError(f"mode '{mode.value}' is not available (no command source registered)")
        if mode in (Mode.SCRIPTED,):
            self._require_sim("scripted mode")

        def do():
            if mode == self.mode:
                return
            if self.workflow.state == State.RECORDING:
                raise SessionError("stop the episode before switching mode")
            self._switch(mode)
        self._call(do)

    def estop(self, source: str = "api") -> None:
        """Halts within one tick, lock-free: sets a flag the next tick checks first and latches into the
        safety layer (holding the present position). Safe from any thread and from signal handlers."""
        if self.pipeline is None:
            return
        self.pipeline.request_estop(source)
        if self.loop.running:
            self.loop.wake()                  # the hold goes out now, not at the next deadline
        else:
            self.pipeline._latch_estop()

    def _on_estop(self, source: str) -> None:
        self.workflow.abort()
        self.say(f"E-STOP ({source}): holding position (release with reset_estop)")

    def reset_estop(self) -> None:
        def do():
            self.pipeline.estop_request = None
            q = self.devices.robot.get_observation().position
            self.pipeline.rebase(q)
            self.safety.reset_estop(q)
            self.say("e-stop released")
        self._post(do)

    def go_home(self) -> None:
        def do():
            after = self.mode if self.mode not in (Mode.HOMING, Mode.KINESTHETIC, Mode.REPLAY) else Mode.HOLD
            then = (after, None) if after != Mode.HOLD else (Mode.HOLD, HoldSource())
            self._switch(Mode.HOMING, HomingSource(self.profile.home(), self.config.home_speed, then=then),
                         quiet=True)
            self.say("moving home")
        self._post(do)

    def command(self, target) -> None:
        """Absolute joint target from a script or slider (HOLD mode). Stale after watchdog_s."""
        self.inputs.ext_target = (time.monotonic(), np.asarray(target, float).copy())

    def jog(self, velocity) -> None:
        """Joint velocities (rad/s) from GUI buttons; must be refreshed or the watchdog stops them."""
        self.inputs.jog = (time.monotonic(), np.asarray(velocity, float).copy())

    def push(self, q) -> None:
        """Kinesthetic teaching in the sim: the 'hand' moves the back-drivable arm."""
        robot = self.devices.robot
        if hasattr(robot, "push"):
            robot.push(np.asarray(q, float))
        elif self.devices.workcell is not None:
            self.devices.workcell.push(np.asarray(q, float))

    def set_gripper(self, value: float) -> None:
        self.inputs.gripper = float(value)

    def set_instruction(self, text: str) -> None:
        """The instruction of the next episode or policy run. On the sim, the instruction of one of its tasks
        ("put the red cube in the bowl") also sets that task up: the sim's success test, the scripted expert and
        the episodes' task key follow it (same placement seed). Another wording of a sim task switches to that task,
        its kind from the fixture it names and its object the one named (drivers.sim.tasks.task_named_in: "the red
        cube belongs inside the bowl" on pick_red: red_in_bowl); the rest leave the task as it is, and the views
        say which instruction the sim judges."""
        self._post(lambda: self._set_instruction(text))

    def _set_instruction(self, text: str) -> None:
        self.workflow.set_instruction(text)
        wc = self.devices.workcell if self.devices is not None else None
        if wc is None or not text.strip():
            return
        before = wc.task
        if self.workflow.state.value == "recording":
            return                          # the episode under way keeps its task (and its scene)
        try:
            wc.task = text
        except KeyError:                    # not a task instruction: the sim task the wording names, if any
            from drivers.sim.tasks import task_named_in
            key = task_named_in(text, before, wc.sim == "physics")
            if key is None:                 # judged as the scene's task (the views say which)
                return
            wc.task = key
        if wc.task != before:
            self._after_scene_change()      # a task with other objects or fixtures sets up a new scene
            self.say(f"sim task: {wc.task} ('{text.strip()}'), judged by its success test")

    def start_episode(self):
        self._post(self.workflow.start)

    def stop_episode(self):
        self._post(self.workflow.stop)

    def next(self):
        self._post(self.workflow.next)

    def rerecord(self):
        self._post(self.workflow.rerecord)

    def keep(self, success: bool | None = None):
        self._post(lambda: self.workflow.keep(success))

    def discard(self):
        self._post(self.workflow.discard)

    def label(self, success: bool):
        self._post(lambda: self.workflow.set_label(success))

    def reset_scene(self, seed: int | None = None, task: str | None = None) -> None:
        """Sim only: new object placement (seeded) and arm at home."""
        self._require_sim("reset_scene")
        self._post(lambda: self._reset_scene(seed, task))

    def _reset_scene(self, seed=None, task=None) -> None:
        wc = self._require_sim("reset_scene")
        self._episode_seed = self._episode_seed + 1 if seed is None else seed
        with wc.lock:
            wc.reset(seed=self._episode_seed, task=task)
        self._after_scene_change()

    def _after_scene_change(self) -> None:
        """The arm may have gone home and the task changed: commands continue from where the arm is, and the
        active source (the scripted expert) plans for the scene as it is now."""
        q = self.devices.robot.get_observation().position
        self.pipeline.rebase(q)
        self.pipeline.last_q = q
        self.inputs.gripper = float(q[-1])
        ctx = self.pipeline.ctx
        ctx.seed = self._episode_seed
        if self._source is not None and hasattr(self._source, "reset"):
            self._source.reset(ctx)

    def start_replay(self, episode_path) -> None:
        """Play a recorded episode's sent actions back at its recorded rate, through safety."""
        from recorder.h5check import check_readable
        from recorder.reader import read_episode
        # any file can be given: a damaged one on which the HDF5 library loops would hold this
        # process's GIL, and so the control loop, forever; it is tried in a child process first
        why = check_readable([episode_path]).get(Path(episode_path))
        if why:
            raise SessionError(f"episode file {episode_path}: {why}")
        ep = read_episode(episode_path)
        if list(ep.meta.joint_names) != self.profile.joint_names:
            raise SessionError(f"episode joints {ep.meta.joint_names} do not match profile "
                               f"'{self.profile.name}' {self.profile.joint_names}")
        actions, fps = np.asarray(ep.action, float), float(ep.meta.fps)

        def do():
            if self.workflow.state == State.RECORDING:
                raise SessionError("stop the episode before replaying")
            if abs(fps - self.fps) > 1e-6:
                self.say(f"replay at the recorded {fps:g} Hz (session runs at {self.fps:g} Hz)")
                self._set_rate(fps)
            rep = ReplaySource(actions, path=str(episode_path), fps=fps)
            # First glide to the episode's first pose (homing), then play.
            self._switch(Mode.HOMING, HomingSource(actions[0], self.config.home_speed, then=(Mode.REPLAY, rep),
                                                   say_done=False), quiet=True)
            self.say(f"replaying {Path(episode_path).name} ({len(actions)} steps)")
        self._call(do)

    def stop_replay(self) -> None:
        def do():
            if self.mode in (Mode.REPLAY, Mode.HOMING) and self._replay_source() is not None:
                self._finish_replay("replay stopped")
        self._post(do)

    def _replay_source(self):
        s = self._source
        if isinstance(s, ReplaySource):
            return s
        if isinstance(s, HomingSource) and s.then and isinstance(s.then[1], ReplaySource):
            return s.then[1]
        return None

    def _finish_replay(self, msg: str) -> None:
        r = self._replay_source()
        fps = r.fps if r is not None and r.fps else self.fps
        self._switch(Mode.HOLD, HoldSource(), quiet=True)
        if abs(fps - self.fps) > 1e-6:
            self._set_rate(self.fps)
        self.say(msg)

    def set_workflow(self, **params) -> None:
        """Change countdown_s / episode_s / reset_s / target_episodes / auto_keep while running."""
        import dataclasses
        cfg = self.workflow.config
        types = {f.name: f.type if isinstance(f.type, str) else f.type.__name__ for f in dataclasses.fields(cfg)}
        casts = {"float": float, "int": int, "bool": bool}
        for k in params:
            if k not in types or k == "instructions":
                raise AttributeError(f"workflow has no setting {k!r}")
        for k, v in params.items():
            setattr(cfg, k, casts.get(types[k], lambda x: x)(v))   # by declared type: 0.8 stays 0.8

    # ---- policies --------------------------------------------------------------------
    def set_policy(self, runner, name: str = "") -> None:
        """Install a policy runner (teleop_app.policy.runner). Its metadata is checked against this robot
        and rate before anything moves: PolicyMismatchError says what differs. Inference always runs
        asynchronously here (a late result = hold), so the loop never waits for the policy."""
        meta = getattr(getattr(runner, "policy", None), "meta", None)
        if meta is not None:
            from dataclasses import replace as _replace
            from teleop_app.policy.base import check_compatible
            check_compatible(meta, _replace(self.profile, fps=self.fps))
        make_async(runner, self.period, self.config.policy_stall_s)

        def do():
            old = self.policy_runner
            self.policy_runner, self.policy_name = runner, name
            self.policy_state = PolicyState.READY
            if self.mode == Mode.POLICY:
                self._switch(Mode.POLICY, quiet=True)
            if old is not None and old is not runner and hasattr(old, "close") and self._hk is not None:
                self._hk.submit(old.close)
        self._call(do)

    def load_policy(self, spec: dict) -> None:
        """Load a policy in a background thread; policy_state goes LOADING -> READY (or ERROR with a
        message). A checkpoint path or "demo" runs in a CHILD inference process (teleop_app.policy.child:
        torch is imported there, never here, so neither loading nor inference competes with the loop for
        this process's GIL); the control process talks to it over openpi's websocket protocol on
        127.0.0.1 with a per-child token. http(s)/ws(s) URLs are remote already and connect directly.
        spec["in_process"] = True loads a checkpoint in this process (the old way; benchmarks)."""
        spec = dict(spec)
        src = str(spec.pop("source", ""))
        chunk_mode = spec.pop("chunk_mode", "auto")     # remote: smooth; the project's VLA: ensemble
        remote_action = spec.pop("remote_action", None)
        in_process = bool(spec.pop("in_process", False))
        self.policy_state = PolicyState.LOADING

        def work():
            pol = None
            try:
                from teleop_app.policy.base import load_policy, policy_source
                from teleop_app.policy.runner import PolicyRunner
                kw = dict(spec)
                runner_cls = PolicyRunner
                source = policy_source(src)
                if source == "openvla":
                    kw.setdefault("profile", self.profile)
                    if remote_action:
                        kw["action_mode"] = {"eef": "ee_delta"}.get(remote_action, remote_action)
                if source != "checkpoint" or in_process:
                    pol = load_policy(src, **kw)
                else:
                    from teleop_app.policy.child import ChildPolicy, ChildPolicyRunner
                    if not src:
                        raise ValueError("no policy given (a checkpoint file, 'demo' or a server URL)")
                    if src != "demo" and not Path(src).is_file():
                        raise FileNotFoundError(f"no checkpoint file {src}")
                    pol = ChildPolicy(src, profile=self.profile, **{k: v for k, v in kw.items()
                                                                     if k in ("load_timeout", "timeout")})
                    runner_cls = ChildPolicyRunner
                runner = runner_cls(pol, chunk_mode, async_=True, lower=self.profile.lower(),
                                    upper=self.profile.upper())
                self.set_policy(runner, Path(src).name if "://" not in src else src)
                pid = getattr(pol, "pid", None)
                tta = (getattr(pol.meta, "extra", None) or {}).get("tta")
                self.say(f"policy loaded: {src}" + (f" (inference process {pid})" if pid else "")
                         + (f"; each step averaged over its images shifted +-{tta} px" if tta else "")
                         + self._sim_mismatch(pol, src))
            except Exception as e:  # noqa: BLE001 - any load failure is a message, not a crash
                if pol is not None and hasattr(pol, "close"):
                    try:
                        pol.close()             # e.g. a child whose policy does not fit this robot
                    except Exception:  # noqa: BLE001
                        pass
                self.policy_state = PolicyState.ERROR
                self.say(f"cannot load policy {src}: {e}")
        threading.Thread(target=work, name="policy-load", daemon=True).start()

    def _sim_mismatch(self, policy, src: str) -> str:
        """'; trained on the kinematic sim, this session runs the physics sim' when they differ."""
        wc = self.devices.workcell if self.devices is not None else None
        if wc is None:
            return ""
        from teleop_app.policy.evaluate import trained_sim
        said = trained_sim(policy, src)
        if said is None or said == wc.sim:
            return ""
        flag = "--kinematic" if said == "kinematic" else "--physics"
        return f"; it was trained on the {said} sim, this session runs the {wc.sim} sim ({flag} for its own)"

    def step_policy(self, n: int = 1) -> None:
        """Single-step the loaded policy: run it until it has produced `n` actions (the first may wait
        for an inference), then hold. A policy already running is stepped from where it is."""
        n = int(n)
        if n < 1:
            raise ValueError(f"step_policy needs n >= 1, got {n}")
        if self.policy_runner is None:
            raise SessionError("no policy loaded: load one first (load_policy / set_policy)")

        def do():
            if self.policy_runner is None:
                raise SessionError("no policy loaded: load one first (load_policy / set_policy)")
            src = self._source
            if (self.mode == Mode.POLICY and isinstance(src, PolicySource)
                    and src.runner is self.policy_runner and not src.stopped):
                src.budget = n              # keep its chunks: continue from where it is
                return
            src = self._policy_source()
            src.budget = n
            self._switch(Mode.POLICY, src, quiet=True)
            self.say(f"policy: step {n}")
        self._call(do)

    def clear_policy(self) -> None:
        def do():
            if self.mode == Mode.POLICY:
                self._switch(Mode.HOLD, HoldSource())
            old, self.policy_runner, self.policy_name = self.policy_runner, None, ""
            self.policy_state = PolicyState.NONE
            if old is not None and hasattr(old, "close") and self._hk is not None:
                self._hk.submit(old.close)
        self._post(do)

    def latest_frames(self) -> dict:
        """{camera: (image, timestamp)}: exactly the frames the last tick read (recorded / shown to the policy)."""
        frames = self.pipeline.frames if self.pipeline is not None else {}
        return {n: (f.image, f.timestamp) for n, f in frames.items()}

    def live_frames(self) -> dict:
        """{camera: (image, timestamp)}: each camera's newest frame, at the camera's own rate (30 fps while
        the loop may tick at 10 Hz), for the live view; the tick's frame where a camera gives none."""
        out = self.latest_frames()
        for name, cam in (self.devices.cameras.items() if self.devices is not None else ()):
            if name in self.camera_errors:
                continue
            try:
                f = cam.read_latest() if cam.is_connected else None
            except Exception:  # noqa: BLE001 - the tick reports camera faults; the view just keeps the tick's
                f = None
            if f is not None and (name not in out or f.timestamp >= out[name][1]):
                out[name] = (f.image, f.timestamp)
        return out

    # ================================================================ recording effects (in the tick)
    def _episode_meta(self, instruction: str):
        from recorder.schema import EpisodeMeta
        mode = getattr(self._source, "record_mode", "teleop")
        extra = {"robot_kind": self.config.robot, "control_mode": self.mode.value}
        if self.devices.workcell is not None:
            wc = self.devices.workcell
            extra.update(task=wc.task, seed=int(wc.seed), sim=wc.sim)
        meta = EpisodeMeta(instruction=instruction, fps=self.fps, robot=self.profile.name,
                           joint_names=self.profile.joint_names, mode=mode, operator=self.config.operator,
                           software_version=__version__, extra=extra)
        key = (instruction, mode, self.mode.value, extra.get("task"), extra.get("seed"))
        return key, meta

    def _make_writer(self, meta):
        """Housekeeping thread: create the episode files (path chosen here, after every earlier job)."""
        from recorder.writer import EpisodeWriter
        cams = {n: (c.height, c.width) for n, c in self._camera_specs().items()}
        # its writer and JPEG encoder threads take the helpers' real-time class as each starts
        return EpisodeWriter(self.store.new_episode_path(), meta, cameras=cams, dof=self.profile.dof,
                             jpeg=self.config.jpeg,
                             thread_init=realtime_helper if self._realtime_helpers else None)

    def _prepare_writer(self) -> None:
        """Create the next episode's writer ahead of time (countdown / reset), off the tick."""
        if self._prepared is not None or self._hk is None:
            return
        key, meta = self._episode_meta(self.workflow.instruction)
        self._prepared = (key, self._hk.submit(self._make_writer, meta))

    def _drop_prepared(self) -> None:
        p, self._prepared = self._prepared, None
        if p is not None and self._hk is not None:
            self._hk.submit(lambda f=p[1]: f.exception() is None and f.result().abort())

    def _begin_recording(self, instruction: str) -> None:
        key, meta = self._episode_meta(instruction)
        if self._prepared is not None and self._prepared[0] == key:
            fut = self._prepared[1]
            self._prepared = None
        else:
            self._drop_prepared()
            fut = self._hk.submit(self._make_writer, meta)
        self.pipeline.recorder.begin(fut)
        self.say(f"recording: '{instruction}'")

    def _end_recording(self) -> None:
        rec = self.pipeline.recorder
        w, left = rec.end()
        steps = rec.steps
        if w is None:
            return
        self._last_episode = self._hk.submit(self._finish, w, left)
        if self.devices and self.devices.workcell is not None:
            self.workflow.label = 1 if self.devices.workcell.success() else 0
        self.say(f"episode stopped: {steps} steps")

    def _finish(self, w, left):
        try:
            return finish_writer(w, left, -1)
        except Exception as e:  # noqa: BLE001
            self.say(f"recording failed: {e}")
            return None

    def _keep_episode(self, success: int) -> None:
        fut, self._last_episode = self._last_episode, None
        if fut is not None:
            self._hk.submit(self._store_episode, fut, int(success))
        self._settled()

    def _store_episode(self, fut: Future, success: int) -> None:
        p = fut.result()
        if p is None:
            return
        ep_id = self.store.add(p).id
        if success != -1:
            self.store.relabel(ep_id, success)
        self.say(f"kept episode {ep_id} ({'success' if success == 1 else 'failure' if success == 0 else 'unlabelled'})")

    def _discard_episode(self) -> None:
        fut, self._last_episode = self._last_episode, None
        if fut is not None:
            def rm():
                p = fut.result()
                if p is not None:
                    Path(p).unlink(missing_ok=True)
                    self.say("episode discarded")
            self._hk.submit(rm)
        self._settled()

    def _settled(self) -> None:
        if self.mode in (Mode.SCRIPTED, Mode.POLICY) and self.devices.workcell is not None:
            self._scene_reset_pending = True

    # ================================================================ the tick
    def _on_loop_error(self, e: BaseException) -> None:
        # A fault that lasts (a servo in hardware error, a cable out) fails every tick: say it and
        # e-stop once, not 50 times a second (that pushed every earlier message out of the log).
        text = f"control loop error: {type(e).__name__}: {e}"
        repeat = text == getattr(self, "_last_loop_error", None) and self.safety is not None and self.safety.estopped
        self._last_loop_error = text
        if not repeat:
            self.say(text)
            log.exception("control loop error", exc_info=e)
        try:
            if self.pipeline is not None and not repeat:
                self.pipeline.request_estop("loop error")
                self.pipeline._latch_estop()
        except Exception:  # noqa: BLE001
            pass
        # The tick never reached _before/_after: still run the queued commands (keep, discard,
        # reset_estop, a servo reboot) and publish the e-stop, or they would wait for the fault to end.
        try:
            self._run_queued()
            if self.pipeline is not None and self.pipeline.last_q is not None:
                q = np.asarray(self.pipeline.last_q, float)
                self._publish(q, None, q)
        except Exception:  # noqa: BLE001
            log.exception("after a control loop error")

    def _set_rate(self, fps: float) -> None:
        """The loop's rate, and the robot's bus transactions bounded by its tick (ServoArm.set_period)."""
        self.loop.set_rate(fps)
        robot = self.devices.robot if self.devices is not None else None
        if hasattr(robot, "set_period"):
            robot.set_period(1.0 / fps)

    def _tick(self, deadline: float, start: float) -> None:
        self.pipeline.step(start)

    def _before(self, ctx) -> None:
        """After the observation, before the source: commands, pad, workflow clock."""
        self._run_queued()
        pad = self._read_pad()
        cmd = self._pad_command(pad)
        for ev in cmd.events:           # buttons (e-stop above all) work in every mode
            self._pad_event(ev)
        if not getattr(self._source, "uses_pad", False):
            cmd = None                  # sticks only drive in the modes where a human drives
        ctx.pad, ctx.pad_cmd = pad, cmd
        rec = self.pipeline.recorder
        if rec.error:
            self.say(rec.error)
            rec.error = None
            self.workflow.stop()
        self.workflow.update(ctx.now)
        ctx.instruction = self.workflow.instruction
        ctx.recording = self.workflow.state == State.RECORDING
        ctx.seed = self._episode_seed

    def _after(self, ctx, res) -> None:
        rep = res.report
        if rep is not None and rep.rejected_nonfinite and self.mode == Mode.POLICY:
            self._request("stop_policy", "policy output was NaN/inf, nothing sent")
        wf = self.workflow.state
        if self._scene_reset_pending and not self.safety.estopped and wf in (
                State.RESETTING, State.IDLE, State.DONE, State.COUNTDOWN):
            self._scene_reset_pending = False
            self._reset_scene()
        elif (not self._scene_reset_pending and wf in (State.COUNTDOWN, State.RESETTING)
              and self._prepared is None and not self.safety.estopped):
            self._prepare_writer()
        q = res.obs.position
        self.history.append((ctx.now, q.copy(), res.sent.copy()))
        self._publish(q, res.raw, res.sent if res.written is None else res.written, ctx.pad, rep)

    def _read_pad(self) -> GamepadState:
        if self.gamepad is None:
            return GamepadState(connected=False)
        try:
            return self.gamepad.read()
        except Exception as e:  # noqa: BLE001
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
        if ev == "estop":
            self.estop("pad")
            return
        actions = {"start_episode": self.workflow.next, "stop_episode": self.workflow.stop,
                   "rerecord": self.workflow.rerecord, "home": self.go_home,
                   "success": lambda: self._label_and_keep(True),
                   "failure": lambda: self._label_and_keep(False),
                   "toggle_cartesian": self._toggle_cartesian}
        fn = actions.get(ev)
        if fn:
            fn()

    def _toggle_cartesian(self) -> None:
        """One pad button: joint <-> Cartesian gamepad mode (both record as teleop)."""
        other = {Mode.GAMEPAD: Mode.CARTESIAN, Mode.CARTESIAN: Mode.GAMEPAD}.get(self.mode)
        if other is not None and other in self.sources:
            try:
                self._switch(other)
            except (SessionError, ValueError) as e:
                self.say(f"cannot switch to {other.value}: {e}")

    def take_over(self) -> None:
        """Takeover mode: the operator takes over from the policy (GUI button); hand_back() returns it."""
        self._takeover_source().take_over()

    def hand_back(self) -> None:
        self._takeover_source().hand_back()

    def _takeover_source(self):
        src = self._source
        if not (hasattr(src, "take_over") and hasattr(src, "hand_back")):
            raise SessionError("take over works while a policy runs in takeover mode "
                               f"(set_mode(Mode.TAKEOVER)); the mode is '{self.mode.value}'")
        return src

    def move_leader(self, q) -> None:
        """Simulated leader only (attach_leader 'sim'): the operator's hand on it (GUI sliders, tests)."""
        sim = getattr(self, "sim_leader", None)
        if sim is None:
            raise SessionError("no simulated leader arm: start with --leader sim")
        sim.move(np.asarray(q, float))

    def _label_and_keep(self, success: bool) -> None:
        if self.workflow.state == State.REVIEW:
            self.workflow.keep(success)
        else:
            self.workflow.set_label(success)

    def _refresh_stats(self) -> None:
        """Loop percentiles cost 0.5-2 ms over thousands of ticks: computed on the housekeeping thread."""
        now = time.monotonic()
        job = self._stats_job
        if self.loop.ticks and now - self._stats_t > 0.25 and (job is None or job.done()) and self._hk:
            if job is not None and job.exception() is None:
                self._loop_stats = job.result()
            self._stats_t = now
            self._stats_job = self._hk.submit(self._stats_and_helpers)

    def _stats_and_helpers(self) -> LoopStats:
        self._promote_helpers()            # helper threads started since (cameras, sim, bus)
        return self.loop.stats()

    def _publish(self, q, raw, sent, pad=None, rep=None) -> None:
        wf = self.workflow
        now = time.monotonic()
        self._refresh_stats()
        self._seq += 1
        wc = self.devices.workcell if self.devices else None
        rep_src = self._replay_source()
        self.status = Status(
            t=now, connected=True, mode=self.mode, qpos=q.copy(),
            target=None if raw is None else np.asarray(raw, float).copy(),
            sent=None if sent is None else np.asarray(sent, float).copy(),
            torque=self.devices.robot.torque_enabled, estopped=self.safety.estopped,
            gamepad=pad or GamepadState(connected=False),
            group=self._pad_state.group if self._pad_state else "",
            loop=self._loop_stats, workflow=wf.state,
            time_left=wf.time_left(), kept=wf.kept, target_episodes=wf.config.target_episodes,
            instruction=wf.instruction, recording_steps=self.pipeline.recorder.steps if self.pipeline.recorder.active else 0,
            label=wf.label, sim_success=bool(wc.success()) if wc is not None else None,
            sim_task=wc.instruction if wc is not None else "",
            safety=self.safety.counters.as_dict(), last_safety=tuple(rep.reasons()) if rep else (),
            message=self.messages[-1] if self.messages else "",
            replay_progress=rep_src.progress if isinstance(self._source, ReplaySource) else (0, 0),
            policy=self.policy_name, policy_state=self.policy_state, seq=self._seq,
            estop_latency_s=self.pipeline.estop_latencies[-1] if self.pipeline.estop_latencies else None,
            messages_seq=self._n_messages,
            human=self._source.status() if hasattr(self._source, "status") else {})


# Human-in-the-loop modes (leader arm, Cartesian pad, policy takeover): teleop_app/human.py
from teleop_app.human import register_modes as _register_human_modes  # noqa: E402

_register_human_modes(register_source)
