"""Dynamixel Protocol 2.0 codec (pure functions, no I/O) and the X-series control table.

Packet: FF FF FD 00 | ID | LEN_L LEN_H | INSTR | PARAMS... | CRC_L CRC_H
LEN counts INSTR + (stuffed) PARAMS + CRC. Status packets use INSTR 0x55 followed by an ERROR byte.
Byte stuffing: inside INSTR..PARAMS every FF FF FD gets an extra FD (FF FF FD FD) so the header
pattern never appears in the body; the CRC is computed over the stuffed packet.
"""
from __future__ import annotations

from dataclasses import dataclass

from drivers.bus.errors import ChecksumMismatch, IncompletePacket, PacketError, ServoError

HEADER = b"\xFF\xFF\xFD\x00"
BROADCAST_ID = 0xFE
MAX_ID = 0xFC
MIN_PACKET = 10          # header(4) id len(2) instr crc(2)
MAX_LENGTH = 1024        # sanity bound on LEN for a USB adapter buffer

# Instructions
PING, READ, WRITE, REG_WRITE, ACTION, FACTORY_RESET, REBOOT = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x08
SYNC_READ, SYNC_WRITE, STATUS = 0x82, 0x83, 0x55

# X-series control table (XL430 / XM430 / XL330; EEPROM below 64, RAM from 64)
ADDR_MODEL_NUMBER = 0          # 2 B
ADDR_FIRMWARE_VERSION = 6      # 1 B
ADDR_ID = 7                    # 1 B
ADDR_BAUD_RATE = 8             # 1 B
ADDR_RETURN_DELAY = 9          # 1 B
ADDR_OPERATING_MODE = 11       # 1 B: 1 velocity, 3 position, 4 extended position, 16 PWM
ADDR_MAX_POSITION_LIMIT = 48   # 4 B
ADDR_MIN_POSITION_LIMIT = 52   # 4 B
ADDR_TORQUE_ENABLE = 64        # 1 B
ADDR_LED = 65                  # 1 B
ADDR_HARDWARE_ERROR = 70       # 1 B (read only)
ADDR_GOAL_POSITION = 116       # 4 B
ADDR_MOVING = 122              # 1 B
ADDR_PRESENT_CURRENT = 126     # 2 B, signed
ADDR_PRESENT_VELOCITY = 128    # 4 B, signed, 0.229 rev/min per unit
ADDR_PRESENT_POSITION = 132    # 4 B, signed
ADDR_PRESENT_TEMPERATURE = 146  # 1 B
TICKS_PER_REV = 4096
CENTER_TICK = 2048
VELOCITY_UNIT_RAD_S = 0.229 * 2 * 3.141592653589793 / 60.0   # one present-velocity unit in rad/s
CURRENT_UNIT_A = 0.00269                                   # XM430: 2.69 mA per unit
MODEL_XL430 = 1060
MODEL_XM430_W350 = 1020
MODEL_XL330_M288 = 1200

# Status error byte: bit 7 = hardware alert, bits 0..6 = error number
ALERT_BIT = 0x80
ALERT_MASK = ALERT_BIT        # bits that report the servo's health rather than this request


class ResultFail(ServoError):
    """0x01: the servo failed to process the instruction."""


class InstructionError(ServoError):
    """0x02: undefined instruction, or ACTION without REG_WRITE."""


class CRCError(ServoError):
    """0x03: the servo saw a CRC mismatch in our instruction packet (noise on the line)."""


class DataRangeError(ServoError):
    """0x04: address/length outside the control table."""


class DataLengthError(ServoError):
    """0x05: data shorter than the item being written."""


class DataLimitError(ServoError):
    """0x06: value outside the item's limits (e.g. goal beyond position limits)."""


class AccessError(ServoError):
    """0x07: write to a read-only item, read of a write-only item, or EEPROM write with torque on."""


class HardwareAlert(ServoError):
    """Alert bit (0x80): the servo has a hardware error latched; read Hardware Error Status (70),
    fix the cause (overload, overheating, voltage) and REBOOT the servo."""


ERRORS: dict[int, tuple[type[ServoError], str]] = {
    0x01: (ResultFail, "instruction failed"),
    0x02: (InstructionError, "undefined instruction"),
    0x03: (CRCError, "servo saw a CRC error in our packet: check cable and termination"),
    0x04: (DataRangeError, "address/length outside the control table"),
    0x05: (DataLengthError, "data too short for the item"),
    0x06: (DataLimitError, "value outside the item's limits"),
    0x07: (AccessError, "item not writable/readable (EEPROM items need torque off)"),
}


@dataclass(frozen=True)
class Packet:
    """A parsed packet: instruction packets have error=None, status packets carry the error byte."""
    servo_id: int
    instruction: int
    params: bytes = b""
    error: int | None = None


_CRC_TABLE: list[int] = []
for _i in range(256):
    _c = _i << 8
    for _ in range(8):
        _c = ((_c << 1) ^ 0x8005) if _c & 0x8000 else (_c << 1)
    _CRC_TABLE.append(_c & 0xFFFF)


def crc16(data: bytes, crc: int = 0) -> int:
    """CRC-16 (poly 0x8005, init 0, no reflection) exactly as the ROBOTIS emanual's table code."""
    for b in data:
        crc = ((crc << 8) ^ _CRC_TABLE[((crc >> 8) ^ b) & 0xFF]) & 0xFFFF
    return crc


def stuff(body: bytes) -> bytes:
    """Insert an FD after every FF FF FD in INSTR..PARAMS."""
    if b"\xFF\xFF\xFD" not in body:
        return bytes(body)
    return bytes(body).replace(b"\xFF\xFF\xFD", b"\xFF\xFF\xFD\xFD")


def unstuff(body: bytes) -> bytes:
    """Drop the FD that follows each FF FF FD (inverse of `stuff`)."""
    if b"\xFF\xFF\xFD\xFD" not in body:
        return bytes(body)
    return bytes(body).replace(b"\xFF\xFF\xFD\xFD", b"\xFF\xFF\xFD")


def _frame(servo_id: int, body: bytes) -> bytes:
    if not 0 <= servo_id <= 0xFE:
        raise ValueError(f"servo id {servo_id} outside 0..254")
    body = stuff(body)
    n = len(body) + 2
    if n > 0xFFFF:
        raise ValueError(f"packet too long ({n} bytes)")
    pkt = HEADER + bytes((servo_id, n & 0xFF, n >> 8)) + body
    c = crc16(pkt)
    return pkt + bytes((c & 0xFF, c >> 8))


def build_instruction(servo_id: int, instruction: int, params: bytes = b"") -> bytes:
    return _frame(servo_id, bytes((instruction,)) + bytes(params))


def build_status(servo_id: int, error: int = 0, params: bytes = b"") -> bytes:
    return _frame(servo_id, bytes((STATUS, error & 0xFF)) + bytes(params))


def find_header(buf: bytes | bytearray, start: int = 0) -> int:
    """Index of the next packet header (FF FF FD 00) or -1."""
    return bytes(buf).find(HEADER, start)


def frame_length(buf: bytes | bytearray) -> int | None:
    """Total length of the packet starting at buf[0] (header must be there), None if unknown yet."""
    if len(buf) < 7:
        return None
    return 7 + (buf[5] | (buf[6] << 8))


def parse_packet(buf: bytes | bytearray) -> tuple[Packet, int]:
    """Parse one packet at the start of buf -> (packet, bytes consumed).

    Raises IncompletePacket if buf is too short, ChecksumMismatch on a CRC failure and
    PacketError for anything that cannot be a packet.
    """
    buf = bytes(buf)
    if len(buf) < 4:
        if HEADER.startswith(buf):
            raise IncompletePacket(MIN_PACKET, len(buf))
        raise PacketError(f"bad header {buf.hex(' ')}")
    if buf[:4] != HEADER:
        raise PacketError(f"bad header {buf[:4].hex(' ')} (expected ff ff fd 00)")
    total = frame_length(buf)
    if total is None:
        raise IncompletePacket(MIN_PACKET, len(buf))
    length = total - 7
    if length < 3 or length > MAX_LENGTH:
        raise PacketError(f"impossible packet length {length}")
    if len(buf) < total:
        raise IncompletePacket(total, len(buf))
    want = crc16(buf[:total - 2])
    got = buf[total - 2] | (buf[total - 1] << 8)
    if want != got:
        raise ChecksumMismatch(f"CRC mismatch from id {buf[4]}: got 0x{got:04X}, expected 0x{want:04X} "
                               "(noise on the line or a baud-rate mismatch)")
    body = unstuff(buf[7:total - 2])
    instr = body[0]
    if instr == STATUS:
        if len(body) < 2:
            raise PacketError("status packet without error byte")
        return Packet(buf[4], instr, body[2:], body[1]), total
    return Packet(buf[4], instr, body[1:]), total


def raise_for_status(pkt: Packet) -> Packet:
    """Raise the typed ServoError for a status packet's error byte; return pkt when clean."""
    err = pkt.error or 0
    if not err:
        return pkt
    num = err & 0x7F
    if num:
        cls, text = ERRORS.get(num, (ServoError, f"unknown error number {num}"))
        if err & ALERT_BIT:
            text += "; hardware alert also set (read address 70, then reboot the servo)"
        raise cls(pkt.servo_id, err, text)
    raise HardwareAlert(pkt.servo_id, err, "hardware alert: read Hardware Error Status (address 70), "
                        "remove the cause (overload/overheat/voltage) and reboot the servo")


# ---- value helpers (little-endian two's complement, as the X-series stores them)

def encode(value: int, size: int) -> bytes:
    """Encode an int into `size` little-endian bytes (negative values as two's complement)."""
    return int(value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def decode(data: bytes, signed: bool = True) -> int:
    return int.from_bytes(bytes(data), "little", signed=signed)


# ---- instruction builders

def ping(servo_id: int) -> bytes:
    return build_instruction(servo_id, PING)


def read(servo_id: int, address: int, length: int) -> bytes:
    return build_instruction(servo_id, READ, encode(address, 2) + encode(length, 2))


def write(servo_id: int, address: int, data: bytes) -> bytes:
    return build_instruction(servo_id, WRITE, encode(address, 2) + bytes(data))


def reboot(servo_id: int) -> bytes:
    return build_instruction(servo_id, REBOOT)


def sync_read(address: int, length: int, ids: list[int]) -> bytes:
    return build_instruction(BROADCAST_ID, SYNC_READ, encode(address, 2) + encode(length, 2) + bytes(ids))


def sync_write(address: int, length: int, data: dict[int, bytes]) -> bytes:
    params = bytearray(encode(address, 2) + encode(length, 2))
    for sid, d in data.items():
        if len(d) != length:
            raise ValueError(f"sync_write: servo {sid} data has {len(d)} bytes, expected {length}")
        params += bytes((sid,)) + bytes(d)
    return build_instruction(BROADCAST_ID, SYNC_WRITE, bytes(params))


def ping_status(servo_id: int, model: int, firmware: int, error: int = 0) -> bytes:
    return build_status(servo_id, error, encode(model, 2) + bytes((firmware,)))
