"""Feetech STS/SCS codec (pure functions, no I/O) and the STS3215 control table.

Packet (Dynamixel protocol-1 style): FF FF | ID | LEN | INSTR-or-ERROR | PARAMS... | CHK
LEN = number of params + 2, CHK = ~(ID + LEN + INSTR + sum(PARAMS)) & 0xFF.
Multi-byte values are little-endian (STS, "end 0"); signed items use sign-magnitude with
the sign in bit 15 (bit 11 for the homing offset).
"""
from __future__ import annotations

from dataclasses import dataclass

from drivers.bus.errors import ChecksumMismatch, IncompletePacket, PacketError, ServoError

HEADER = b"\xFF\xFF"
BROADCAST_ID = 0xFE
MAX_ID = 0xFC
MIN_PACKET = 6           # FF FF ID LEN ERR CHK
ALERT_MASK = 0x2F        # voltage, angle, overheat, over-current, overload: health, not this request

PING, READ, WRITE, REG_WRITE, ACTION, RESET = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
SYNC_READ, SYNC_WRITE = 0x82, 0x83

# STS3215 control table
ADDR_FIRMWARE_MAJOR = 0   # 1 B
ADDR_FIRMWARE_MINOR = 1   # 1 B
ADDR_MODEL_NUMBER = 3     # 2 B
ADDR_ID = 5               # 1 B
ADDR_BAUD_RATE = 6        # 1 B
ADDR_MIN_ANGLE_LIMIT = 9  # 2 B
ADDR_MAX_ANGLE_LIMIT = 11  # 2 B
ADDR_HOMING_OFFSET = 31   # 2 B, sign bit 11
ADDR_OPERATING_MODE = 33  # 1 B: 0 position, 1 speed, 2 PWM, 3 step
ADDR_TORQUE_ENABLE = 40   # 1 B
ADDR_ACCELERATION = 41    # 1 B
ADDR_GOAL_POSITION = 42   # 2 B, sign bit 15
ADDR_GOAL_TIME = 44       # 2 B
ADDR_GOAL_SPEED = 46      # 2 B, sign bit 15
ADDR_LOCK = 55            # 1 B
ADDR_PRESENT_POSITION = 56  # 2 B, sign bit 15
ADDR_PRESENT_SPEED = 58   # 2 B, sign bit 15 (steps/s)
ADDR_PRESENT_LOAD = 60    # 2 B, sign bit 10
ADDR_PRESENT_VOLTAGE = 62  # 1 B (0.1 V)
ADDR_PRESENT_TEMPERATURE = 63  # 1 B
ADDR_STATUS = 65          # 1 B
ADDR_MOVING = 66          # 1 B
ADDR_PRESENT_CURRENT = 69  # 2 B, sign bit 15 (6.5 mA)
TICKS_PER_REV = 4096
CENTER_TICK = 2048
MODEL_STS3215 = 777
SPEED_UNIT_RAD_S = 2 * 3.141592653589793 / 4096    # one present-speed unit (step/s) in rad/s


class FeetechError(ServoError):
    """Base for STS status error bits."""


class VoltageError(FeetechError):
    """bit 0: supply voltage outside limits; check the power supply (STS3215: 6-8.4 V / 12 V)."""


class AngleError(FeetechError):
    """bit 1: magnetic angle sensor error / angle outside limits."""


class OverheatError(FeetechError):
    """bit 2: over temperature; let the servo cool and reduce load."""


class OverCurrentError(FeetechError):
    """bit 3: over current ("OverEle" in the Feetech SDK)."""


class ChecksumError(FeetechError):
    """bit 4: the servo saw a bad checksum in our packet (noise on the line)."""


class OverloadError(FeetechError):
    """bit 5: overload; the servo cut torque. Remove the load and re-enable torque."""


class InstructionError(FeetechError):
    """bit 6: undefined instruction, or access to an address/value the servo rejects."""


ERROR_BITS: list[tuple[int, type[FeetechError], str]] = [
    (0x01, VoltageError, "input voltage out of range: check the power supply"),
    (0x02, AngleError, "angle sensor / angle limit error"),
    (0x04, OverheatError, "overheating: let it cool, reduce the load"),
    (0x08, OverCurrentError, "over current"),
    (0x10, ChecksumError, "servo saw a checksum error: check cable"),
    (0x20, OverloadError, "overload: torque was cut, remove the load and re-enable torque"),
    (0x40, InstructionError, "instruction or address rejected"),
]


@dataclass(frozen=True)
class Packet:
    """Parsed packet. Both directions share one layout, so `kind` says how byte 4 was read:
    instruction packets have `instruction` set and error=None; status packets the reverse."""
    servo_id: int
    instruction: int | None
    params: bytes = b""
    error: int | None = None


def checksum(data: bytes) -> int:
    """~(sum of ID..last param) & 0xFF."""
    return ~sum(data) & 0xFF


def _frame(servo_id: int, first: int, params: bytes) -> bytes:
    if not 0 <= servo_id <= 0xFE:
        raise ValueError(f"servo id {servo_id} outside 0..254")
    n = len(params) + 2
    if n > 0xFF:
        raise ValueError(f"packet too long ({len(params)} params; max 253)")
    body = bytes((servo_id, n, first & 0xFF)) + bytes(params)
    return HEADER + body + bytes((checksum(body),))


def build_instruction(servo_id: int, instruction: int, params: bytes = b"") -> bytes:
    return _frame(servo_id, instruction, params)


def build_status(servo_id: int, error: int = 0, params: bytes = b"") -> bytes:
    return _frame(servo_id, error, params)


def find_header(buf: bytes | bytearray, start: int = 0) -> int:
    return bytes(buf).find(HEADER, start)


def frame_length(buf: bytes | bytearray) -> int | None:
    """Total packet length once FF FF ID LEN are in buf, else None."""
    if len(buf) < 4:
        return None
    return 4 + buf[3]


def _parse(buf: bytes | bytearray) -> tuple[int, bytes, int, int]:
    buf = bytes(buf)
    if len(buf) < 2:
        if HEADER.startswith(buf):
            raise IncompletePacket(MIN_PACKET, len(buf))
        raise PacketError(f"bad header {buf.hex(' ')}")
    if buf[:2] != HEADER:
        raise PacketError(f"bad header {buf[:2].hex(' ')} (expected ff ff)")
    total = frame_length(buf)
    if total is None:
        raise IncompletePacket(MIN_PACKET, len(buf))
    if buf[2] == 0xFF:
        raise PacketError("id 0xFF is not valid (misaligned header?)")
    if buf[3] < 2:
        raise PacketError(f"impossible packet length {buf[3]}")
    if len(buf) < total:
        raise IncompletePacket(total, len(buf))
    want = checksum(buf[2:total - 1])
    if buf[total - 1] != want:
        raise ChecksumMismatch(f"checksum mismatch from id {buf[2]}: got 0x{buf[total - 1]:02X}, "
                               f"expected 0x{want:02X} (noise on the line or a baud-rate mismatch)")
    return buf[2], buf[5:total - 1], buf[4], total


def parse_instruction(buf: bytes | bytearray) -> tuple[Packet, int]:
    sid, params, first, n = _parse(buf)
    return Packet(sid, first, params, None), n


def parse_status(buf: bytes | bytearray) -> tuple[Packet, int]:
    sid, params, first, n = _parse(buf)
    return Packet(sid, None, params, first), n


parse_packet = parse_status   # what a client receives


def raise_for_status(pkt: Packet) -> Packet:
    """Raise the typed error for the most important set bit; return pkt when clean."""
    err = pkt.error or 0
    if not err:
        return pkt
    names = [text for bit, _, text in ERROR_BITS if err & bit]
    for bit, cls, _ in sorted(ERROR_BITS, key=lambda t: -t[0]):   # instruction/overload first
        if err & bit:
            raise cls(pkt.servo_id, err, "; ".join(names))
    raise FeetechError(pkt.servo_id, err, "unknown error bits")


# ---- value helpers

def to_sign_magnitude(value: int, sign_bit: int = 15) -> int:
    mag = abs(int(value))
    if mag >= (1 << sign_bit):
        raise ValueError(f"{value} does not fit in {sign_bit} bits + sign")
    return mag | (1 << sign_bit) if value < 0 else mag


def from_sign_magnitude(raw: int, sign_bit: int = 15) -> int:
    mag = raw & ((1 << sign_bit) - 1)
    return -mag if raw & (1 << sign_bit) else mag


def encode(value: int, size: int, signed: bool = True, sign_bit: int | None = None) -> bytes:
    """Little-endian; negative values stored sign-magnitude (bit 15 by default for 2-byte items)."""
    if signed and value < 0:
        value = to_sign_magnitude(value, sign_bit if sign_bit is not None else 8 * size - 1)
    return int(value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def decode(data: bytes, signed: bool = True, sign_bit: int | None = None) -> int:
    raw = int.from_bytes(bytes(data), "little")
    if not signed:
        return raw
    return from_sign_magnitude(raw, sign_bit if sign_bit is not None else 8 * len(data) - 1)


# ---- instruction builders

def ping(servo_id: int) -> bytes:
    return build_instruction(servo_id, PING)


def read(servo_id: int, address: int, length: int) -> bytes:
    return build_instruction(servo_id, READ, bytes((address, length)))


def write(servo_id: int, address: int, data: bytes) -> bytes:
    return build_instruction(servo_id, WRITE, bytes((address,)) + bytes(data))


def sync_read(address: int, length: int, ids: list[int]) -> bytes:
    return build_instruction(BROADCAST_ID, SYNC_READ, bytes((address, length)) + bytes(ids))


def sync_write(address: int, length: int, data: dict[int, bytes]) -> bytes:
    params = bytearray((address, length))
    for sid, d in data.items():
        if len(d) != length:
            raise ValueError(f"sync_write: servo {sid} data has {len(d)} bytes, expected {length}")
        params += bytes((sid,)) + bytes(d)
    return build_instruction(BROADCAST_ID, SYNC_WRITE, bytes(params))
