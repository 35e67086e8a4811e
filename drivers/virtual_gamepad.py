"""A real SDL virtual joystick, for tests and demos without a physical gamepad.

It talks (via ctypes) to the *same* SDL2 library instance that pygame uses, so pygame
sees an ordinary device: `pygame.joystick.get_count()` grows, JOYDEVICEADDED /
JOYDEVICEREMOVED events are posted, and axis/button/hat values arrive through the normal
SDL joystick update. Nothing in `drivers.gamepad` knows the device is virtual.

Usage (any thread, but use the same thread that calls `Gamepad.read()`; SDL's joystick
API is locked internally, pygame's event pump is not meant to be shared)::

    from drivers.virtual_gamepad import VirtualGamepad
    with VirtualGamepad() as pad:        # attach() ... detach()
        pad.set_axis(0, 1.0)             # left stick full right
        pad.set_button(0, True)          # A down
        pad.set_hat(0, (0, 1))           # d-pad up
        state = gamepad.read()           # a drivers.gamepad.Gamepad sees it on its next read

Layout matches an Xbox pad under Linux/SDL joystick order: axes 0 LX, 1 LY, 2 LT,
3 RX, 4 RY, 5 RT; buttons 0 A, 1 B, 2 X, 3 Y, 4 LB, 5 RB, 6 Back, 7 Start, 8 Guide,
9 LStick, 10 RStick; hat 0 d-pad. Like a real pad, the triggers (axes 2 and 5) rest
at -1 (pass `rest_axes={}` to rest everything at 0).
"""
from __future__ import annotations

import ctypes
import glob
import os
from typing import Mapping

from drivers.interfaces import DeviceError

SDL_INIT_JOYSTICK = 0x200
SDL_JOYSTICK_TYPE_UNKNOWN = 0   # not GAMECONTROLLER: SDL would assume a different axis order
SDL_VIRTUAL_JOYSTICK_DESC_VERSION = 1

# SDL hat bit masks
_HAT = {(0, 0): 0x0, (0, 1): 0x1, (1, 0): 0x2, (0, -1): 0x4, (-1, 0): 0x8,
        (1, 1): 0x3, (1, -1): 0x6, (-1, -1): 0xC, (-1, 1): 0x9}

XBOX_TRIGGER_REST = {2: -1.0, 5: -1.0}


class _VirtualJoystickDesc(ctypes.Structure):
    """SDL_VirtualJoystickDesc, SDL 2.24+ layout (version 1)."""
    _fields_ = [
        ("version", ctypes.c_uint16), ("type", ctypes.c_uint16),
        ("naxes", ctypes.c_uint16), ("nbuttons", ctypes.c_uint16), ("nhats", ctypes.c_uint16),
        ("vendor_id", ctypes.c_uint16), ("product_id", ctypes.c_uint16),
        ("padding", ctypes.c_uint16),
        ("button_mask", ctypes.c_uint32), ("axis_mask", ctypes.c_uint32),
        ("name", ctypes.c_char_p), ("userdata", ctypes.c_void_p),
        ("Update", ctypes.c_void_p), ("SetPlayerIndex", ctypes.c_void_p),
        ("Rumble", ctypes.c_void_p), ("RumbleTriggers", ctypes.c_void_p),
        ("SetLED", ctypes.c_void_p), ("SendEffect", ctypes.c_void_p),
    ]


_sdl: ctypes.CDLL | None = None


def _loaded_sdl_paths() -> list[str]:
    """Paths of SDL2 libraries already mapped into this process (Linux)."""
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        path = line.split()[-1] if line.split() else ""
        base = os.path.basename(path)
        if (base.startswith("libSDL2-2") or base.startswith("libSDL2.so")) and path not in out:
            out.append(path)
    return out


def sdl_library() -> ctypes.CDLL:
    """The SDL2 library pygame is using, loaded via ctypes (same instance, checked).

    Initialises pygame's joystick module first: the check is that ctypes' view of SDL
    reports the joystick subsystem as initialised; a second, separate copy of SDL would not.
    """
    global _sdl
    if _sdl is not None:
        return _sdl
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_JOYSTICK_ALLOW_BACKGROUND_EVENTS", "1")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame
    pygame.joystick.init()

    candidates = _loaded_sdl_paths()
    libs_dir = os.path.join(os.path.dirname(os.path.dirname(pygame.__file__)), "pygame.libs")
    candidates += sorted(glob.glob(os.path.join(libs_dir, "libSDL2-*.so*")))
    if not candidates:
        raise DeviceError("virtual gamepad: cannot find the SDL2 library pygame uses "
                          f"(looked in /proc/self/maps and {libs_dir}); install the pygame wheel")
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        lib.SDL_WasInit.restype = ctypes.c_uint32
        lib.SDL_WasInit.argtypes = [ctypes.c_uint32]
        if lib.SDL_WasInit(SDL_INIT_JOYSTICK) & SDL_INIT_JOYSTICK:
            _declare(lib)
            _sdl = lib
            return lib
    raise DeviceError("virtual gamepad: the SDL2 library found by ctypes is not the instance "
                      f"pygame initialised (tried {candidates}); a virtual device there would be "
                      "invisible to pygame")


def _declare(lib: ctypes.CDLL) -> None:
    vp, i, c = ctypes.c_void_p, ctypes.c_int, ctypes.c_int
    lib.SDL_GetError.restype = ctypes.c_char_p
    lib.SDL_JoystickAttachVirtual.argtypes = [i, i, i, i]
    lib.SDL_JoystickAttachVirtual.restype = c
    lib.SDL_JoystickAttachVirtualEx.argtypes = [ctypes.POINTER(_VirtualJoystickDesc)]
    lib.SDL_JoystickAttachVirtualEx.restype = c
    lib.SDL_JoystickDetachVirtual.argtypes = [i]
    lib.SDL_JoystickDetachVirtual.restype = c
    lib.SDL_JoystickOpen.argtypes = [i]
    lib.SDL_JoystickOpen.restype = vp
    lib.SDL_JoystickClose.argtypes = [vp]
    lib.SDL_JoystickInstanceID.argtypes = [vp]
    lib.SDL_JoystickInstanceID.restype = ctypes.c_int32
    lib.SDL_JoystickGetDeviceInstanceID.argtypes = [i]
    lib.SDL_JoystickGetDeviceInstanceID.restype = ctypes.c_int32
    lib.SDL_NumJoysticks.restype = c
    lib.SDL_JoystickSetVirtualAxis.argtypes = [vp, i, ctypes.c_int16]
    lib.SDL_JoystickSetVirtualAxis.restype = c
    lib.SDL_JoystickSetVirtualButton.argtypes = [vp, i, ctypes.c_uint8]
    lib.SDL_JoystickSetVirtualButton.restype = c
    lib.SDL_JoystickSetVirtualHat.argtypes = [vp, i, ctypes.c_uint8]
    lib.SDL_JoystickSetVirtualHat.restype = c


def _to_sint16(value: float) -> int:
    v = max(-1.0, min(1.0, float(value)))
    return int(round(v * 32767)) if v >= 0 else int(round(v * 32768))


class VirtualGamepad:
    """An SDL virtual joystick that pygame (and so `drivers.gamepad.Gamepad`) sees as real.

    attach() plugs it in (a JOYDEVICEADDED event follows), detach() unplugs it
    (JOYDEVICEREMOVED). Values set while attached show up at the reader's next pump.
    """

    def __init__(self, n_axes: int = 6, n_buttons: int = 11, n_hats: int = 1,
                 name: str = "teleop virtual pad",
                 rest_axes: Mapping[int, float] | None = None):
        self.n_axes, self.n_buttons, self.n_hats, self.name = n_axes, n_buttons, n_hats, name
        self.rest_axes = dict(XBOX_TRIGGER_REST if rest_axes is None else rest_axes)
        self.rest_axes = {a: v for a, v in self.rest_axes.items() if a < n_axes}
        self.device_index: int | None = None
        self.instance_id: int | None = None
        self._joy: int | None = None     # SDL_Joystick* (kept open so values can be set)

    @property
    def attached(self) -> bool:
        return self._joy is not None

    def attach(self) -> int:
        """Plug the device in; returns its SDL device index."""
        if self.attached:
            return self.device_index  # type: ignore[return-value]
        lib = sdl_library()
        self._name_buf = self.name.encode()        # keep alive while attached
        desc = _VirtualJoystickDesc(version=SDL_VIRTUAL_JOYSTICK_DESC_VERSION,
                                    type=SDL_JOYSTICK_TYPE_UNKNOWN, naxes=self.n_axes,
                                    nbuttons=self.n_buttons, nhats=self.n_hats,
                                    name=self._name_buf)
        idx = lib.SDL_JoystickAttachVirtualEx(ctypes.byref(desc))
        if idx < 0:   # very old SDL without the Ex variant: no custom name
            idx = lib.SDL_JoystickAttachVirtual(SDL_JOYSTICK_TYPE_UNKNOWN, self.n_axes,
                                                self.n_buttons, self.n_hats)
        if idx < 0:
            raise DeviceError(f"virtual gamepad: SDL refused to attach: {lib.SDL_GetError().decode()}")
        joy = lib.SDL_JoystickOpen(idx)
        if not joy:
            lib.SDL_JoystickDetachVirtual(idx)
            raise DeviceError(f"virtual gamepad: SDL_JoystickOpen failed: {lib.SDL_GetError().decode()}")
        self.device_index, self._joy = idx, joy
        self.instance_id = int(lib.SDL_JoystickInstanceID(joy))
        for a, v in self.rest_axes.items():
            self.set_axis(a, v)
        return idx

    def _find_device(self, lib: ctypes.CDLL) -> int | None:
        """Our current device index, or None if SDL no longer has the device (e.g. after
        pygame.joystick.quit(), which frees it: our pointer must not be touched then)."""
        if not lib.SDL_WasInit(SDL_INIT_JOYSTICK) & SDL_INIT_JOYSTICK:
            return None
        for d in range(lib.SDL_NumJoysticks()):
            if lib.SDL_JoystickGetDeviceInstanceID(d) == self.instance_id:
                return d
        return None

    def _check(self, kind: str, i: int, n: int) -> ctypes.CDLL:
        if not self.attached:
            raise DeviceError("virtual gamepad is not attached: call attach() first")
        lib = sdl_library()
        if self._find_device(lib) is None:
            self._joy = self.device_index = None
            raise DeviceError("virtual gamepad vanished (SDL's joystick subsystem was shut down, "
                              "e.g. by pygame.quit()); attach() again")
        if not 0 <= i < n:
            raise IndexError(f"virtual gamepad has {n} {kind}s; {kind} {i} does not exist")
        return sdl_library()

    def set_axis(self, i: int, value: float) -> None:
        """Set axis i to value in [-1, 1] (clipped; mapped to SDL's Sint16 range)."""
        lib = self._check("axis", i, self.n_axes)
        if lib.SDL_JoystickSetVirtualAxis(self._joy, i, _to_sint16(value)) < 0:
            raise DeviceError(f"virtual gamepad: set_axis failed: {lib.SDL_GetError().decode()}")

    def set_button(self, i: int, pressed: bool) -> None:
        lib = self._check("button", i, self.n_buttons)
        if lib.SDL_JoystickSetVirtualButton(self._joy, i, 1 if pressed else 0) < 0:
            raise DeviceError(f"virtual gamepad: set_button failed: {lib.SDL_GetError().decode()}")

    def set_hat(self, i: int, xy: tuple[int, int]) -> None:
        """Set hat i to (x, y) with x, y in {-1, 0, 1} (y=1 is up, like pygame)."""
        lib = self._check("hat", i, self.n_hats)
        key = (int(xy[0]), int(xy[1]))
        if key not in _HAT:
            raise ValueError(f"hat value must be (x, y) with x, y in -1/0/1, got {xy!r}")
        if lib.SDL_JoystickSetVirtualHat(self._joy, i, _HAT[key]) < 0:
            raise DeviceError(f"virtual gamepad: set_hat failed: {lib.SDL_GetError().decode()}")

    def reset(self) -> None:
        """All axes to rest, buttons up, hats centred."""
        for a in range(self.n_axes):
            self.set_axis(a, self.rest_axes.get(a, 0.0))
        for b in range(self.n_buttons):
            self.set_button(b, False)
        for h in range(self.n_hats):
            self.set_hat(h, (0, 0))

    def detach(self) -> None:
        """Unplug the device (pygame gets JOYDEVICEREMOVED). Safe to call twice."""
        if not self.attached:
            return
        lib = sdl_library()
        # The device index shifts when other pads come or go: find ours again.
        idx = self._find_device(lib)
        if idx is not None:
            lib.SDL_JoystickClose(self._joy)
            lib.SDL_JoystickDetachVirtual(idx)
        self._joy = None
        self.device_index = None

    def __enter__(self) -> "VirtualGamepad":
        self.attach()
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    def __del__(self) -> None:  # best effort: never leave a phantom pad behind
        try:
            self.detach()
        except Exception:
            pass
