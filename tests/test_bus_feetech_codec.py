"""Feetech STS (SCS protocol) codec: golden packets, SDK byte equality, properties."""
import pytest
from hypothesis import given, settings, strategies as st

from drivers.bus import feetech as f
from drivers.bus.errors import ChecksumMismatch, IncompletePacket, PacketError


def h(s: str) -> bytes:
    return bytes.fromhex(s)


# Checksums worked out by hand: ~(ID + LEN + INSTR + params) & 0xFF
GOLDEN = [
    ("ping id1", f.ping(1), "FF FF 01 02 01 FB"),
    ("ping status id1", f.build_status(1, 0), "FF FF 01 02 00 FC"),
    ("read present position id1", f.read(1, 56, 2), "FF FF 01 04 02 38 02 BE"),
    ("write pos 2048 time 0 speed 1000", f.write(1, 42, h("00 08 00 00 E8 03")), "FF FF 01 09 03 2A 00 08 00 00 E8 03 D5"),
    ("torque on id1", f.write(1, 40, b"\x01"), "FF FF 01 04 03 28 01 CE"),
    ("sync read pos ids 1,2", f.sync_read(56, 2, [1, 2]), "FF FF FE 06 82 38 02 01 02 3C"),
    ("sync write goal 1:2048 2:1024", f.sync_write(42, 2, {1: f.encode(2048, 2), 2: f.encode(1024, 2)}),
     "FF FF FE 0A 83 2A 02 01 00 08 02 00 04 39"),
]


@pytest.mark.parametrize("name,built,expected", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden(name, built, expected):
    assert built == h(expected)


def test_parse_status_with_value():
    pkt, n = f.parse_status(h("FF FF 01 04 00 00 08 F2"))
    assert n == 8 and pkt.servo_id == 1 and pkt.error == 0 and f.decode(pkt.params) == 2048


def test_sign_magnitude():
    assert f.encode(-5, 2) == h("05 80")
    assert f.decode(h("05 80")) == -5
    assert f.decode(h("FF 0F")) == 4095
    assert f.from_sign_magnitude(0x0805, 11) == -5
    with pytest.raises(ValueError):
        f.to_sign_magnitude(40000)


@pytest.mark.parametrize("err,cls", [(0x01, f.VoltageError), (0x02, f.AngleError), (0x04, f.OverheatError),
                                     (0x08, f.OverCurrentError), (0x10, f.ChecksumError),
                                     (0x20, f.OverloadError), (0x40, f.InstructionError),
                                     (0x21, f.OverloadError)])
def test_status_error_typed(err, cls):
    pkt, _ = f.parse_status(f.build_status(4, err))
    with pytest.raises(cls) as ei:
        f.raise_for_status(pkt)
    assert ei.value.servo_id == 4 and "servo 4" in str(ei.value)


class _RecordingPort:
    is_using = False

    def __init__(self):
        self.sent = []

    def clearPort(self):
        pass

    def writePort(self, pkt):
        self.sent.append(bytes(pkt))
        return len(pkt)

    def setPacketTimeout(self, n):
        pass

    def readPort(self, n):
        return []

    def isPacketTimeout(self):
        return True


def test_bytes_equal_official_sdk():
    sdk = pytest.importorskip("scservo_sdk")
    ph = sdk.PacketHandler(0)
    port = _RecordingPort()
    ph.ping(port, 3)
    ph.readTxRx(port, 3, 56, 4)
    ph.write2ByteTxOnly(port, 3, 42, 3000)
    ph.syncWriteTxOnly(port, 42, 2, [1, 0, 8, 2, 0, 4], 6)
    ph.syncReadTx(port, 56, 2, [1, 2], 2)
    assert port.sent == [f.ping(3), f.read(3, 56, 4), f.write(3, 42, f.encode(3000, 2)),
                         f.sync_write(42, 2, {1: f.encode(2048, 2), 2: f.encode(1024, 2)}),
                         f.sync_read(56, 2, [1, 2])]


ids = st.integers(0, 0xFE)
payload = st.binary(max_size=60)


@settings(max_examples=300, deadline=None)
@given(sid=ids, instr=st.integers(0, 255), params=payload)
def test_roundtrip(sid, instr, params):
    pkt = f.build_instruction(sid, instr, params)
    parsed, n = f.parse_instruction(pkt + b"\xFF")
    assert n == len(pkt) and parsed == f.Packet(sid, instr, params, None)
    st_pkt, _ = f.parse_status(f.build_status(sid, instr, params))
    assert st_pkt == f.Packet(sid, None, params, instr)


@settings(max_examples=300, deadline=None)
@given(params=payload, data=st.data())
def test_corrupted_byte_is_detected(params, data):
    pkt = bytearray(f.build_instruction(5, f.WRITE, params))
    i = data.draw(st.integers(4, len(pkt) - 1))        # instr, params, checksum
    pkt[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises(ChecksumMismatch):
        f.parse_instruction(pkt)


@settings(max_examples=200, deadline=None)
@given(params=payload, data=st.data())
def test_truncated_is_incomplete(params, data):
    pkt = f.build_instruction(5, f.WRITE, params)
    with pytest.raises(IncompletePacket):
        f.parse_instruction(pkt[:data.draw(st.integers(0, len(pkt) - 1))])


def test_bad_header():
    with pytest.raises(PacketError):
        f.parse_status(h("FE FF 01 02 00 FC"))


@settings(deadline=None)
@given(st.integers(-32767, 32767))
def test_value_roundtrip(v):
    assert f.decode(f.encode(v, 2)) == v
