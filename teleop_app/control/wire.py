"""The control channel's wire format: length-prefixed msgpack frames with a small typed codec.

No pickle, ever. Besides msgpack's plain types the codec knows exactly three extras:
  * numpy arrays (numeric dtypes only, like openpi's msgpack_numpy: object arrays are refused),
  * enums from `ENUMS` (Mode, workflow State, PolicyState),
  * dataclasses from `DATACLASSES` (Status, SessionInfo, LoopStats, GamepadState), rebuilt field by field.
Anything else raises WireError on the sending side; an unknown tag raises it on the receiving side.
"""
from __future__ import annotations

import dataclasses
import importlib
import struct
from enum import Enum

import msgpack
import numpy as np

MAX_FRAME = 16 << 20          # one message; camera images never travel here (shared memory does)
_LEN = struct.Struct(">I")

# name -> "module:attr"; resolved lazily so this module imports nothing heavy and tolerates a class
# that the core has not defined (yet): it is then simply not encodable.
ENUMS = {"Mode": "teleop_app.session:Mode", "State": "teleop_app.workflow:State",
         "PolicyState": "teleop_app.session:PolicyState"}
DATACLASSES = {"Status": "teleop_app.session:Status", "SessionInfo": "teleop_app.session:SessionInfo",
               "LoopStats": "teleop_app.loop:LoopStats", "GamepadState": "drivers.interfaces:GamepadState"}


class WireError(ValueError):
    pass


def _resolve(table: dict, name: str):
    mod, _, attr = table[name].partition(":")
    return getattr(importlib.import_module(mod), attr, None)


_by_class: dict[type, tuple[str, str]] = {}


def _tag_of(obj) -> tuple[str, str] | None:
    cls = type(obj)
    if cls not in _by_class:
        for kind, table in (("enum", ENUMS), ("dc", DATACLASSES)):
            for name in table:
                if _resolve(table, name) is cls:
                    _by_class[cls] = (kind, name)
        if cls not in _by_class:
            return None
    return _by_class[cls]


def _default(obj):
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biufc":
            raise WireError(f"arrays of dtype {obj.dtype} are not sent (numeric only)")
        return {"__nd__": True, "dtype": obj.dtype.str, "shape": list(obj.shape),
                "data": np.ascontiguousarray(obj).tobytes()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, tuple):             # strict_types: tuples arrive here; they travel as lists
        return list(obj)
    tag = _tag_of(obj)
    if tag is not None and tag[0] == "enum":
        return {"__enum__": tag[1], "v": obj.value}
    if tag is not None:
        return {"__dc__": tag[1], **{f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}}
    if isinstance(obj, Enum):            # an enum the channel does not know: its value
        return obj.value
    for base in (str, int, float, dict, list, bytes):   # other subclasses of plain types: as the plain type
        if isinstance(obj, base):
            return base(obj)
    raise WireError(f"{type(obj).__name__} cannot be sent over the control channel")


def _hook(d: dict):
    if "__nd__" in d:
        dt = np.dtype(d["dtype"])
        if dt.kind not in "biufc":
            raise WireError(f"refused array dtype {dt}")
        return np.frombuffer(d["data"], dtype=dt).reshape(d["shape"]).copy()
    if "__enum__" in d:
        name = d["__enum__"]
        if name not in ENUMS or _resolve(ENUMS, name) is None:
            raise WireError(f"unknown enum {name!r}")
        return _resolve(ENUMS, name)(d["v"])
    if "__dc__" in d:
        name = d.pop("__dc__")
        cls = _resolve(DATACLASSES, name) if name in DATACLASSES else None
        if cls is None:
            raise WireError(f"unknown record {name!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})   # a newer peer's extra field is dropped
    return d


def encode(msg) -> bytes:
    # strict_types: str-enums (Mode, State) and numpy scalars reach _default instead of passing as plain str/float
    body = msgpack.packb(msg, default=_default, use_bin_type=True, strict_types=True)
    if len(body) > MAX_FRAME:
        raise WireError(f"message of {len(body)} bytes is over the {MAX_FRAME} byte limit")
    return _LEN.pack(len(body)) + body


def decode(body: bytes):
    return msgpack.unpackb(body, object_hook=_hook, raw=False, strict_map_key=False)


def _recv_exact(sock, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv(sock):
    """The next message from a blocking socket; None when the peer closed the connection."""
    head = _recv_exact(sock, _LEN.size)
    if head is None:
        return None
    (n,) = _LEN.unpack(head)
    if n > MAX_FRAME:
        raise WireError(f"peer announced a {n} byte message (limit {MAX_FRAME})")
    body = _recv_exact(sock, n)
    if body is None:
        return None
    return decode(body)
