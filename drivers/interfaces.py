"""Small device interfaces shared by real and simulated hardware.

Every timestamp is `time.monotonic()` seconds, taken when the value was measured
(not when it was consumed), so recorded timing is real, not reconstructed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


class DeviceError(RuntimeError):
    """A device is missing, vanished or answered wrongly. The message says what to do."""


class DeviceNotConnected(DeviceError):
    pass


@dataclass
class JointState:
    """Arm state: joints in rad, gripper last in the profile's gripper units."""
    position: np.ndarray
    timestamp: float
    velocity: np.ndarray | None = None
    current: np.ndarray | None = None


@dataclass
class Frame:
    """One camera image, RGB uint8 HxWx3, with its capture time."""
    image: np.ndarray
    timestamp: float
    index: int = 0


@dataclass
class GamepadState:
    """Axes in [-1, 1] (after deadzone), buttons as bools, hats as (x, y) in {-1,0,1}."""
    connected: bool
    name: str = ""
    axes: list[float] = field(default_factory=list)
    buttons: list[bool] = field(default_factory=list)
    hats: list[tuple[int, int]] = field(default_factory=list)
    timestamp: float = 0.0
    # Buttons that went down since the previous read (caught from events, so a tap shorter
    # than the read period is not lost). Empty when the reader cannot tell.
    pressed: set[int] = field(default_factory=set)


@runtime_checkable
class Robot(Protocol):
    """An arm: joint targets in, joint state out (LeRobot-style)."""
    joint_names: list[str]          # arm joints then gripper

    @property
    def is_connected(self) -> bool: ...
    def connect(self) -> None: ...
    def disconnect(self) -> None: ...
    def get_observation(self) -> JointState: ...
    def send_action(self, target: np.ndarray) -> np.ndarray:
        """Command absolute joint targets; returns what was actually written."""
    def set_torque(self, enabled: bool) -> None: ...
    @property
    def torque_enabled(self) -> bool: ...


@runtime_checkable
class Camera(Protocol):
    name: str
    width: int
    height: int
    fps: float

    @property
    def is_connected(self) -> bool: ...
    def connect(self) -> None: ...
    def disconnect(self) -> None: ...
    def read_latest(self) -> Frame | None:
        """Newest frame (never queued); None before the first one arrives."""
