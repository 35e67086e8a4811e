"""Errors raised by the servo-bus codecs, transports and packet handlers.

All of them are `DeviceError`s so the app can catch one type; each message says what to do.
"""
from __future__ import annotations

from drivers.interfaces import DeviceError


class BusError(DeviceError):
    """Something went wrong on a servo bus."""


class PacketError(BusError):
    """Bytes that are not a valid packet (bad header, impossible length, ...)."""


class IncompletePacket(PacketError):
    """The buffer ends before the packet does; read more bytes."""

    def __init__(self, needed: int, have: int):
        self.needed, self.have = needed, have
        super().__init__(f"incomplete packet: need {needed} bytes, have {have}")


class ChecksumMismatch(PacketError):
    """A received packet failed its CRC / checksum (electrical noise, baud mismatch, collision)."""


class ServoError(BusError):
    """A servo answered with error bits set in its status packet."""

    def __init__(self, servo_id: int, error: int, detail: str = ""):
        self.servo_id, self.error = servo_id, error
        msg = f"servo {servo_id} reported error 0x{error:02X}"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class ServoTimeout(BusError):
    """One or more servos did not answer within the timeout, after all retries."""

    def __init__(self, servo_id: int | list[int], port: str = "", tries: int = 1):
        ids = [servo_id] if isinstance(servo_id, int) else list(servo_id)
        self.servo_ids = ids
        self.servo_id = ids[0] if ids else -1
        self.port, self.tries = port, tries
        where = f" on {port}" if port else ""
        who = f"servo {ids[0]}" if len(ids) == 1 else f"servos {', '.join(map(str, ids))}"
        super().__init__(f"{who} stopped answering{where} after {tries} tr{'y' if tries == 1 else 'ies'}: "
                         "check power and cable (and that baud rate and ids match the profile)")


class BusDisconnected(BusError):
    """The serial port itself failed (adapter unplugged, port closed)."""
