"""Gamepad driver against a real SDL virtual joystick seen through pygame (no fakes)."""
import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import pytest

from drivers.gamepad import Gamepad, GamepadConfig, radial_deadzone
from drivers.interfaces import DeviceError
from drivers.virtual_gamepad import VirtualGamepad


@pytest.fixture
def gamepad():
    gp = Gamepad(GamepadConfig(deadzone=0.1))
    gp.connect()
    yield gp
    gp.disconnect()


@pytest.fixture
def vpad():
    pad = VirtualGamepad()
    yield pad
    pad.detach()


def test_no_gamepad_reads_disconnected_without_error(gamepad):
    s = gamepad.read()
    assert s.connected is False
    assert all(a == 0.0 for a in s.axes) and not any(s.buttons)
    assert s.pressed == set()


def test_read_before_connect_is_a_clear_error():
    with pytest.raises(DeviceError, match="connect"):
        Gamepad().read()


def test_virtual_pad_is_seen_with_name_and_layout(gamepad, vpad):
    vpad.attach()
    s = gamepad.read()
    assert s.connected and s.name == "teleop virtual pad"
    assert (len(s.axes), len(s.buttons), len(s.hats)) == (6, 11, 1)
    # triggers rest at -1 like a real Xbox pad, sticks at 0
    assert s.axes[2] == pytest.approx(-1.0) and s.axes[5] == pytest.approx(-1.0)
    assert s.axes[0] == 0.0 and s.axes[4] == 0.0


def test_axes_with_radial_deadzone(gamepad, vpad):
    vpad.attach()
    gamepad.read()
    vpad.set_axis(0, 0.05)
    vpad.set_axis(1, -0.05)
    s = gamepad.read()
    assert s.axes[0] == 0.0 and s.axes[1] == 0.0          # inside the radial deadzone
    vpad.set_axis(0, 1.0)
    vpad.set_axis(1, 0.0)
    assert gamepad.read().axes[0] == pytest.approx(1.0)   # full deflection is exactly 1
    vpad.set_axis(0, -1.0)
    assert gamepad.read().axes[0] == pytest.approx(-1.0)
    vpad.set_axis(0, 0.55)                                # rescaled: (0.55-0.1)/0.9
    assert gamepad.read().axes[0] == pytest.approx(0.5, abs=1e-3)
    vpad.set_axis(0, 0.0)
    vpad.set_axis(4, -0.6)                                # right stick pair (3, 4)
    s = gamepad.read()
    assert s.axes[4] == pytest.approx(-(0.6 - 0.1) / 0.9, abs=1e-3) and s.axes[0] == 0.0


def test_radial_deadzone_is_radial_and_clipped():
    # 0.08 on both axes: each inside 0.1, but the magnitude 0.113 is outside
    x, y = radial_deadzone(0.08, 0.08, 0.1)
    assert x > 0 and y > 0 and x == pytest.approx(y)
    x, y = radial_deadzone(1.0, 1.0, 0.1)                 # corner: magnitude clipped to 1
    assert (x * x + y * y) ** 0.5 == pytest.approx(1.0)


def test_buttons_hats_and_press_edges(gamepad, vpad):
    vpad.attach()
    gamepad.read()
    vpad.set_button(3, True)
    vpad.set_hat(0, (0, 1))
    s = gamepad.read()
    assert s.buttons[3] and not s.buttons[0]
    assert s.hats[0] == (0, 1)
    assert s.pressed == {3}
    s = gamepad.read()                                    # still held: no new edge
    assert s.buttons[3] and s.pressed == set()
    # a tap shorter than the read period is still reported once
    vpad.set_button(0, True)
    gamepad._pump()                       # SDL sees the press...
    vpad.set_button(0, False)                             # ...and release before read()
    s = gamepad.read()
    assert not s.buttons[0] and 0 in s.pressed
    assert gamepad.read().pressed == set()
    vpad.set_hat(0, (-1, 0))
    assert gamepad.read().hats[0] == (-1, 0)


def test_unplug_stops_motion_and_replug_reconnects(gamepad, vpad):
    vpad.attach()
    vpad.set_axis(0, 1.0)
    vpad.set_button(1, True)
    s = gamepad.read()
    assert s.connected and s.axes[0] == pytest.approx(1.0)
    vpad.detach()
    s = gamepad.read()
    assert s.connected is False
    assert s.axes == [0.0] * 6 and s.buttons == [False] * 11 and s.hats == [(0, 0)]
    assert not gamepad.is_connected
    vpad.attach()                                         # hot-plug back in
    s = gamepad.read()
    assert s.connected and s.name == "teleop virtual pad"
    vpad.set_axis(3, 1.0)
    assert gamepad.read().axes[3] == pytest.approx(1.0)


def test_pad_attached_before_connect_is_found(vpad):
    vpad.attach()
    gp = Gamepad()
    gp.connect()
    try:
        assert gp.is_connected and gp.read().connected
    finally:
        gp.disconnect()


def test_name_filter(vpad):
    vpad.attach()
    gp = Gamepad(GamepadConfig(name="no such pad"))
    gp.connect()
    try:
        assert gp.read().connected is False
    finally:
        gp.disconnect()
    gp = Gamepad(GamepadConfig(name="VIRTUAL pad"))
    gp.connect()
    try:
        assert gp.read().connected is True
    finally:
        gp.disconnect()


def test_virtual_pad_rejects_bad_indices_and_values(vpad):
    with pytest.raises(DeviceError, match="attach"):
        vpad.set_axis(0, 0.5)
    vpad.attach()
    with pytest.raises(IndexError, match="6 axis"):
        vpad.set_axis(6, 0.5)
    with pytest.raises(ValueError, match="hat value"):
        vpad.set_hat(0, (2, 0))


def test_bad_deadzone_config():
    with pytest.raises(ValueError, match="deadzone"):
        Gamepad(GamepadConfig(deadzone=1.0))


def test_plug_and_unplug_between_reads_does_not_break_reading(gamepad):
    # pygame 2.6 raises while converting the stale JOYDEVICEADDED of this blink
    blink = VirtualGamepad(name="blink")
    blink.attach()
    blink.set_axis(0, 0.5)
    blink.detach()
    assert gamepad.read().connected is False
    pad = VirtualGamepad()
    pad.attach()
    try:
        pad.set_axis(0, 1.0)
        s = gamepad.read()
        assert s.connected and s.axes[0] == pytest.approx(1.0)
    finally:
        pad.detach()


def test_two_pads_and_index_shift(gamepad):
    """Other engineers' tests may attach several pads: detaching the first must not
    detach the wrong one, and the reader follows the pad it opened."""
    a, b = VirtualGamepad(name="pad A"), VirtualGamepad(name="pad B")
    a.attach()
    b.attach()
    try:
        assert gamepad.read().name == "pad A"
        a.detach()                                   # b's device index shifts to 0
        b.set_axis(0, 1.0)
        s = gamepad.read()
        assert s.connected and s.name == "pad B" and s.axes[0] == pytest.approx(1.0)
        b.detach()
        assert gamepad.read().connected is False
    finally:
        a.detach()
        b.detach()


def test_virtual_pad_survives_joystick_subsystem_shutdown():
    import pygame
    pad = VirtualGamepad()
    pad.attach()
    pygame.joystick.quit()                          # frees the device behind our back
    pygame.joystick.init()
    with pytest.raises(DeviceError, match="vanished"):
        pad.set_axis(0, 0.5)
    pad.detach()                                    # no crash, no double free
    pad.attach()
    pad.set_axis(0, 0.5)
    pad.detach()


def test_read_from_a_worker_thread():
    """The control loop polls from its own thread (Qt owns the main one)."""
    import threading
    out = {}

    def worker():
        gp = Gamepad()
        gp.connect()
        with VirtualGamepad() as pad:
            pad.set_axis(3, -1.0)
            pad.set_button(2, True)
            s = gp.read()
            out["state"] = (s.connected, s.axes[3], s.pressed)
        out["after"] = gp.read().connected
        gp.disconnect()

    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    assert out["state"] == (True, pytest.approx(-1.0), {2}) and out["after"] is False


def test_list_gamepads():
    from drivers.gamepad import list_gamepads
    assert list_gamepads() == []
    with VirtualGamepad(name="listed pad"):
        pads = list_gamepads()
        assert [(p["name"], p["axes"], p["buttons"], p["hats"]) for p in pads] == [("listed pad", 6, 11, 1)]
    assert list_gamepads() == []
