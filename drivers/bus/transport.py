"""Serial transport (pyserial) and transport-agnostic packet handlers for Dynamixel / Feetech buses.

`SerialTransport` moves bytes and frames exactly one packet at a time; `DynamixelBus` and
`FeetechBus` turn ping/read/write/sync_read/sync_write/reboot into packets, retry a bounded number
of times on timeouts and corrupted replies, and raise typed errors that name the servo and port.
"""
from __future__ import annotations

import termios
import threading
import time
from types import ModuleType

import serial

from drivers.bus import dynamixel as dxl
from drivers.bus import feetech as fts
from drivers.bus.errors import (BusDisconnected, BusError, ChecksumMismatch, PacketError, ServoError,
                                ServoTimeout)
from drivers.interfaces import DeviceError

# what a vanished adapter raises: pyserial wraps most, termios.tcflush errors come through raw
_IO_ERRORS = (serial.SerialException, OSError, termios.error)


def _open_hint(e: Exception) -> str:
    """What to do, by the cause pyserial reports."""
    errno = getattr(e, "errno", None)
    text = str(e)
    if errno == 2 or "No such file" in text:
        return ("No such device: is the USB adapter plugged in and powered, and the path right? "
                "List adapters with `ls /dev/serial/by-id/` (or `python -m serial.tools.list_ports`)")
    if errno == 13 or "Permission denied" in text:
        return ("Permission denied: add yourself to the serial group (Linux: `sudo usermod -aG dialout "
                "$USER`, then log out and in) or check the udev rules")
    if errno == 16 or "busy" in text.lower():
        return "The port is busy: close other programs using it (Dynamixel Wizard, another teleop)"
    if errno == 25 or "Inappropriate ioctl" in text:
        return "That path is not a serial port: pick the adapter's /dev/ttyUSB* or /dev/ttyACM* device"
    return ("Check the adapter is plugged in, the path is right (ls /dev/serial/by-id/) and that you "
            "may use it (Linux: `sudo usermod -aG dialout $USER`)")


class ReadTimeout(BusError):
    """No complete packet arrived within the timeout (internal; the bus turns it into ServoTimeout)."""


class SerialTransport:
    """A serial port (USB adapter or pty) that frames packets for a codec module."""

    def __init__(self, port: str, baud: int = 1_000_000, timeout: float = 0.05):
        self.port, self.baud, self.timeout = port, int(baud), float(timeout)
        self.low_latency = False
        self._ser: serial.Serial | None = None
        self._buf = bytearray()

    @property
    def is_open(self) -> bool:
        return self._ser is not None and self._ser.is_open

    def open(self) -> None:
        if self.is_open:
            return
        ser = serial.Serial(port=None, baudrate=self.baud, timeout=self.timeout, write_timeout=1.0)
        ser.port = self.port
        try:
            ser.open()
        except (serial.SerialException, OSError, ValueError) as e:
            raise DeviceError(f"cannot open servo bus port {self.port!r}: {e}. {_open_hint(e)}") from None
        try:   # FTDI adapters default to a 16 ms latency timer; ask for 1 ms where the driver allows
            ser.set_low_latency_mode(True)
            self.low_latency = True
        except (ValueError, OSError, AttributeError, NotImplementedError):
            self.low_latency = False          # ptys and some drivers refuse: carry on
        self._ser = ser
        self._buf.clear()

    def close(self) -> None:
        ser, self._ser = self._ser, None
        if ser is not None:
            try:
                ser.close()
            except _IO_ERRORS:
                pass

    def _lost(self, e: Exception) -> BusDisconnected:
        self.close()
        return BusDisconnected(f"servo bus port {self.port} failed ({e}): USB adapter unplugged or "
                               "port taken by another program? Re-plug it; the next command reconnects")

    def _ensure_open(self) -> serial.Serial:
        if not self.is_open:
            self.open()
        assert self._ser is not None
        return self._ser

    def flush_input(self) -> None:
        """Drop stale bytes (late replies of a timed-out transaction) before a new one."""
        ser = self._ensure_open()
        self._buf.clear()
        try:
            ser.reset_input_buffer()
        except _IO_ERRORS as e:
            raise self._lost(e) from None

    def write(self, data: bytes) -> None:
        ser = self._ensure_open()
        try:
            ser.write(data)
        except _IO_ERRORS as e:
            raise self._lost(e) from None

    def set_timeout(self, timeout: float) -> None:
        """Per-packet reply timeout from now on (the control loop's tick budget, ServoArm.set_period)."""
        self.timeout = float(timeout)
        if self._ser is not None:
            self._ser.timeout = self.timeout

    def read_packet(self, codec: ModuleType, timeout: float | None = None) -> bytes:
        """Return exactly one framed packet (header..checksum) for `codec`, raw and unverified
        except for its framing; raise ReadTimeout if none completes in time."""
        ser = self._ensure_open()
        buf = self._buf
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        hlen = len(codec.HEADER)
        while True:
            i = codec.find_header(buf)
            if i < 0:   # keep a possible partial header at the end
                del buf[:max(0, len(buf) - (hlen - 1))]
            elif i > 0:
                del buf[:i]
            need = codec.MIN_PACKET
            if i >= 0:
                n = codec.frame_length(buf)
                if n is not None:
                    if n < codec.MIN_PACKET or n > 4 + 1030 or (codec is fts and buf[2] == 0xFF):
                        del buf[:1]            # a header look-alike inside junk: resync
                        continue
                    if len(buf) >= n:
                        pkt = bytes(buf[:n])
                        del buf[:n]
                        return pkt
                    need = n
            if time.monotonic() >= deadline:
                raise ReadTimeout(f"no complete packet on {self.port} within the timeout")
            try:
                want = max(need - len(buf), ser.in_waiting, 1)
                chunk = ser.read(want)
            except _IO_ERRORS as e:
                raise self._lost(e) from None
            buf += chunk


class _ServoBus:
    """Shared request/response logic; subclasses bind a codec."""
    codec: ModuleType
    name = "servo"

    def __init__(self, transport: SerialTransport, retries: int = 3):
        self.t = transport
        self.retries = max(1, int(retries))
        self.lock = threading.RLock()
        self.stats = {"timeouts": 0, "corrupt": 0, "retries": 0}
        self.last_request_time = 0.0   # monotonic time the last request left (servos sample then)

    @property
    def port(self) -> str:
        return self.t.port

    def set_budget(self, timeout: float, retries: int) -> None:
        """Per-packet timeout and tries per transaction: a transaction that fails takes at most
        timeout * retries (plus the write)."""
        self.t.set_timeout(timeout)
        self.retries = max(1, int(retries))

    def open(self) -> None:
        self.t.open()

    def close(self) -> None:
        self.t.close()

    # -- subclass hooks
    def _parse(self, raw: bytes):
        return self.codec.parse_packet(raw)[0]

    def _retryable_servo_error(self, e: ServoError) -> bool:
        return False

    def transact(self, packet: bytes, ids: list[int], allow_alert: bool = False) -> dict[int, object]:
        """Send `packet`, collect one status packet from each id in `ids` (none for broadcast
        writes), retrying the whole exchange on timeouts / corruption. Returns {id: Packet}.
        allow_alert: don't raise for health bits (hardware alert / overload ...), e.g. to read
        the error status register of a servo that has latched an error. ServoTimeout names the servos that
        answered none of the tries (all that missed the last one if each answered some try)."""
        with self.lock:
            got: dict[int, object] = {}
            corrupt: ChecksumMismatch | None = None
            answered: set[int] = set()        # over every try: a servo that answered once is not the silent one
            for attempt in range(self.retries):
                if attempt:
                    self.stats["retries"] += 1
                self.t.flush_input()
                self.t.write(packet)
                self.last_request_time = time.monotonic()
                got, corrupt = {}, None
                try:
                    while len(got) < len(ids):
                        raw = self.t.read_packet(self.codec)
                        try:
                            pkt = self._parse(raw)
                        except ChecksumMismatch as e:
                            corrupt = e
                            self.stats["corrupt"] += 1
                            continue          # keep reading: later servos may still answer cleanly
                        except PacketError:
                            continue
                        if pkt.servo_id in ids and pkt.servo_id not in got:
                            got[pkt.servo_id] = pkt
                except ReadTimeout:
                    self.stats["timeouts"] += 1
                    continue
                finally:
                    answered.update(got)
                try:
                    for sid in ids:
                        p = got[sid]
                        if allow_alert and p.error:
                            p = type(p)(p.servo_id, p.instruction, p.params, p.error & ~self.codec.ALERT_MASK)
                        self.codec.raise_for_status(p)
                except ServoError as e:
                    if self._retryable_servo_error(e) and attempt + 1 < self.retries:
                        continue
                    raise
                return got
            missing = [i for i in ids if i not in answered] or [i for i in ids if i not in got]
            if corrupt is not None:
                raise ChecksumMismatch(f"{corrupt} -- still corrupt after {self.retries} tries on "
                                       f"{self.port} (missing replies from {missing}): check cable, "
                                       "termination and that every servo uses the same baud rate")
            raise ServoTimeout(missing, self.port, self.retries)

    # -- public API
    def ping(self, servo_id: int) -> int:
        """Return the model number; ServoTimeout if the servo does not answer."""
        raise NotImplementedError

    def read(self, servo_id: int, address: int, length: int, allow_alert: bool = False) -> bytes:
        pkt = self.transact(self.codec.read(servo_id, address, length), [servo_id], allow_alert)[servo_id]
        if len(pkt.params) != length:
            raise BusError(f"servo {servo_id} returned {len(pkt.params)} bytes, expected {length}")
        return pkt.params

    def write(self, servo_id: int, address: int, data: bytes) -> None:
        ids = [] if servo_id == self.codec.BROADCAST_ID else [servo_id]
        self.transact(self.codec.write(servo_id, address, data), ids)

    def sync_read(self, address: int, length: int, ids: list[int]) -> dict[int, bytes]:
        """One SYNC_READ for all ids -> {id: data}; replies come back in id order."""
        got = self.transact(self.codec.sync_read(address, length, list(ids)), list(ids))
        out = {}
        for sid in ids:
            p = got[sid].params
            if len(p) != length:
                raise BusError(f"servo {sid} returned {len(p)} bytes in sync read, expected {length}")
            out[sid] = p
        return out

    def sync_write(self, address: int, length: int, data: dict[int, bytes]) -> None:
        """One SYNC_WRITE (broadcast: no replies, so no retry is possible)."""
        with self.lock:
            self.t.write(self.codec.sync_write(address, length, data))

    def reboot(self, servo_id: int) -> None:
        raise NotImplementedError


class DynamixelBus(_ServoBus):
    """Protocol 2.0 packet handler (X-series)."""
    codec = dxl
    name = "dynamixel"

    def _retryable_servo_error(self, e: ServoError) -> bool:
        return isinstance(e, dxl.CRCError)     # our instruction got corrupted on the way

    def ping(self, servo_id: int) -> int:
        return self.ping_info(servo_id)[0]

    def ping_info(self, servo_id: int) -> tuple[int, int]:
        """(model number, firmware version)."""
        pkt = self.transact(dxl.ping(servo_id), [servo_id])[servo_id]
        if len(pkt.params) < 3:
            raise BusError(f"servo {servo_id} sent a short ping reply")
        return dxl.decode(pkt.params[:2], signed=False), pkt.params[2]

    def hardware_error_status(self, servo_id: int) -> int:
        """Hardware Error Status (address 70): 0x01 voltage, 0x04 overheat, 0x08 encoder,
        0x10 electrical shock, 0x20 overload. Readable while the alert is latched."""
        return self.read(servo_id, dxl.ADDR_HARDWARE_ERROR, 1, allow_alert=True)[0]

    def reboot(self, servo_id: int) -> None:
        """Clear a latched hardware error (torque goes off, the servo restarts)."""
        ids = [] if servo_id == dxl.BROADCAST_ID else [servo_id]
        self.transact(dxl.reboot(servo_id), ids)


class FeetechBus(_ServoBus):
    """STS/SCS packet handler (STS3215)."""
    codec = fts
    name = "feetech"

    def _retryable_servo_error(self, e: ServoError) -> bool:
        return isinstance(e, fts.ChecksumError)

    def ping(self, servo_id: int) -> int:
        self.transact(fts.ping(servo_id), [servo_id])
        return fts.decode(self.read(servo_id, fts.ADDR_MODEL_NUMBER, 2), signed=False)

    def reboot(self, servo_id: int) -> None:
        """STS servos have no REBOOT instruction: a latched overload clears by re-enabling torque."""
        raise BusError("Feetech STS servos have no reboot instruction: power-cycle the bus, or write "
                       "torque enable = 1 again to clear an overload")


def make_bus(protocol: str, port: str, baud: int = 1_000_000, timeout: float = 0.05,
             retries: int = 3) -> DynamixelBus | FeetechBus:
    cls = {"dynamixel": DynamixelBus, "feetech": FeetechBus}.get(protocol)
    if cls is None:
        raise ValueError(f"unknown servo protocol {protocol!r}: use 'dynamixel' or 'feetech'")
    return cls(SerialTransport(port, baud, timeout), retries)
