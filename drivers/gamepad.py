"""Gamepad input through pygame (SDL2 joystick API), with hot-plug.

Only SDL's joystick subsystem is used for input. pygame's event queue needs SDL's video
subsystem, so it is initialised with the "dummy" driver (no window, no display needed)
unless the host process already set one up. SDL_JOYSTICK_ALLOW_BACKGROUND_EVENTS=1 keeps
input flowing while another toolkit's window (Qt) has the focus.

`read()` never raises because a pad is missing: it returns `connected=False` with axes
at zero, so an unplugged pad mid-episode stops motion instead of crashing the loop.
Call `read()` from one thread only (any thread).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

from drivers.interfaces import DeviceError, GamepadState

_RESCAN_PERIOD = 1.0     # s; fallback scan when events were consumed by someone else


@dataclass
class GamepadConfig:
    index: int | None = None            # SDL device index to use; None = first matching
    name: str | None = None             # case-insensitive substring of the device name
    deadzone: float = 0.1               # radial, on each stick pair, with rescaling
    stick_pairs: list[tuple[int, int]] = field(default_factory=lambda: [(0, 1), (3, 4)])


def radial_deadzone(x: float, y: float, dz: float) -> tuple[float, float]:
    """Zero inside radius dz; outside, rescale so the edge of the deadzone maps to 0
    and full deflection to 1 (magnitude clipped to 1: sticks' corners exceed it)."""
    mag = math.hypot(x, y)
    if mag <= dz or mag == 0.0:
        return 0.0, 0.0
    new = min(1.0, (mag - dz) / (1.0 - dz))
    k = new / mag
    return x * k, y * k


def _norm_axis(v: float) -> float:
    # pygame divides SDL's Sint16 by 32768, so full positive is 0.99997: undo that.
    return max(-1.0, min(1.0, v * 32768.0 / 32767.0))


class Gamepad:
    """One gamepad (the first one matching the config), hot-pluggable."""

    def __init__(self, config: GamepadConfig | None = None):
        self.config = config or GamepadConfig()
        if not 0.0 <= self.config.deadzone < 1.0:
            raise ValueError(f"gamepad deadzone must be in [0, 1), got {self.config.deadzone}")
        self._pg = None
        self._joy = None                 # pygame.joystick.JoystickType
        self._instance_id: int | None = None
        self._name = ""
        self._counts = (0, 0, 0)         # axes, buttons, hats of the last pad seen
        self._prev_buttons: list[bool] = []
        self._pressed: set[int] = set()
        self._last_scan = 0.0
        self._started = False

    # -- lifecycle -----------------------------------------------------------------
    def connect(self) -> None:
        """Start SDL's joystick input and open a pad if one is attached (no error if not)."""
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        os.environ.setdefault("SDL_JOYSTICK_ALLOW_BACKGROUND_EVENTS", "1")
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        try:
            import pygame
        except ImportError as e:
            raise DeviceError("gamepad needs pygame: pip install pygame") from e
        self._pg = pygame
        pygame.joystick.init()
        if not pygame.display.get_init():
            try:
                pygame.display.init()          # event queue only; no window is created
            except pygame.error as e:
                raise DeviceError(f"gamepad: SDL could not start its event queue ({e}); "
                                  "set SDL_VIDEODRIVER=dummy") from e
        self._started = True
        self._pump()
        if self._joy is None:
            self._scan()

    def disconnect(self) -> None:
        self._close()
        self._started = False

    @property
    def is_connected(self) -> bool:
        return self._joy is not None

    @property
    def name(self) -> str:
        return self._name

    # -- reading -------------------------------------------------------------------
    def read(self) -> GamepadState:
        """Pump SDL events and return the current state (deadzone applied)."""
        if not self._started:
            raise DeviceError("gamepad: call connect() before read()")
        self._pump()
        now = time.monotonic()
        if self._joy is None and now - self._last_scan > _RESCAN_PERIOD:
            self._scan()
        joy = self._joy
        n_axes, n_buttons, n_hats = self._counts
        if joy is None:
            self._pressed.clear()
            self._prev_buttons = []
            return GamepadState(connected=False, name="", axes=[0.0] * n_axes,
                                buttons=[False] * n_buttons, hats=[(0, 0)] * n_hats,
                                timestamp=now)
        try:
            axes = [_norm_axis(joy.get_axis(i)) for i in range(n_axes)]
            buttons = [bool(joy.get_button(i)) for i in range(n_buttons)]
            hats = [tuple(int(v) for v in joy.get_hat(i)) for i in range(n_hats)]
        except self._pg.error:                      # vanished between pump and read
            self._close()
            return self.read()
        dz = self.config.deadzone
        for a, b in self.config.stick_pairs:
            if a < n_axes and b < n_axes:
                axes[a], axes[b] = radial_deadzone(axes[a], axes[b], dz)
        pressed = set(self._pressed)
        pressed |= {i for i, on in enumerate(buttons)
                    if on and (i >= len(self._prev_buttons) or not self._prev_buttons[i])}
        self._pressed.clear()
        self._prev_buttons = buttons
        return GamepadState(connected=True, name=self._name, axes=axes, buttons=buttons,
                            hats=hats, timestamp=now, pressed=pressed)

    # -- internals -----------------------------------------------------------------
    def _matches(self, device_index: int) -> bool:
        cfg = self.config
        if cfg.index is not None and device_index != cfg.index:
            return False
        if cfg.name:
            try:
                name = self._pg.joystick.Joystick(device_index).get_name()
            except self._pg.error:
                return False
            return cfg.name.lower() in name.lower()
        return True

    def _open(self, device_index: int) -> None:
        pg = self._pg
        try:
            joy = pg.joystick.Joystick(device_index)
            joy.init()
        except pg.error:
            return
        self._joy = joy
        self._instance_id = joy.get_instance_id()
        self._name = joy.get_name()
        self._counts = (joy.get_numaxes(), joy.get_numbuttons(), joy.get_numhats())
        self._prev_buttons = [False] * self._counts[1]
        self._pressed.clear()

    def _close(self) -> None:
        if self._joy is not None:
            try:
                self._joy.quit()
            except Exception:
                pass
        self._joy = None
        self._instance_id = None
        self._name = ""

    def _scan(self) -> None:
        self._last_scan = time.monotonic()
        for d in range(self._pg.joystick.get_count()):
            if self._matches(d):
                self._open(d)
                return

    def _pump(self) -> None:
        pg = self._pg
        try:
            events = pg.event.get()
        except (SystemError, KeyError, pg.error):
            # pygame 2.6 fails converting a JOYDEVICEADDED whose device is already gone
            # again (plugged and unplugged between two reads); the whole batch is lost,
            # so resynchronise from the device list instead.
            self._close()
            self._scan()
            return
        for ev in events:
            if ev.type == pg.JOYDEVICEADDED:
                if self._joy is None and self._matches(ev.device_index):
                    self._open(ev.device_index)
            elif ev.type == pg.JOYDEVICEREMOVED:
                if self._joy is not None and ev.instance_id == self._instance_id:
                    self._close()
                    self._last_scan = 0.0        # another matching pad may still be there
            elif ev.type == pg.JOYBUTTONDOWN:
                if self._joy is not None and getattr(ev, "instance_id", None) == self._instance_id:
                    self._pressed.add(ev.button)
        # A removal whose event someone else consumed: the pad count tells.
        if self._joy is not None and pg.joystick.get_count() == 0:
            self._close()


def list_gamepads() -> list[dict]:
    """Attached gamepads for the UI / `teleop devices`: [{index, name, axes, buttons, hats}].
    Returns [] (never raises) when there is none or SDL cannot start."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_JOYSTICK_ALLOW_BACKGROUND_EVENTS", "1")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame
        pygame.joystick.init()
        out = []
        for i in range(pygame.joystick.get_count()):
            j = pygame.joystick.Joystick(i)
            out.append({"index": i, "name": j.get_name(), "axes": j.get_numaxes(),
                        "buttons": j.get_numbuttons(), "hats": j.get_numhats()})
        return out
    except Exception:
        return []
