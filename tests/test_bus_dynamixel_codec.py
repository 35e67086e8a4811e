"""Dynamixel Protocol 2.0 codec: ROBOTIS emanual golden packets, SDK byte equality, properties."""
import pytest
from hypothesis import given, settings, strategies as st

from drivers.bus import dynamixel as d
from drivers.bus.errors import ChecksumMismatch, IncompletePacket, PacketError


def h(s: str) -> bytes:
    return bytes.fromhex(s)


# Example packets from the ROBOTIS emanual, Protocol 2.0 page (instruction/status examples).
GOLDEN = [
    ("ping id1", d.ping(1), "FF FF FD 00 01 03 00 01 19 4E"),
    ("ping status id1 model 1030 fw 38", d.ping_status(1, 1030, 38), "FF FF FD 00 01 07 00 55 00 06 04 26 65 5D"),
    ("broadcast ping", d.ping(0xFE), "FF FF FD 00 FE 03 00 01 31 42"),
    ("ping status id2", d.ping_status(2, 1030, 38), "FF FF FD 00 02 07 00 55 00 06 04 26 6F 6D"),
    ("read present position id1", d.read(1, 132, 4), "FF FF FD 00 01 07 00 02 84 00 04 00 1D 15"),
    ("read status 166", d.build_status(1, 0, d.encode(166, 4)), "FF FF FD 00 01 08 00 55 00 A6 00 00 00 8C C0"),
    ("write goal 512 id1", d.write(1, 116, d.encode(512, 4)), "FF FF FD 00 01 09 00 03 74 00 00 02 00 00 CA 89"),
    ("write/reboot status id1", d.build_status(1, 0), "FF FF FD 00 01 04 00 55 00 A1 0C"),
    ("reboot id1", d.reboot(1), "FF FF FD 00 01 03 00 08 2F 4E"),
    ("sync read ids 1,2", d.sync_read(132, 4, [1, 2]), "FF FF FD 00 FE 09 00 82 84 00 04 00 01 02 CE FA"),
    ("sync read status id2 2079", d.build_status(2, 0, d.encode(2079, 4)),
     "FF FF FD 00 02 08 00 55 00 1F 08 00 00 BA BE"),
    ("sync write 150/170", d.sync_write(116, 4, {1: d.encode(150, 4), 2: d.encode(170, 4)}),
     "FF FF FD 00 FE 11 00 83 74 00 04 00 01 96 00 00 00 02 AA 00 00 00 82 87"),
]


@pytest.mark.parametrize("name,built,expected", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_build(name, built, expected):
    assert built == h(expected)


def test_golden_parse():
    pkt, n = d.parse_packet(h("FF FF FD 00 01 07 00 55 00 06 04 26 65 5D") + b"\x99")
    assert n == 14 and pkt == d.Packet(1, d.STATUS, h("06 04 26"), 0)
    assert d.decode(pkt.params[:2], signed=False) == 1030
    pkt, _ = d.parse_packet(h("FF FF FD 00 01 08 00 55 00 A6 00 00 00 8C C0"))
    assert d.decode(pkt.params) == 166
    pkt, _ = d.parse_packet(h("FF FF FD 00 FE 09 00 82 84 00 04 00 01 02 CE FA"))
    assert pkt.servo_id == 0xFE and pkt.instruction == d.SYNC_READ and pkt.error is None


def test_crc_matches_emanual_sample():
    # emanual's sample: CRC of FF FF FD 00 01 07 00 02 00 00 02 00 ... we check against a golden packet
    body = h("FF FF FD 00 01 03 00 01")
    assert d.crc16(body) == 0x4E19


def test_stuffing_example():
    # write FF FF FD into goal position: the FD gets doubled and LEN counts the extra byte
    pkt = d.write(1, 116, h("FF FF FD 00"))
    assert h("FF FF FD FD") in pkt[7:]
    assert pkt[5] | pkt[6] << 8 == len(pkt) - 7
    parsed, _ = d.parse_packet(pkt)
    assert parsed.params == d.encode(116, 2) + h("FF FF FD 00")


ERR_CASES = [(0x01, d.ResultFail), (0x02, d.InstructionError), (0x03, d.CRCError), (0x04, d.DataRangeError),
             (0x05, d.DataLengthError), (0x06, d.DataLimitError), (0x07, d.AccessError),
             (0x80, d.HardwareAlert), (0x86, d.DataLimitError)]


@pytest.mark.parametrize("err,cls", ERR_CASES)
def test_status_error_byte_is_typed(err, cls):
    pkt, _ = d.parse_packet(d.build_status(3, err))
    with pytest.raises(cls) as ei:
        d.raise_for_status(pkt)
    assert ei.value.servo_id == 3 and ei.value.error == err and "servo 3" in str(ei.value)
    if err & 0x80 and err != 0x80:
        assert "hardware alert" in str(ei.value)


def test_clean_status_passes():
    pkt, _ = d.parse_packet(d.build_status(3, 0, b"\x01"))
    assert d.raise_for_status(pkt) is pkt


def test_bad_header_and_impossible_length():
    with pytest.raises(PacketError):
        d.parse_packet(h("FF FF FF 00 01 03 00 01 19 4E"))
    with pytest.raises(PacketError):
        d.parse_packet(h("FF FF FD 00 01 01 00 01 19 4E"))


class _RecordingPort:
    """Just enough of dynamixel_sdk.PortHandler to capture what the SDK would send."""
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

    def setPacketTimeoutMillis(self, n):
        pass

    def readPort(self, n):
        return []

    def isPacketTimeout(self):
        return True


def test_bytes_equal_official_sdk():
    sdk = pytest.importorskip("dynamixel_sdk")
    ph = sdk.PacketHandler(2.0)
    port = _RecordingPort()
    ph.ping(port, 7)
    ph.readTxRx(port, 7, 132, 4)
    ph.write4ByteTxOnly(port, 7, 116, 0x12345678)
    ph.reboot(port, 7)
    ph.syncWriteTxOnly(port, 116, 4, [1, 0, 8, 0, 0, 2, 0xF0, 0xFF, 0xFF, 0xFF], 10)
    assert port.sent == [d.ping(7), d.read(7, 132, 4), d.write(7, 116, d.encode(0x12345678, 4)), d.reboot(7),
                         d.sync_write(116, 4, {1: d.encode(2048, 4), 2: d.encode(-16, 4)})]
    # Known SDK 4.1.0 quirk: its Python txPacket drops addStuffing's result, so FF FF FD in data goes
    # out unstuffed. Our parser (and the sim) must still accept such a packet.
    ph.write4ByteTxOnly(port, 7, 116, 0x00FDFFFF)
    parsed, _ = d.parse_packet(port.sent[-1])
    assert parsed.params == d.encode(116, 2) + d.encode(0x00FDFFFF, 4)


ids = st.integers(0, 0xFE)
payload = st.one_of(st.binary(max_size=64),
                    st.lists(st.sampled_from([b"\xFF", b"\xFD", b"\x00", b"\xFF\xFF\xFD"]), max_size=20)
                    .map(b"".join))


@settings(max_examples=300, deadline=None)
@given(sid=ids, instr=st.integers(0, 255).filter(lambda i: i != d.STATUS), params=payload)
def test_roundtrip_instruction(sid, instr, params):
    pkt = d.build_instruction(sid, instr, params)
    assert d.HEADER not in pkt[4:] or pkt.count(b"\xFF\xFF\xFD") == pkt.count(b"\xFF\xFF\xFD\xFD") + 1
    parsed, n = d.parse_packet(pkt + b"\x00\x01")
    assert n == len(pkt) and parsed == d.Packet(sid, instr, params, None)


@settings(max_examples=300, deadline=None)
@given(sid=ids, err=st.integers(0, 255), params=payload)
def test_roundtrip_status(sid, err, params):
    parsed, _ = d.parse_packet(d.build_status(sid, err, params))
    assert parsed == d.Packet(sid, d.STATUS, params, err)


@settings(max_examples=300, deadline=None)
@given(params=payload, data=st.data())
def test_corrupted_byte_is_detected(params, data):
    pkt = bytearray(d.build_instruction(5, d.WRITE, params))
    i = data.draw(st.integers(7, len(pkt) - 1))          # body or CRC (header/len corruptions -> framing)
    pkt[i] ^= data.draw(st.integers(1, 255))
    with pytest.raises((ChecksumMismatch, PacketError)):
        d.parse_packet(pkt)


@settings(max_examples=200, deadline=None)
@given(params=payload, data=st.data())
def test_truncated_is_incomplete(params, data):
    pkt = d.build_instruction(5, d.WRITE, params)
    cut = data.draw(st.integers(0, len(pkt) - 1))
    with pytest.raises(IncompletePacket):
        d.parse_packet(pkt[:cut])


@settings(deadline=None)
@given(st.binary(max_size=40))
def test_stuff_unstuff_inverse(b):
    s = d.stuff(b)
    assert d.unstuff(s) == b
    assert s.count(b"\xFF\xFF\xFD") == s.count(b"\xFF\xFF\xFD\xFD")


@settings(deadline=None)
@given(st.integers(-(2 ** 31), 2 ** 31 - 1))
def test_value_encoding(v):
    assert d.decode(d.encode(v, 4)) == v
