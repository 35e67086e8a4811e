"""JSON with numpy arrays the json_numpy way (OpenVLA), and openpi's msgpack frames; never pickle.

An array travels as {"__numpy__": <base64 of the raw C-order bytes>, "dtype": "<f4", "shape": [..]}
(the format of the json-numpy package used by OpenVLA's vla-scripts/deploy.py). Decoding only
accepts plain numeric / bool dtypes, so a reply can never smuggle in Python objects.
"""
from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

_ALLOWED_KINDS = "biuf"       # bool, int, uint, float


class WireError(ValueError):
    """A message is not valid JSON / not a valid encoded array."""


def encode_array(a: np.ndarray | np.generic) -> dict:
    a = np.asarray(a)
    if a.dtype.kind not in _ALLOWED_KINDS:
        raise WireError(f"cannot send arrays of dtype {a.dtype} (numbers and bools only)")
    return {"__numpy__": base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii"),
            "dtype": np.lib.format.dtype_to_descr(a.dtype), "shape": list(a.shape)}


def decode_array(d: dict) -> np.ndarray | np.generic:
    try:
        dt = np.dtype(str(d["dtype"]))
    except (TypeError, ValueError, KeyError, SyntaxError) as e:   # (numpy parses some dtype strings with ast: fuzzing)
        raise WireError(f"bad array dtype {d.get('dtype')!r}: {e}") from None
    if dt.kind not in _ALLOWED_KINDS or dt.fields is not None or dt.hasobject:
        raise WireError(f"array dtype {dt} is not allowed (numbers and bools only)")
    try:
        raw = base64.b64decode(d["__numpy__"], validate=True)
        shape = tuple(int(x) for x in d.get("shape", []))
        a = np.frombuffer(raw, dtype=dt)
        return a.reshape(shape) if shape else a[0]
    except (ValueError, TypeError, IndexError, base64.binascii.Error) as e:
        raise WireError(f"malformed encoded array (shape {d.get('shape')}, dtype {dt}): {e}") from None


def _default(o: Any):
    if isinstance(o, (np.ndarray, np.generic)):
        return encode_array(o)
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def _hook(d: dict):
    return decode_array(d) if "__numpy__" in d else d


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=_default)


def loads(text: str | bytes) -> Any:
    try:
        return json.loads(text, object_hook=_hook)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:     # (bytes that are not UTF-8: fuzzing)
        raise WireError(f"not valid JSON: {e}") from None
    except RecursionError:
        raise WireError("not valid JSON: nested too deeply") from None


# ---- openpi's msgpack frames ---------------------------------------------------------------------
# openpi-client's msgpack_numpy: an array is the map {b"__ndarray__": True, b"data": raw C-order bytes,
# b"dtype": "<f4", b"shape": [..]}, a numpy scalar {b"__npgeneric__": True, b"data": value, b"dtype": ..}.
# Same rule as above: numbers and bools only, both ways (openpi's own decoder does not check the
# dtype on the way in; this one refuses an object / void / structured dtype before touching the bytes).

def _pack_default(o: Any):
    if isinstance(o, (np.ndarray, np.generic)):
        if o.dtype.kind not in _ALLOWED_KINDS or o.dtype.fields is not None:
            raise WireError(f"cannot send arrays of dtype {o.dtype} (numbers and bools only)")
        if isinstance(o, np.ndarray):
            return {b"__ndarray__": True, b"data": np.ascontiguousarray(o).tobytes(), b"dtype": o.dtype.str,
                    b"shape": list(o.shape)}
        return {b"__npgeneric__": True, b"data": o.item(), b"dtype": o.dtype.str}
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"cannot send a {type(o).__name__} (numbers, strings, lists, dicts and arrays only)")


def _unpack_hook(d: dict):
    nd, gen = d.get(b"__ndarray__", d.get("__ndarray__")), d.get(b"__npgeneric__", d.get("__npgeneric__"))
    if not nd and not gen:
        return d
    get = (lambda k: d[k.encode()] if k.encode() in d else d[k])
    try:
        dt = np.dtype(get("dtype"))
    except (TypeError, ValueError, KeyError, SyntaxError) as e:   # (numpy parses some dtype strings with ast: fuzzing)
        raise WireError(f"bad array dtype in frame: {e}") from None
    if dt.kind not in _ALLOWED_KINDS or dt.fields is not None or dt.hasobject:
        raise WireError(f"array dtype {dt} is not allowed (numbers and bools only)")
    try:
        if gen:
            return dt.type(get("data"))
        shape = tuple(int(x) for x in get("shape"))
        data = get("data")
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("array data is not bytes")
        return np.frombuffer(data, dtype=dt).reshape(shape)
    except (ValueError, TypeError, KeyError) as e:
        raise WireError(f"malformed array in frame ({e})") from None


def packb(obj: Any) -> bytes:
    """obj -> one binary frame, the encoding openpi_client.msgpack_numpy reads."""
    import msgpack
    try:
        return msgpack.packb(obj, default=_pack_default, use_bin_type=True)
    except TypeError as e:
        raise WireError(str(e)) from None


def unpackb(data: bytes) -> Any:
    """One binary frame (openpi_client.msgpack_numpy encoding) -> obj; arrays are read-only views."""
    import msgpack
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"expected a binary frame, got {type(data).__name__}")
    try:
        return msgpack.unpackb(data, object_hook=_unpack_hook, raw=False, strict_map_key=False)
    except WireError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise WireError(f"not a valid msgpack frame: {e}") from None
