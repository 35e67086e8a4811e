"""JSON with numpy arrays, the json_numpy way, without pickle.

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
    except (TypeError, ValueError, KeyError) as e:
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
    except json.JSONDecodeError as e:
        raise WireError(f"not valid JSON: {e}") from None
