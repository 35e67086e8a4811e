"""Gamepad -> joint mapping: TOML files, validation, and behaviour with a real SDL virtual pad."""
import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import numpy as np
import pytest

from drivers.gamepad import Gamepad, GamepadConfig
from drivers.interfaces import GamepadState
from drivers.virtual_gamepad import VirtualGamepad
from teleop_app.mapping import (AxisBinding, ButtonBinding, Group, HatBinding, Mapping,
                                MappingError, MappingState, apply, builtin_mappings,
                                default_mapping, load_mapping, save_mapping)

MAX = np.array([1.5, 1.5, 1.5, 1.5, 2.0, 2.0, 2.0, 3.0])
GRIP = 7


# ----------------------------------------------------------------------------- files
def test_toml_round_trip(tmp_path):
    m = default_mapping(8)
    m.buttons.append(ButtonBinding(9, "joint_plus", joint=6, value=0.25))
    m.hats.append(HatBinding(0, "up", "joint_minus", joint=2))
    p = tmp_path / "m.toml"
    save_mapping(m, p)
    assert load_mapping(p) == m


def test_builtin_xbox_sim7_loads_and_validates():
    assert "xbox_sim7" in builtin_mappings()
    from teleop_app.mapping import MAPPINGS_DIR
    m = load_mapping(MAPPINGS_DIR / "xbox_sim7.toml")
    m.validate(8)
    assert m.group_names() == ["shoulder", "wrist"]


@pytest.mark.parametrize("dof", [8, 6, 2])
def test_default_mapping_validates(dof):
    m = default_mapping(dof)
    m.validate(dof)
    arm_joints = sorted({a.joint for g in m.groups for a in g.axes if not a.trigger})
    assert arm_joints == list(range(dof - 1))          # every arm joint reachable


def _write(tmp_path, text):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    return p


GOOD_HEAD = 'name = "t"\n[[groups]]\nname = "g"\naxes = [{ axis = 0, joint = 0 }]\n'


def test_unknown_action_names_the_field(tmp_path):
    p = _write(tmp_path, GOOD_HEAD + '[[buttons]]\nbutton = 0\naction = "fly"\n')
    with pytest.raises(MappingError, match=r"buttons\[0\]\.action.*'fly'"):
        load_mapping(p)


def test_wrong_type_names_the_field(tmp_path):
    p = _write(tmp_path, 'name = "t"\n[[groups]]\nname = "g"\naxes = [{ axis = "LX", joint = 0 }]\n')
    with pytest.raises(MappingError, match=r"groups\[0\]\.axes\[0\]\.axis: expected int"):
        load_mapping(p)
    p = _write(tmp_path, GOOD_HEAD.replace('name = "t"', 'name = "t"\nspeed_scale = "fast"'))
    with pytest.raises(MappingError, match="speed_scale: expected float"):
        load_mapping(p)


def test_joint_out_of_range_for_dof(tmp_path):
    p = _write(tmp_path, 'name = "t"\n[[groups]]\nname = "g"\naxes = [{ axis = 0, joint = 9 }]\n')
    m = load_mapping(p)                                  # dof not known yet: loads
    with pytest.raises(MappingError, match=r"groups\[0\] 'g' axes\[0\]\.joint: joint 9 out of range for dof 8"):
        m.validate(8)
    m = default_mapping(8)
    with pytest.raises(MappingError, match="out of range for dof 6"):
        m.validate(6)


def test_other_malformed_files(tmp_path):
    with pytest.raises(MappingError, match="not found"):
        load_mapping(tmp_path / "nope.toml")
    with pytest.raises(MappingError, match="not valid TOML"):
        load_mapping(_write(tmp_path, "name = \n"))
    with pytest.raises(MappingError, match="unknown field.*'speed'"):
        load_mapping(_write(tmp_path, GOOD_HEAD.replace('name = "t"', 'name = "t"\nspeed = 1')))
    with pytest.raises(MappingError, match="needs a joint"):
        load_mapping(_write(tmp_path, GOOD_HEAD + '[[buttons]]\nbutton = 0\naction = "joint_plus"\n'))
    with pytest.raises(MappingError, match=r"hats\[0\]\.direction"):
        load_mapping(_write(tmp_path, GOOD_HEAD + '[[hats]]\ndirection = "north"\naction = "home"\n'))
    with pytest.raises(MappingError, match="missing field 'name'"):
        load_mapping(_write(tmp_path, '[[groups]]\nname = "g"\n'))
    with pytest.raises(MappingError, match="at least one"):
        load_mapping(_write(tmp_path, 'name = "t"\n'))


# ----------------------------------------------------------------------------- behaviour
def test_disconnected_pad_gives_zero_and_no_events():
    m = default_mapping(8)
    prev = GamepadState(connected=True, axes=[1.0] * 6, buttons=[False] * 11, hats=[(0, 0)])
    cmd = apply(m, GamepadState(connected=False, pressed=set()), prev, MAX, GRIP)
    assert not cmd.joint_velocity.any() and cmd.events == [] and cmd.gripper is None


@pytest.fixture
def rig():
    """A real virtual pad read through the real Gamepad driver."""
    pad = VirtualGamepad()
    gp = Gamepad(GamepadConfig(deadzone=0.1))
    gp.connect()
    pad.attach()
    yield pad, gp
    pad.detach()
    gp.disconnect()


def test_left_stick_moves_mapped_joint_with_sign(rig):
    pad, gp = rig
    ms = MappingState(default_mapping(8))
    assert not ms.update(gp.read(), MAX, GRIP).joint_velocity.any()   # at rest: no motion
    pad.set_axis(0, 1.0)                                   # LX right -> joint 0 +
    v = ms.update(gp.read(), MAX, GRIP).joint_velocity
    assert v[0] == pytest.approx(0.5 * 1.5) and np.count_nonzero(v) == 1
    pad.set_axis(0, 0.0)
    pad.set_axis(1, -1.0)                                  # LY up (SDL: negative) -> joint 1 + (inverted)
    v = ms.update(gp.read(), MAX, GRIP).joint_velocity
    assert v[1] == pytest.approx(0.5 * 1.5) and np.count_nonzero(v) == 1


def test_invert_and_binding_deadzone(rig):
    pad, gp = rig
    m = Mapping(name="t", speed_scale=1.0, groups=[Group("g", [
        AxisBinding(axis=0, joint=2, scale=2.0, invert=True, deadzone=0.3)])])
    ms = MappingState(m)
    pad.set_axis(0, 0.3)                                   # driver: 0.222 -> binding dz 0.3 -> 0
    assert ms.update(gp.read(), MAX, GRIP).joint_velocity[2] == 0.0
    pad.set_axis(0, 0.5)                                   # driver 0.444 -> (0.444-0.3)/0.7 = 0.206
    v = ms.update(gp.read(), MAX, GRIP).joint_velocity[2]
    assert v == pytest.approx(-((0.4 / 0.9 - 0.3) / 0.7) * 2.0 * 1.5, abs=1e-3)
    pad.set_axis(0, 1.0)                                   # clipped at the joint's max speed
    assert ms.update(gp.read(), MAX, GRIP).joint_velocity[2] == pytest.approx(-1.5)


def test_group_switching_on_button_edge(rig):
    pad, gp = rig
    ms = MappingState(default_mapping(8))
    ms.update(gp.read(), MAX, GRIP)
    pad.set_button(5, True)                                # RB -> next group
    cmd = ms.update(gp.read(), MAX, GRIP)
    assert cmd.group == "wrist" and cmd.events == []
    assert ms.update(gp.read(), MAX, GRIP).group == "wrist"   # held: no second switch
    pad.set_axis(0, 1.0)                                   # LX now drives joint 4
    v = ms.update(gp.read(), MAX, GRIP).joint_velocity
    assert v[4] == pytest.approx(0.5 * 2.0) and v[0] == 0.0
    pad.set_button(5, False)
    ms.update(gp.read(), MAX, GRIP)
    pad.set_button(5, True)                                # wraps around
    assert ms.update(gp.read(), MAX, GRIP).group == "shoulder"
    pad.set_hat(0, (-1, 0))                                # d-pad left -> prev group
    assert ms.update(gp.read(), MAX, GRIP).group == "wrist"


def test_gripper_buttons_and_triggers(rig):
    pad, gp = rig
    ms = MappingState(default_mapping(8))
    cmd = ms.update(gp.read(), MAX, GRIP)
    assert cmd.gripper is None and cmd.joint_velocity[GRIP] == 0.0   # triggers at rest (-1)
    pad.set_button(0, True)                                # A closes
    assert ms.update(gp.read(), MAX, GRIP).gripper == 0.0
    assert ms.update(gp.read(), MAX, GRIP).gripper is None            # unchanged while held
    pad.set_button(0, False)
    pad.set_button(1, True)                                # B opens
    assert ms.update(gp.read(), MAX, GRIP).gripper == 1.0
    pad.set_button(1, False)
    pad.set_axis(5, 1.0)                                   # RT fully pressed -> closing velocity
    v = ms.update(gp.read(), MAX, GRIP).joint_velocity
    assert v[GRIP] == pytest.approx(-0.5 * 3.0)
    pad.set_axis(5, -1.0)
    pad.set_axis(2, 0.0)                                   # LT half -> opening at ~half speed
    v = ms.update(gp.read(), MAX, GRIP).joint_velocity
    assert v[GRIP] == pytest.approx((0.5 - 0.05) / 0.95 * 0.5 * 3.0, abs=1e-3)


def test_untouched_trigger_reading_zero_is_ignored():
    m = default_mapping(8)
    ms = MappingState(m)
    s = GamepadState(connected=True, axes=[0.0] * 6, buttons=[False] * 11, hats=[(0, 0)])
    assert ms.update(s, MAX, GRIP).joint_velocity[GRIP] == 0.0


def test_gripper_toggle():
    m = Mapping(name="t", groups=[Group("g")], buttons=[ButtonBinding(0, "gripper_toggle", value=0.1)])
    ms = MappingState(m)
    up = GamepadState(connected=True, buttons=[False])
    down = GamepadState(connected=True, buttons=[True])
    ms.update(up, MAX, GRIP)
    assert ms.update(down, MAX, GRIP).gripper == 0.1
    ms.update(up, MAX, GRIP)
    assert ms.update(down, MAX, GRIP).gripper == 1.0


def test_events_fire_once_per_press(rig):
    pad, gp = rig
    ms = MappingState(default_mapping(8))
    ms.update(gp.read(), MAX, GRIP)
    pad.set_button(7, True)                                # Start
    assert ms.update(gp.read(), MAX, GRIP).events == ["start_episode"]
    for _ in range(3):                                     # held
        assert ms.update(gp.read(), MAX, GRIP).events == []
    pad.set_button(7, False)
    assert ms.update(gp.read(), MAX, GRIP).events == []
    pad.set_button(8, True)                                # Guide: e-stop
    pad.set_button(3, True)                                # Y: success, same read
    assert sorted(ms.update(gp.read(), MAX, GRIP).events) == ["estop", "success"]
    pad.set_hat(0, (0, -1))                                # d-pad down: stop
    assert ms.update(gp.read(), MAX, GRIP).events == ["stop_episode"]
    assert ms.update(gp.read(), MAX, GRIP).events == []
    # a quick tap between two reads still fires exactly once
    pad.set_button(6, True)
    gp._pump()
    pad.set_button(6, False)
    assert ms.update(gp.read(), MAX, GRIP).events == ["rerecord"]
    assert ms.update(gp.read(), MAX, GRIP).events == []


def test_unplug_mid_motion_stops_and_replug_does_not_fire(rig):
    pad, gp = rig
    ms = MappingState(default_mapping(8))
    pad.set_axis(3, 1.0)
    assert ms.update(gp.read(), MAX, GRIP).joint_velocity[2] > 0
    pad.detach()
    cmd = ms.update(gp.read(), MAX, GRIP)
    assert not cmd.joint_velocity.any() and cmd.events == []
    pad.attach()
    cmd = ms.update(gp.read(), MAX, GRIP)
    assert not cmd.joint_velocity.any() and cmd.events == []


def test_joint_jog_buttons():
    m = Mapping(name="t", speed_scale=0.5, groups=[Group("g")],
                buttons=[ButtonBinding(0, "joint_plus", joint=3), ButtonBinding(1, "joint_minus", joint=3, value=0.5)])
    m.validate(8)
    ms = MappingState(m)
    v = ms.update(GamepadState(connected=True, buttons=[True, False]), MAX, GRIP).joint_velocity
    assert v[3] == pytest.approx(0.75)
    v = ms.update(GamepadState(connected=True, buttons=[False, True]), MAX, GRIP).joint_velocity
    assert v[3] == pytest.approx(-0.375)
