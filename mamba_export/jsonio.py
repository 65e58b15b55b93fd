"""Strict JSON for every file and metadata entry we write.

Python's json writes an infinite or NaN float as the bare word Infinity / NaN, which other
JSON readers (JavaScript, Go, Java, jq --strict) reject, and Mamba-2 configs hold one
(time_step_limit's upper end). Such floats are written as {"__float__": "Infinity"}, the
convention of transformers' config files, and read back as floats; files that hold the
bare words (earlier versions, older transformers) still read.
"""

from __future__ import annotations

import json
import math

_TAG = "__float__"
_SPECIAL = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def encode(obj):
    """``obj`` with every non-finite float replaced by its tagged object (tuples become lists)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return {_TAG: "NaN" if math.isnan(obj) else "Infinity" if obj > 0 else "-Infinity"}
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    return obj


def decode(obj):
    """The inverse of ``encode``: tagged objects back to floats."""
    if isinstance(obj, dict):
        if obj.keys() == {_TAG} and isinstance(obj[_TAG], str) and obj[_TAG] in _SPECIAL:
            return _SPECIAL[obj[_TAG]]
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    return obj


def dumps(obj, **kwargs) -> str:
    return json.dumps(encode(obj), allow_nan=False, **kwargs)


def loads(text: str):
    return decode(json.loads(text))
