"""Durations and sizes as people write them: ``500ms``, ``30s``, ``2m``; ``64MB``, ``1GiB``.

Used by flow files and by broker URL options alike, so that both read them the same way.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZES = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``500ms``, ``5s``, ``2m``, ``1h``."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 5s, 500ms or 2m")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|d)?\s*", str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration; write e.g. 5s, 500ms, 2m or 1h")
        seconds = float(match[1]) * _UNITS[match[2] or "s"]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from a number or a string such as ``64MB`` or ``1GiB``."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64MB")
    if isinstance(value, int):
        size = value
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmg]i?b|b)?\s*", str(value), re.I)
        if not match:
            raise ValueError(f"{value!r} is not a size; write e.g. 65536, 64KB, 64MB or 1GiB")
        size = int(float(match[1]) * _SIZES[(match[2] or "").lower()])
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
