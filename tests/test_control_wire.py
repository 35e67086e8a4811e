"""The control channel's pieces on their own: the typed msgpack codec and the seqlocked frame buffers."""
import os
import pickle
import threading
import time

import numpy as np
import pytest

from drivers.interfaces import GamepadState
from teleop_app.control import wire
from teleop_app.control.frames import FrameBuffer
from teleop_app.loop import LoopStats
from teleop_app.session import Mode, PolicyState, SessionInfo, Status
from teleop_app.workflow import State


def roundtrip(msg):
    data = wire.encode(msg)
    return wire.decode(data[4:])


def test_status_round_trips_with_enums_arrays_and_records():
    st = Status(t=1.5, connected=True, mode=Mode.SCRIPTED, qpos=np.arange(8.0), sent=np.ones(8),
                workflow=State.RECORDING, policy_state=PolicyState.RUNNING, seq=42, messages_seq=7,
                gamepad=GamepadState(connected=True, name="pad", axes=[0.5], pressed={2, 1}),
                loop=LoopStats(20, 19.9, 0.1, 0.4, 0.9, 0, 0, 300, 1.2), last_safety=("clamped_step",),
                safety={"estops": 1})
    back = roundtrip({"op": "status", "status": st})["status"]
    assert isinstance(back, Status) and back.mode is Mode.SCRIPTED and back.workflow is State.RECORDING
    assert back.policy_state is PolicyState.RUNNING and isinstance(back.loop, LoopStats)
    assert np.array_equal(back.qpos, st.qpos) and back.qpos.dtype == np.float64
    assert back.gamepad.name == "pad" and sorted(back.gamepad.pressed) == [1, 2]
    assert back.seq == 42 and list(back.last_safety) == ["clamped_step"] and back.safety == {"estops": 1}
    info = SessionInfo(profile="sim7", joint_names=("a", "b"), dof=2, lower=np.zeros(2), upper=np.ones(2),
                       cameras={"front": (224, 224, 30.0)})
    assert roundtrip(info).cameras["front"] == [224, 224, 30.0]


def test_what_cannot_travel_is_refused_and_nothing_is_unpickled():
    with pytest.raises(wire.WireError, match="dtype object"):
        wire.encode({"x": np.array([object()])})
    with pytest.raises(wire.WireError, match="cannot be sent"):
        wire.encode({"x": threading.Lock()})
    import msgpack
    for forged in ({"__dc__": "Popen", "args": ["sh"]}, {"__enum__": "Signals", "v": 9},
                   {"__nd__": True, "dtype": "|O", "shape": [1], "data": b"\0" * 8}):
        with pytest.raises(wire.WireError):
            wire.decode(msgpack.packb(forged))
    with pytest.raises(Exception):                  # a pickle is just bad bytes here
        wire.decode(pickle.dumps({"a": 1}))


def _write_frames(name: str, n: int) -> None:
    w = FrameBuffer(name)
    for i in range(1, n + 1):
        w.write(np.full((120, 160, 3), i % 256, np.uint8), float(i), i)
        if i % 200 == 0:
            time.sleep(0.001)   # back to back otherwise; the pause lets a loaded reader see some
            #                     frames whole (it saw 6 of 20000 on a busy 2-core CI run)
    w.close()


def test_frame_buffer_reader_never_sees_a_torn_frame():
    """A writer in another process (truly concurrent with this reader) rewrites the frame as fast as it
    can; every frame read is whole: one value everywhere, matching its index and timestamp."""
    import multiprocessing as mp
    name = f"teleop-test-{os.getpid()}"
    w = FrameBuffer(name, (120, 160, 3), create=True)
    r = FrameBuffer(name)
    assert r.read() is None
    proc = mp.get_context("fork").Process(target=_write_frames, args=(name, 20000))
    proc.start()
    try:
        seen = set()
        while proc.is_alive() or not seen:
            got = r.read()
            if got is None:
                continue
            img, ts, idx = got
            assert img.min() == img.max() == idx % 256 and ts == float(idx)     # one whole frame
            seen.add(idx)
        assert len(seen) > 10
    finally:
        proc.join(30)
        r.close()
        w.close()
    assert not os.path.exists(f"/dev/shm/{name}")
