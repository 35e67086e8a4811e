"""A simulated servo bus on a pseudo-terminal: real serial clients talk to it like to a U2D2 /
Waveshare adapter with X-series (Protocol 2.0) or STS3215 servos behind it.

    bus = SimServoBus(IdealServos(8), protocol="dynamixel")
    port = bus.start()          # e.g. "/dev/pts/7"; open it with serial.Serial / DynamixelSDK
    ...
    bus.stop()

A thread answers byte-for-byte from a per-servo control-table memory. Present position/velocity
come from a `ServoBackend` (joint angles in rad, in id order; the last joint is the gripper in its
own units); goals written to the servos go to `backend.set_target`, torque enable to `set_torque`.

Unit mapping (fixed, like an assembled arm with its horns centred):
  ticks = 2048 + angle_rad * 4096 / (2*pi);  gripper servo angle = gripper_units * gripper_scale
with gripper_scale = pi/2 by default (workcell gripper fraction 0..1 -> 0..90 deg of horn travel),
so a matching calibration uses offset 2048, sign +1, scale 1 for joints and scale 2/pi for the gripper.

Dynamixel servos boot in extended position mode (operating mode 4) because sim7 joints span more
than +-pi around the centre tick; write mode 3 to get the 0..4095 limits of a factory servo.

Torque: the backend has one switch, on while any servo has torque enabled (a limp arm for
kinesthetic teaching means torque off on all servos).

Feetech servos keep the factory angle limits 0..4095 (ServoArm clamps goals to them), except in
SimServoBus.workcell(), which sets both limits to 0 (multi-turn) so sim7's joint6 (up to 3.75 rad)
is reachable.

Feetech status errors: the sim answers bad accesses (unknown/read-only address, value outside an
item's range, unknown instruction) with bit 0x40, the protocol-1 "instruction error" bit.
"""
from __future__ import annotations

import math
import os
import pty
import queue
import select
import threading
import time
import tty
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from drivers.bus import dynamixel as dxl
from drivers.bus import feetech as fts
from drivers.bus.errors import ChecksumMismatch, IncompletePacket, PacketError

TICKS_PER_RAD = 4096 / (2 * math.pi)


@runtime_checkable
class ServoBackend(Protocol):
    """What the bus needs from the world behind the servos."""
    lock: Any

    def qpos(self) -> np.ndarray: ...
    def set_target(self, q) -> None: ...
    def set_torque(self, on: bool) -> None: ...


class IdealServos:
    """n position servos that move toward their target at `max_speed` (units/s) with torque on
    and stay where they are pushed with torque off. Last joint = gripper (fraction open)."""

    def __init__(self, n: int = 8, max_speed: float = 2.0, q0=None):
        self.lock = threading.RLock()
        self._q = np.zeros(n) if q0 is None else np.array(q0, dtype=float)
        self._target = self._q.copy()
        self._v = np.zeros(n)
        self.max_speed = float(max_speed)
        self.torque = False

    def qpos(self) -> np.ndarray:
        with self.lock:
            return self._q.copy()

    def qvel(self) -> np.ndarray:
        with self.lock:
            return self._v.copy()

    def goal(self) -> np.ndarray:
        with self.lock:
            return self._target.copy()

    def set_target(self, q) -> None:
        q = np.asarray(q, dtype=float)
        if q.shape != self._q.shape or not np.all(np.isfinite(q)):
            raise ValueError(f"target must be {self._q.size} finite numbers, got {q!r}")
        with self.lock:
            self._target = q.copy()

    def set_torque(self, on: bool) -> None:
        with self.lock:
            self.torque = bool(on)
            if not on:
                self._v[:] = 0

    def push(self, q) -> None:
        """Move the joints by hand (ignored while torque is on, like a real arm)."""
        with self.lock:
            if self.torque:
                return          # a powered servo holds its position
            self._q = np.asarray(q, dtype=float).copy()
            self._target = self._q.copy()

    def step(self, dt: float) -> None:
        with self.lock:
            if not self.torque or dt <= 0:
                self._v[:] = 0
                return
            d = np.clip(self._target - self._q, -self.max_speed * dt, self.max_speed * dt)
            self._q += d
            self._v = d / dt


# ---- control tables: addr -> (size, writable, lo, hi, eeprom)

@dataclass(frozen=True)
class Item:
    addr: int
    size: int
    writable: bool
    lo: int = 0
    hi: int = 0
    eeprom: bool = False


def _table(items: list[Item]) -> dict[int, Item]:
    return {i.addr: i for i in items}


DXL_ITEMS = _table([
    Item(0, 2, False), Item(2, 4, False), Item(6, 1, False),
    Item(7, 1, True, 0, 252, True), Item(8, 1, True, 0, 7, True), Item(9, 1, True, 0, 254, True),
    Item(10, 1, True, 0, 255, True), Item(11, 1, True, 0, 16, True), Item(12, 1, True, 0, 255, True),
    Item(13, 1, True, 1, 2, True), Item(20, 4, True, -1044479, 1044479, True),
    Item(31, 1, True, 0, 100, True), Item(32, 2, True, 60, 140, True), Item(34, 2, True, 60, 140, True),
    Item(36, 2, True, 0, 885, True), Item(44, 4, True, 0, 1023, True),
    Item(48, 4, True, 0, 4095, True), Item(52, 4, True, 0, 4095, True), Item(63, 1, True, 0, 255, True),
    Item(64, 1, True, 0, 1), Item(65, 1, True, 0, 1), Item(68, 1, True, 0, 2),
    Item(69, 1, False), Item(70, 1, False),
    Item(84, 2, True, 0, 16383), Item(82, 2, True, 0, 16383), Item(80, 2, True, 0, 16383),
    Item(100, 2, True, -885, 885), Item(104, 4, True, -1023, 1023),
    Item(108, 4, True, 0, 32767), Item(112, 4, True, 0, 32767),
    Item(116, 4, True, -1048575, 1048575),
    Item(120, 2, False), Item(122, 1, False), Item(123, 1, False), Item(124, 2, False),
    Item(126, 2, False), Item(128, 4, False), Item(132, 4, False), Item(136, 4, False),
    Item(140, 4, False), Item(144, 2, False), Item(146, 1, False),
])
DXL_SIGNED = {20, 100, 104, 116, 124, 126, 128, 132, 136, 140}
DXL_TABLE_SIZE = 147

FTS_ITEMS = _table([
    Item(0, 1, False), Item(1, 1, False), Item(3, 2, False),
    Item(5, 1, True, 0, 253), Item(6, 1, True, 0, 7), Item(7, 1, True, 0, 254), Item(8, 1, True, 0, 1),
    Item(9, 2, True, 0, 4095), Item(11, 2, True, 0, 4095), Item(13, 1, True, 0, 100),
    Item(14, 1, True, 0, 254), Item(15, 1, True, 0, 254), Item(16, 2, True, 0, 1000),
    Item(21, 1, True, 0, 254), Item(22, 1, True, 0, 254), Item(23, 1, True, 0, 254),
    Item(31, 2, True, -2047, 2047), Item(33, 1, True, 0, 3),
    Item(40, 1, True, 0, 128), Item(41, 1, True, 0, 254), Item(42, 2, True, -32767, 32767),
    Item(44, 2, True, 0, 65535), Item(46, 2, True, -32767, 32767), Item(48, 2, True, 0, 1000),
    Item(55, 1, True, 0, 1),
    Item(56, 2, False), Item(58, 2, False), Item(60, 2, False), Item(62, 1, False), Item(63, 1, False),
    Item(65, 1, False), Item(66, 1, False), Item(69, 2, False),
])
FTS_SIGNED_BIT = {31: 11, 42: 15, 46: 15, 56: 15, 58: 15, 60: 10, 69: 15}
FTS_TABLE_SIZE = 86


class _Servo:
    """One servo's control-table memory plus the protocol's encoding rules."""

    def __init__(self, protocol: str, sid: int, joint: int, model: int):
        self.protocol, self.joint = protocol, joint
        self.items = DXL_ITEMS if protocol == "dynamixel" else FTS_ITEMS
        self.mem = bytearray(DXL_TABLE_SIZE if protocol == "dynamixel" else FTS_TABLE_SIZE)
        if protocol == "dynamixel":
            self.set(0, model); self.set(6, 45); self.set(8, 3); self.set(9, 0); self.set(11, 4)
            self.set(13, 2); self.set(31, 72); self.set(32, 140); self.set(34, 60); self.set(36, 885)
            self.set(44, 265); self.set(48, 4095); self.set(52, 0); self.set(68, 2)
            self.set(144, 120); self.set(146, 30)
        else:
            self.set(0, 3); self.set(1, 9); self.set(3, model); self.set(6, 0); self.set(7, 0)
            self.set(8, 1); self.set(9, 0); self.set(11, 4095); self.set(13, 70); self.set(14, 140)
            self.set(15, 40); self.set(16, 1000); self.set(48, 1000); self.set(55, 1)
            self.set(62, 74); self.set(63, 30)
        self.sid = sid
        self.alert = 0            # latched hardware error bits (fault injection)

    @property
    def sid(self) -> int:
        return self.mem[dxl.ADDR_ID if self.protocol == "dynamixel" else fts.ADDR_ID]

    @sid.setter
    def sid(self, v: int) -> None:
        self.mem[dxl.ADDR_ID if self.protocol == "dynamixel" else fts.ADDR_ID] = v

    def _enc(self, addr: int, value: int, size: int) -> bytes:
        if self.protocol == "dynamixel":
            return dxl.encode(value, size)
        bit = FTS_SIGNED_BIT.get(addr)
        if bit is not None and value < 0:
            value = fts.to_sign_magnitude(value, bit)
        return int(value & ((1 << 8 * size) - 1)).to_bytes(size, "little")

    def _dec(self, addr: int, data: bytes) -> int:
        if self.protocol == "dynamixel":
            return dxl.decode(data, signed=addr in DXL_SIGNED)
        bit = FTS_SIGNED_BIT.get(addr)
        raw = int.from_bytes(data, "little")
        return fts.from_sign_magnitude(raw, bit) if bit is not None else raw

    def set(self, addr: int, value: int) -> None:
        size = self.items[addr].size
        self.mem[addr:addr + size] = self._enc(addr, int(value), size)

    def get(self, addr: int) -> int:
        size = self.items[addr].size
        return self._dec(addr, bytes(self.mem[addr:addr + size]))

    def check_write(self, addr: int, data: bytes) -> int:
        """0 if the write is acceptable, else the protocol's error byte."""
        dx = self.protocol == "dynamixel"
        end = addr + len(data)
        if end > len(self.mem) or not data:
            return 0x04 if dx else 0x40
        i = addr
        while i < end:
            it = self.items.get(i)
            if it is None:
                covering = [x for x in self.items.values() if x.addr < i < x.addr + x.size]
                if covering:                                   # starts in the middle of an item
                    return 0x05 if dx else 0x40
                i += 1                                         # reserved byte: ignored
                continue
            if not it.writable:
                return 0x07 if dx else 0x40
            if i + it.size > end:
                return 0x05 if dx else 0x40                    # cuts an item short
            if dx and it.eeprom and self.get(dxl.ADDR_TORQUE_ENABLE):
                return 0x07                                    # EEPROM locked while torque is on
            v = self._dec(i, data[i - addr:i - addr + it.size])
            lo, hi = it.lo, it.hi
            if dx and i == dxl.ADDR_GOAL_POSITION and self.get(dxl.ADDR_OPERATING_MODE) == 3:
                lo, hi = self.get(dxl.ADDR_MIN_POSITION_LIMIT), self.get(dxl.ADDR_MAX_POSITION_LIMIT)
            if dx and i == dxl.ADDR_OPERATING_MODE and v not in (0, 1, 3, 4, 5, 16):
                return 0x06
            if not dx and i == fts.ADDR_TORQUE_ENABLE and v not in (0, 1, 128):
                return 0x40
            if not lo <= v <= hi:
                return 0x06 if dx else 0x40
            i += it.size
        return 0

    def check_read(self, addr: int, length: int) -> int:
        if length <= 0 or addr + length > len(self.mem):
            return 0x04 if self.protocol == "dynamixel" else 0x40
        return 0


@dataclass
class _Faults:
    drop: dict[int, int | None] = field(default_factory=dict)     # id -> replies left to drop (None: all)
    spare: dict[int, int] = field(default_factory=dict)            # id -> replies sent before the drop starts
    corrupt: dict[int, int] = field(default_factory=dict)          # id -> replies left to corrupt
    unplugged: str | None = None                                   # None | "silent" | "eio"


class SimServoBus:
    """Serve a `ServoBackend` as Dynamixel X-series or Feetech STS3215 servos on a pty."""

    def __init__(self, backend: ServoBackend, protocol: str = "dynamixel", ids: list[int] | None = None,
                 baud: int = 1_000_000, model_wire_time: bool = False, step_backend: bool = False,
                 gripper_scale: float = math.pi / 2, model: int | None = None, link: str | None = None,
                 step_period: float = 0.005):
        if protocol not in ("dynamixel", "feetech"):
            raise ValueError(f"protocol must be 'dynamixel' or 'feetech', got {protocol!r}")
        self.backend = backend
        self.protocol = protocol
        self.codec = dxl if protocol == "dynamixel" else fts
        n = len(np.asarray(backend.qpos()))
        self.ids = list(ids) if ids is not None else list(range(1, n + 1))
        if len(self.ids) != n:
            raise ValueError(f"{len(self.ids)} servo ids for a backend with {n} joints")
        self.baud = int(baud)
        self.model_wire_time = model_wire_time
        self.step_backend = step_backend
        self.step_period = step_period
        self.gripper_scale = float(gripper_scale)
        self.link = link
        model = model if model is not None else (dxl.MODEL_XL430 if protocol == "dynamixel"
                                                 else fts.MODEL_STS3215)
        self.servos = [_Servo(protocol, sid, k, model) for k, sid in enumerate(self.ids)]
        self.faults = _Faults()
        self.stats = {"rx_packets": 0, "tx_packets": 0}
        self.port: str | None = None
        self._master = self._slave = -1
        self._wake_r, self._wake_w = os.pipe()
        self._cmds: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._running = False
        self._flock = threading.Lock()
        self._last_q: np.ndarray | None = None
        self._last_t = 0.0
        self._vel = np.zeros(n)
        self._t_rx = 0.0          # when the last chunk of request bytes arrived
        self._bus_t = 0.0         # wire-time model: the line is busy until this time
        q = self._backend_q()
        for s in self.servos:
            s.set(self._pos_addr, self._to_ticks(q, s.joint))
            s.set(self._goal_addr, self._to_ticks(q, s.joint))

    @classmethod
    def workcell(cls, protocol: str = "dynamixel", workcell=None, **kw) -> "SimServoBus":
        """The simulated workcell (7 joints + gripper) as servos 1..8, stepped in real time.
        drivers.sim is imported only here, so drivers/bus works without it."""
        if workcell is None:
            from drivers.sim.workcell import Workcell   # lazy: optional dependency
            workcell = Workcell()
        kw.setdefault("step_backend", True)
        bus = cls(workcell, protocol=protocol, **kw)
        if protocol == "feetech":
            for srv in bus.servos:      # min = max = 0: multi-turn, no angle limits
                srv.set(fts.ADDR_MIN_ANGLE_LIMIT, 0)
                srv.set(fts.ADDR_MAX_ANGLE_LIMIT, 0)
        return bus

    # ---- unit mapping
    @property
    def _pos_addr(self) -> int:
        return dxl.ADDR_PRESENT_POSITION if self.protocol == "dynamixel" else fts.ADDR_PRESENT_POSITION

    @property
    def _goal_addr(self) -> int:
        return dxl.ADDR_GOAL_POSITION if self.protocol == "dynamixel" else fts.ADDR_GOAL_POSITION

    @property
    def _torque_addr(self) -> int:
        return dxl.ADDR_TORQUE_ENABLE if self.protocol == "dynamixel" else fts.ADDR_TORQUE_ENABLE

    def _joint_scale(self, j: int) -> float:
        return self.gripper_scale if j == len(self.servos) - 1 else 1.0

    def _to_ticks(self, q: np.ndarray, j: int) -> int:
        t = int(round(2048 + q[j] * self._joint_scale(j) * TICKS_PER_RAD))
        lim = 1048575 if self.protocol == "dynamixel" else 32767
        return max(-lim, min(lim, t))

    def _from_ticks(self, ticks: int, j: int) -> float:
        return (ticks - 2048) / TICKS_PER_RAD / self._joint_scale(j)

    def _backend_q(self) -> np.ndarray:
        with self.backend.lock:
            return np.asarray(self.backend.qpos(), dtype=float).copy()

    # ---- lifecycle
    def start(self) -> str:
        """Open the pty and start serving; returns the device path to open (the link if given)."""
        if self._running:
            return self.port or ""
        if self._wake_r < 0:
            raise RuntimeError("a stopped SimServoBus cannot be restarted: make a new one")
        self._open_pty()
        self._running = True
        self._thread = threading.Thread(target=self._serve, name=f"simbus-{self.protocol}", daemon=True)
        self._thread.start()
        return self.port or ""

    def _open_pty(self) -> None:
        self._master, self._slave = pty.openpty()
        tty.setraw(self._slave)                  # no echo, no line discipline: raw bytes like a UART
        os.set_blocking(self._master, False)
        dev = os.ttyname(self._slave)
        if self.link:
            tmp = f"{self.link}.tmp{os.getpid()}"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(dev, tmp)
            os.replace(tmp, self.link)           # atomic: a client never sees a missing link mid-swap
            self.port = self.link
        else:
            self.port = dev
        self.device = dev

    def _close_pty(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._master = self._slave = -1

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        os.write(self._wake_w, b"x")
        if self._thread:
            self._thread.join(2.0)
        self._close_pty()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._wake_r = self._wake_w = -1
        if self.link and os.path.islink(self.link):
            os.unlink(self.link)

    def __enter__(self) -> "SimServoBus":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- fault injection
    def drop_replies(self, ids: list[int] | int, n: int | None = None, after: int = 0) -> None:
        """Silence servos: drop their next n replies (n=None: until clear_faults(); n=0 clears). after=K: the
        servos first answer K more times (a cable that works loose in the middle of a transaction's retries)."""
        with self._flock:
            for i in [ids] if isinstance(ids, int) else ids:
                self.faults.spare.pop(i, None)
                if n == 0:
                    self.faults.drop.pop(i, None)
                else:
                    self.faults.drop[i] = n
                    if after:
                        self.faults.spare[i] = after

    def corrupt_crc(self, ids: list[int] | int, n: int = 1) -> None:
        """Flip the CRC/checksum of the next n replies from each of these servos."""
        with self._flock:
            for i in [ids] if isinstance(ids, int) else ids:
                self.faults.corrupt[i] = n

    def clear_faults(self) -> None:
        with self._flock:
            self.faults.drop.clear()
            self.faults.spare.clear()
            self.faults.corrupt.clear()

    def hardware_error(self, ids: list[int] | int, bits: int = 0x20) -> None:
        """Latch a hardware error like a stalled servo (default 0x20 = overload): torque goes off
        and every status packet carries it (Dynamixel: alert bit 0x80 + Hardware Error Status at
        address 70, cleared by REBOOT; Feetech: the status bit, cleared by writing torque on)."""
        self._command(("hwerr", [ids] if isinstance(ids, int) else list(ids), bits))

    def unplug(self, eio: bool = False) -> None:
        """Whole bus goes silent (power cut), or with eio=True the adapter vanishes: the pty is
        closed and client reads/writes fail with EIO."""
        self._command("unplug_eio" if eio else "unplug")

    def replug(self) -> str:
        """Undo unplug(); after an EIO unplug a new pty is made (same path when `link` is set)."""
        self._command("replug")
        return self.port or ""

    def _command(self, cmd) -> None:
        if not self._running:
            raise RuntimeError("SimServoBus is not started")
        done = threading.Event()
        self._cmds.put((cmd, done))
        os.write(self._wake_w, b"c")
        if not done.wait(2.0):
            raise RuntimeError(f"sim bus thread did not handle {cmd!r}")

    def _do_command(self, cmd) -> None:
        if isinstance(cmd, tuple) and cmd[0] == "hwerr":
            for sid in cmd[1]:
                srv = self._servo(sid)
                if srv is not None:
                    self._apply(srv, self._torque_addr, b"\x00")
                    srv.alert = cmd[2]
                    if self.protocol == "dynamixel":
                        srv.set(dxl.ADDR_HARDWARE_ERROR, cmd[2])
        elif cmd == "unplug":
            self.faults.unplugged = "silent"
        elif cmd == "unplug_eio":
            self.faults.unplugged = "eio"
            self._close_pty()
        elif cmd == "replug":
            if self.faults.unplugged == "eio":
                self._open_pty()
            self.faults.unplugged = None

    # ---- serving
    def _serve(self) -> None:
        buf = bytearray()
        last_step = time.monotonic()
        while self._running:
            fds = [self._wake_r] + ([self._master] if self._master >= 0 else [])
            timeout = self.step_period if self.step_backend else 0.2
            try:
                r, _, _ = select.select(fds, [], [], timeout)
            except (OSError, ValueError):
                r = []
            if self.step_backend:
                now = time.monotonic()
                if now - last_step >= self.step_period:
                    step = getattr(self.backend, "step", None)
                    if step is not None:
                        step(min(now - last_step, 0.1))
                    last_step = now
            if self._wake_r in r:
                os.read(self._wake_r, 64)
                self._receive(buf)    # bytes sent before the command was issued come first
                while not self._cmds.empty():
                    cmd, done = self._cmds.get()
                    self._do_command(cmd)
                    if cmd in ("unplug", "unplug_eio", "replug"):
                        buf.clear()
                    done.set()
                continue
            if self._master >= 0 and self._master in r and not self._receive(buf):
                time.sleep(0.01)      # EIO: no client has the slave open yet / anymore

    def _receive(self, buf: bytearray) -> bool:
        """Read whatever the client sent and serve it; False on a hung-up pty."""
        while self._master >= 0:
            try:
                data = os.read(self._master, 4096)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return True
            self._t_rx = time.monotonic()
            if self.faults.unplugged:
                continue              # dead bus: bytes vanish
            buf += data
            self._drain(buf)
        return True

    def _drain(self, buf: bytearray) -> None:
        codec = self.codec
        while buf:
            i = codec.find_header(buf)
            if i < 0:
                del buf[:max(0, len(buf) - len(codec.HEADER) + 1)]
                return
            del buf[:i]
            try:
                if self.protocol == "dynamixel":
                    pkt, n = dxl.parse_packet(buf)
                else:
                    pkt, n = fts.parse_instruction(buf)
            except IncompletePacket:
                return
            except ChecksumMismatch:
                n = codec.frame_length(buf) or 1
                sid = buf[4] if self.protocol == "dynamixel" else buf[2]
                raw = bytes(buf[:n])
                del buf[:n]
                self._wire_advance(len(raw))
                if self._servo(sid) is not None:          # servo reports a bad packet addressed to it
                    self._reply([(sid, 0x03 if self.protocol == "dynamixel" else 0x10, b"")])
                continue
            except PacketError:
                del buf[:1]
                continue
            del buf[:n]
            self.stats["rx_packets"] += 1
            self._wire_advance(n)
            if self.protocol == "dynamixel" and pkt.instruction == dxl.STATUS:
                continue                                  # someone else's status packet: ignore
            self._handle(pkt)

    def _wire_advance(self, nbytes: int) -> float:
        """Account for nbytes on the half-duplex line (10 bit times each: start + 8 data + stop).
        Returns when they finish. Requests occupy the line from when they arrived, replies right
        after the request (return delay 0, as LeRobot configures servos)."""
        self._bus_t = max(self._bus_t, self._t_rx) + nbytes * 10 / self.baud
        return self._bus_t

    def _servo(self, sid: int) -> _Servo | None:
        for s in self.servos:
            if s.sid == sid:
                return s
        return None

    def _refresh(self) -> None:
        """Copy the backend state into present position / velocity."""
        q = self._backend_q()
        qvel = getattr(self.backend, "qvel", None)
        if qvel is not None:
            with self.backend.lock:
                v = np.asarray(qvel(), dtype=float)
        else:
            now = time.monotonic()
            if self._last_q is not None and now - self._last_t > 1e-3:
                self._vel = (q - self._last_q) / (now - self._last_t)
                self._last_q, self._last_t = q, now
            elif self._last_q is None:
                self._last_q, self._last_t = q, now
            v = self._vel
        dx = self.protocol == "dynamixel"
        for s in self.servos:
            j = s.joint
            s.set(self._pos_addr, self._to_ticks(q, j))
            rad_s = float(v[j]) * self._joint_scale(j)
            if dx:
                s.set(dxl.ADDR_PRESENT_VELOCITY, int(round(rad_s / dxl.VELOCITY_UNIT_RAD_S)))
                s.set(dxl.ADDR_MOVING, int(abs(rad_s) > 1e-3))
            else:
                s.set(fts.ADDR_PRESENT_SPEED, max(-32767, min(32767, int(round(rad_s / fts.SPEED_UNIT_RAD_S)))))
                s.set(fts.ADDR_MOVING, int(abs(rad_s) > 1e-3))

    def _apply(self, s: _Servo, addr: int, data: bytes) -> None:
        """Write into memory and propagate torque / goal / id changes to the backend."""
        old_torque = [x.get(self._torque_addr) for x in self.servos]
        s.mem[addr:addr + len(data)] = data
        span = range(addr, addr + len(data))
        if self._goal_addr in span and s.get(self._torque_addr):
            self._push_targets()
        if self._torque_addr in span:
            on = [x.get(self._torque_addr) for x in self.servos]
            if any(on) != any(old_torque):
                with self.backend.lock:     # torque first: a workcell ignores targets while limp
                    self.backend.set_torque(any(on))
                if any(on):   # torque on: hold where it is unless a goal comes
                    q = self._backend_q()
                    for x in self.servos:
                        x.set(self._goal_addr, self._to_ticks(q, x.joint))
                    self._push_targets()

    def _push_targets(self) -> None:
        q = np.array([self._from_ticks(s.get(self._goal_addr), s.joint) for s in self.servos])
        with self.backend.lock:
            self.backend.set_target(q)

    def _take_fault(self, sid: int) -> tuple[bool, bool]:
        with self._flock:
            drop = False
            if self.faults.spare.get(sid, 0) > 0:
                self.faults.spare[sid] -= 1
                if not self.faults.spare[sid]:
                    del self.faults.spare[sid]
            elif sid in self.faults.drop:
                left = self.faults.drop[sid]
                drop = True
                if left is not None:
                    if left <= 1:
                        del self.faults.drop[sid]
                    else:
                        self.faults.drop[sid] = left - 1
            corrupt = False
            if not drop and self.faults.corrupt.get(sid, 0) > 0:
                corrupt = True
                self.faults.corrupt[sid] -= 1
                if not self.faults.corrupt[sid]:
                    del self.faults.corrupt[sid]
        return drop, corrupt

    def _reply(self, replies: list[tuple[int, int, bytes]]) -> None:
        out = bytearray()
        for sid, err, params in replies:
            drop, corrupt = self._take_fault(sid)
            if drop:
                continue
            srv = self._servo(sid)
            if srv is not None and srv.alert:
                err |= 0x80 if self.protocol == "dynamixel" else srv.alert
            pkt = bytearray(self.codec.build_status(sid, err, params))
            if corrupt:
                pkt[-1] ^= 0x5A
            out += pkt
            self.stats["tx_packets"] += 1
        if not out or self.faults.unplugged or self._master < 0:
            return
        done = self._wire_advance(len(out))
        if self.model_wire_time:      # one sleep per reply, until its last byte would have arrived
            wait = done - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        try:
            os.write(self._master, bytes(out))
        except OSError:
            pass

    def _handle(self, pkt) -> None:
        if self.protocol == "dynamixel":
            self._handle_dxl(pkt)
        else:
            self._handle_fts(pkt)

    def _targets(self, sid: int) -> list[_Servo]:
        if sid == self.codec.BROADCAST_ID:
            return list(self.servos)
        s = self._servo(sid)
        return [s] if s else []

    def _handle_dxl(self, pkt: dxl.Packet) -> None:
        ins, p, bcast = pkt.instruction, pkt.params, pkt.servo_id == dxl.BROADCAST_ID
        targets = self._targets(pkt.servo_id)
        if ins == dxl.PING:   # broadcast ping: every servo answers, in id order
            self._reply([(s.sid, 0, s.mem[0:2] + s.mem[6:7]) for s in sorted(targets, key=lambda s: s.sid)])
            return
        if ins == dxl.SYNC_READ and bcast and len(p) >= 4:
            self._sync_read(dxl.decode(p[0:2], False), dxl.decode(p[2:4], False), p[4:])
            return
        if ins == dxl.SYNC_WRITE and bcast and len(p) >= 4:
            self._sync_write(dxl.decode(p[0:2], False), dxl.decode(p[2:4], False), p[4:])
            return
        if not targets:
            return
        replies = []
        for s in targets:
            if ins == dxl.READ and len(p) == 4:
                addr, length = dxl.decode(p[0:2], False), dxl.decode(p[2:4], False)
                self._refresh()
                err = s.check_read(addr, length)
                replies.append((s.sid, err, b"" if err else bytes(s.mem[addr:addr + length])))
            elif ins == dxl.WRITE and len(p) >= 3:
                addr, data = dxl.decode(p[0:2], False), bytes(p[2:])
                err = s.check_write(addr, data)
                if not err:
                    old = s.sid
                    self._apply(s, addr, data)
                    if s.sid != old:
                        replies.append((old, 0, b""))
                        continue
                replies.append((s.sid, err, b""))
            elif ins == dxl.REBOOT:
                replies.append((s.sid, 0, b""))
                self._apply(s, dxl.ADDR_TORQUE_ENABLE, b"\x00")
                s.set(dxl.ADDR_HARDWARE_ERROR, 0)
                s.alert = 0
            elif ins in (dxl.READ, dxl.WRITE):
                replies.append((s.sid, 0x05, b""))
            else:
                replies.append((s.sid, 0x02, b""))
        if bcast:
            return                                # broadcast instructions other than ping: no reply
        level = s.get(68)
        if level == 0 or (level == 1 and ins != dxl.READ):
            return
        self._reply(replies)

    def _sync_read(self, addr: int, length: int, ids) -> None:
        """Both protocols: each listed servo answers in the order asked; unknown ids stay silent."""
        self._refresh()
        out = []
        for sid in ids:
            s = self._servo(sid)
            if s is None:
                continue
            err = s.check_read(addr, length)
            out.append((sid, err, b"" if err else bytes(s.mem[addr:addr + length])))
        self._reply(out)

    def _sync_write(self, addr: int, length: int, body) -> None:
        """Both protocols: body = (id, data[length]) records; no reply, bad records are skipped."""
        for k in range(0, len(body) - length, length + 1):
            s = self._servo(body[k])
            d = bytes(body[k + 1:k + 1 + length])
            if s is not None and len(d) == length and s.check_write(addr, d) == 0:
                self._apply(s, addr, d)

    def _handle_fts(self, pkt: fts.Packet) -> None:
        ins, p, bcast = pkt.instruction, pkt.params, pkt.servo_id == fts.BROADCAST_ID
        if ins == fts.SYNC_READ and bcast and len(p) >= 2:
            self._sync_read(p[0], p[1], p[2:])
            return
        if ins == fts.SYNC_WRITE and bcast and len(p) >= 2:
            self._sync_write(p[0], p[1], p[2:])
            return
        targets = self._targets(pkt.servo_id)
        if not targets:
            return
        if ins == fts.PING:   # broadcast ping: every servo answers, in id order
            self._reply([(s.sid, 0, b"") for s in sorted(targets, key=lambda s: s.sid)])
            return
        replies = []
        for s in targets:
            if ins == fts.PING:
                replies.append((s.sid, 0, b""))
            elif ins == fts.READ and len(p) == 2:
                self._refresh()
                err = s.check_read(p[0], p[1])
                replies.append((s.sid, err, b"" if err else bytes(s.mem[p[0]:p[0] + p[1]])))
            elif ins == fts.WRITE and len(p) >= 2:
                err = s.check_write(p[0], bytes(p[1:]))
                if not err:
                    old = s.sid
                    if p[0] == fts.ADDR_TORQUE_ENABLE and p[1:2] == b"\x01":
                        s.alert = 0                       # re-enabling torque clears an overload
                    self._apply(s, p[0], bytes(p[1:]))
                    if s.sid != old:
                        replies.append((old, 0, b""))
                        continue
                replies.append((s.sid, err, b""))
            else:
                replies.append((s.sid, 0x40, b""))
        if not bcast:
            self._reply(replies)
