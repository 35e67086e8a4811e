"""The whole control loop against the sim: real loop thread, real virtual SDL gamepad, real files."""
import time

import numpy as np
import pytest

from recorder.reader import read_episode
from recorder.store import EpisodeStore
from teleop_app.session import Mode, Session, SessionConfig, SessionError
from teleop_app.workflow import WorkflowConfig
import waiting  # noqa: E402 (tests/waiting.py)


def wait_for(cond, timeout=5.0, dt=0.01):
    return waiting.wait_for(cond, timeout, dt)


def make(tmp_path, **kw):
    wf = kw.pop("workflow", WorkflowConfig(countdown_s=0, reset_s=0, episode_s=0, target_episodes=5))
    cfg = SessionConfig(dataset=str(tmp_path / "ds"), fps=kw.pop("fps", 20), workflow=wf, **kw)
    return Session(cfg)


def test_stick_moves_mapped_joint_the_right_way_and_estop_halts(tmp_path, attached_pad):
    with make(tmp_path) as s:
        s.set_mode(Mode.GAMEPAD)
        assert wait_for(lambda: s.status.gamepad.connected), "session never saw the virtual pad"
        m = s.mapping.groups[0].axes
        b = next(a for a in m if a.axis == 0)            # left stick X
        q0 = s.status.qpos[b.joint]
        attached_pad.set_axis(0, 1.0)
        sign = -1 if b.invert else 1
        assert wait_for(lambda: sign * (s.status.qpos[b.joint] - q0) > 0.05), "joint did not move"
        # E-stop: the commanded target freezes within one tick even with the stick held.
        s.estop()
        time.sleep(0.1)
        held = s.status.sent.copy()
        time.sleep(0.3)
        assert np.array_equal(s.status.sent, held) and s.status.estopped
        attached_pad.set_axis(0, 0.0)
        s.reset_estop()
        assert not s.status.estopped or wait_for(lambda: not s.status.estopped)


def test_unplugged_pad_stops_motion(tmp_path, attached_pad):
    with make(tmp_path) as s:
        s.set_mode(Mode.GAMEPAD)
        assert wait_for(lambda: s.status.gamepad.connected)
        attached_pad.set_axis(0, 1.0)
        time.sleep(0.2)
        attached_pad.detach()
        assert wait_for(lambda: not s.status.gamepad.connected)
        time.sleep(0.1)
        a = s.status.sent.copy()
        time.sleep(0.3)
        assert np.allclose(s.status.sent, a), "arm kept moving after the pad was unplugged"


def test_watchdog_holds_when_commands_stop(tmp_path):
    with make(tmp_path, use_gamepad=False) as s:
        assert wait_for(lambda: s.status.qpos is not None)
        q = s.status.qpos.copy()
        s.jog(np.r_[0.5, np.zeros(7)])          # one jog, never refreshed
        time.sleep(1.0)
        moved = s.status.sent[0] - q[0]
        # Moves for at most watchdog_s (0.5 s at 0.5 rad/s = 0.25 rad), then holds.
        assert 0.05 < moved < 0.3
        assert s.safety.counters.watchdog_trips > 0
        a = s.status.sent.copy()
        time.sleep(0.3)
        assert np.allclose(s.status.sent, a)


def test_limits_hold_under_commands_beyond_them(tmp_path):
    with make(tmp_path, use_gamepad=False) as s:
        for _ in range(30):
            s.command(s.profile.upper() + 5.0)
            time.sleep(0.02)
        st = s.status
        assert np.all(st.sent <= s.profile.upper() + 1e-9)
        assert np.all(np.abs(np.diff([h[2] for h in s.history], axis=0))
                      <= s.profile.max_speed() * s.period + 1e-9)
        s.command(np.full(8, np.nan))
        time.sleep(0.1)
        assert np.all(np.isfinite(s.status.sent)) and s.safety.counters.rejected_nonfinite >= 1


def test_kinesthetic_recording_action_is_next_measured_position(tmp_path):
    with make(tmp_path, use_gamepad=False) as s:
        s.set_mode(Mode.KINESTHETIC)
        assert not s.devices.robot.torque_enabled
        s.start_episode()
        assert wait_for(lambda: s.status.workflow == "recording")
        q = s.status.qpos.copy()
        for k in range(20):                       # the "hand" moves joint 1 slowly
            q[0] += 0.01
            s.push(q)
            time.sleep(0.05)
        s.stop_episode()
        s.keep(success=True)
        s.set_mode(Mode.GAMEPAD)                  # leaving: torque back on at the present position
        assert s.devices.robot.torque_enabled
        here = s.devices.robot.get_observation().position
        time.sleep(0.2)
        assert np.allclose(s.devices.robot.get_observation().position, here, atol=1e-3), "arm jumped"
    store = EpisodeStore.open(tmp_path / "ds")
    (info,) = store.episodes()
    ep = read_episode(tmp_path / "ds" / info.file)
    assert ep.meta.mode == "kinesthetic" and ep.success == 1 and ep.num_steps > 10
    assert np.allclose(ep.action[:-1, :7], ep.qpos[1:, :7])
    assert ep.qpos[-1, 0] - ep.qpos[0, 0] > 0.1
    assert np.all(np.diff(ep.timestamp) > 0)


def test_scripted_mode_records_unattended_in_real_time(tmp_path):
    wf = WorkflowConfig(countdown_s=0, reset_s=0.1, episode_s=20, target_episodes=2, auto_keep=True,
                        instructions=["pick up the red cube"])
    with make(tmp_path, use_gamepad=False, fps=50, workflow=wf) as s:
        s.set_mode(Mode.SCRIPTED)
        s.start_episode()
        assert wait_for(lambda: s.workflow.state.value == "done", timeout=40), s.messages
    eps = EpisodeStore.open(tmp_path / "ds").episodes()
    assert len(eps) == 2 and all(e.success == 1 for e in eps)
    ep = read_episode(tmp_path / "ds" / eps[0].file)
    assert ep.meta.mode == "scripted" and "front" in ep.cameras
    dt = np.diff(ep.timestamp)
    assert abs(np.median(dt) - 0.02) < 0.002      # measured, at the requested 50 Hz


def test_replay_follows_recorded_actions_through_safety(tmp_path):
    from teleop_app.scripted import record_scripted
    (path,) = record_scripted(tmp_path / "demo", ["pick_red"], 1, seed=3, fps=10)
    ep = read_episode(path)
    with make(tmp_path, use_gamepad=False, fps=10) as s:
        s.start_replay(path)
        assert wait_for(lambda: s.mode == Mode.HOLD and "replay finished" in s.messages[-1], timeout=30)
        final = s.devices.robot.get_observation().position
    assert np.allclose(final[:7], ep.action[-1, :7], atol=0.05)


def test_switching_mode_while_recording_is_refused(tmp_path):
    with make(tmp_path, use_gamepad=False) as s:
        s.start_episode()
        assert wait_for(lambda: s.status.workflow == "recording")
        with pytest.raises(SessionError, match="stop the episode"):
            s.set_mode(Mode.KINESTHETIC)


def test_an_instruction_of_another_sim_task_sets_that_task_up(tmp_path):
    """The policy tab judged "put the red cube in the bowl" a success once the cube was lifted: the sim kept the
    scene's pick task. An instruction of one of the sim's tasks now sets that task up, and so does another wording
    of one (its kind from the fixture it names, drivers.sim.tasks.task_named_in); other words do not."""
    with make(tmp_path, use_gamepad=False) as s:
        wc = s.devices.workcell
        assert wait_for(lambda: s.status.qpos is not None) and wc.task == "pick_red"
        s.set_instruction("Put the red cube in the bowl.")
        assert wait_for(lambda: wc.task == "red_in_bowl"), list(s.messages)
        assert "sim task: red_in_bowl" in s.messages[-1]
        assert wait_for(lambda: s.status.sim_task == "put the red cube in the bowl")     # what the views show
        s.set_instruction("the blue cube belongs inside the bowl")       # no such sim task: judged as it was
        assert wait_for(lambda: s.status.instruction == "the blue cube belongs inside the bowl")
        assert wc.task == "red_in_bowl"
        s.set_instruction("pick up the blue cube")
        assert wait_for(lambda: wc.task == "pick_blue") and s.workflow.instruction == "pick up the blue cube"
        s.set_instruction("grab the red cube and lift it")               # a wording: the same kind, the object named
        assert wait_for(lambda: wc.task == "pick_red")
        s.set_instruction("the red cube belongs inside the bowl")        # a wording of another kind: the bowl named
        assert wait_for(lambda: wc.task == "red_in_bowl")
        s.set_instruction("raise the red cube off the table")            # nothing named but the cube: a pick
        assert wait_for(lambda: wc.task == "pick_red")
        s.set_instruction("pick up the blue cube")
        assert wait_for(lambda: wc.task == "pick_blue")
        assert wc.sim == "physics"
        s.set_instruction("put the red cube on the plate")     # a fixture the scene lacks: a new scene, same seed
        assert wait_for(lambda: wc.task == "red_on_plate") and wc.scene.kind == "place_plate"
        s.set_instruction("pick up the blue cube")
        assert wait_for(lambda: wc.task == "pick_blue")
        s.start_episode()
        assert wait_for(lambda: s.status.workflow == "recording")
        s.set_instruction("pick up the red cube")           # the episode under way keeps its task
        assert wait_for(lambda: s.workflow.instruction == "pick up the red cube")
        assert wc.task == "pick_blue"


def test_headless_scripted_recording_of_20_episodes(tmp_path):
    from teleop_app.scripted import record_scripted
    paths = record_scripted(tmp_path / "ds", ["pick_red", "pick_blue"], 10, seed=100, fps=10, image_size=96)
    assert len(paths) >= 19                        # the expert solves >= 98%
    store = EpisodeStore.open(tmp_path / "ds")
    infos = store.episodes()
    assert len(infos) == len(paths)
    instr = {e.instruction for e in infos}
    assert instr == {"pick up the red cube", "pick up the blue cube"}
    ep = read_episode(paths[0])
    assert ep.images("front").shape[1:] == (96, 96, 3) and ep.success == 1


@pytest.mark.parametrize("protocol", ["dynamixel", "feetech"])
def test_sim_serial_session_drives_arm_through_real_serial_driver(tmp_path, protocol):
    with make(tmp_path, robot="sim-serial", protocol=protocol, use_gamepad=False, fps=20) as s:
        from drivers.bus.arm import ServoArm
        assert isinstance(s.devices.robot, ServoArm) and s.devices.robot.config.port.startswith("/dev/")
        assert wait_for(lambda: s.status.qpos is not None)
        q = s.status.qpos.copy()
        goal = q.copy()
        goal[0] += 0.2
        goal[-1] = 0.4
        s.start_episode()

        def moved():
            s.command(goal)
            return abs(s.status.qpos[0] - goal[0]) < 0.01 and abs(s.status.qpos[-1] - 0.4) < 0.01
        assert wait_for(moved, timeout=10), (s.status.qpos, list(s.messages))
        s.stop_episode()
        s.keep()
        assert s.safety.counters.estops == 0
    (info,) = EpisodeStore.open(tmp_path / "ds").episodes()
    ep = read_episode(tmp_path / "ds" / info.file)
    assert ep.qpos[-1, 0] - ep.qpos[0, 0] > 0.15


def test_watchdog_counts_one_trip_per_stale_command_stream(tmp_path):
    with make(tmp_path, use_gamepad=False) as s:
        s.jog(np.r_[0.1, np.zeros(7)])
        time.sleep(1.2)                      # stale after 0.5 s, then idle ticks
        assert s.safety.counters.watchdog_trips == 1
        s.set_workflow(countdown_s=0.8, target_episodes=7)
        assert s.workflow.config.countdown_s == 0.8 and s.workflow.config.target_episodes == 7
        with pytest.raises(AttributeError, match="no setting"):
            s.set_workflow(bogus=1)


def test_pad_estop_button_works_in_scripted_mode(tmp_path, attached_pad):
    wf = WorkflowConfig(countdown_s=0, reset_s=0.1, episode_s=20, target_episodes=5, auto_keep=True)
    with make(tmp_path, fps=20, workflow=wf) as s:
        s.set_mode(Mode.SCRIPTED)
        assert wait_for(lambda: s.status.gamepad.connected)
        s.start_episode()
        assert wait_for(lambda: s.status.recording_steps > 5)
        estop_btn = next(b.button for b in s.mapping.buttons if b.action == "estop")
        attached_pad.set_button(estop_btn, True)
        assert wait_for(lambda: s.status.estopped, timeout=2)
        attached_pad.set_button(estop_btn, False)
        held = s.status.sent.copy()
        time.sleep(0.3)
        assert np.array_equal(s.status.sent, held)
        assert s.workflow.state.value != "recording"      # the episode was ended, not lost


class _ScriptedPolicy:
    """A stand-in policy with real metadata: holds the pose, then emits NaN from step `bad_at`."""

    def __init__(self, profile, bad_at=None, chunk=1):
        from teleop_app.policy.base import PolicyMeta
        self.meta = PolicyMeta(joint_names=profile.joint_names, action_dim=profile.dof, fps=20,
                               cameras=["front"], chunk_size=chunk)
        self.bad_at, self.n = bad_at, 0

    def reset(self):
        self.n = 0

    def predict(self, obs):
        self.n += 1
        q = np.asarray(obs["qpos"], float).copy()
        q[0] += 0.02
        if self.bad_at is not None and self.n >= self.bad_at:
            q[:] = np.nan
        return np.tile(q, (self.meta.chunk_size, 1))


@pytest.mark.parametrize("chunk", [1, 4])
def test_policy_mode_moves_then_nan_is_blocked_and_reported(tmp_path, chunk):
    from teleop_app.policy.base import PolicyMismatchError
    from teleop_app.policy.runner import PolicyRunner
    with make(tmp_path, use_gamepad=False) as s:
        pol = _ScriptedPolicy(s.profile, bad_at=15, chunk=chunk)
        wrong = _ScriptedPolicy(s.profile)
        wrong.meta.fps = 10
        with pytest.raises(PolicyMismatchError, match="policy trained at 10 Hz, robot runs at 20 Hz"):
            s.set_policy(PolicyRunner(wrong), "wrong-rate")
        s.set_policy(PolicyRunner(pol, lower=s.profile.lower(), upper=s.profile.upper()), "scripted-nan")
        q0 = s.status.qpos[0]
        s.set_mode(Mode.POLICY)
        assert wait_for(lambda: s.mode == Mode.HOLD, timeout=5), "NaN policy was not stopped"
        assert any("nothing sent" in m for m in s.messages), list(s.messages)
        assert s.status.qpos[0] > q0 + 0.05                 # it did drive the arm before the NaN
        assert np.all(np.isfinite(np.array([h[2] for h in s.history])))
        assert not s.safety.estopped


def test_dataset_of_another_robot_is_refused_and_hardware_released(tmp_path):
    from recorder.store import EpisodeStore as Store
    Store.create(tmp_path / "ds", "koch", 30, ["a", "b"], {"front": (480, 640)})
    s = make(tmp_path, use_gamepad=False)
    with pytest.raises(SessionError, match="koch"):
        s.connect()
    assert s.devices is None
