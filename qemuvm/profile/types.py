"""Value types of the profile format: sizes, durations, names, safe text.

Each parser raises a `PydanticCustomError` with a sentence that names what is allowed, so a
validation error reads `'1Q' is not a size such as 512M or 2G` rather than pydantic's wording.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTPE]?)(?:i?B)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}  # as QEMU
MIN_MEMORY_MIB = 16  # below this no firmware QEMU ships (SeaBIOS, OVMF) nor any guest kernel boots
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _fail(kind: str, message: str, **context: Any) -> PydanticCustomError:
    # Formatted here: pydantic's own templates know no !r conversion.
    return PydanticCustomError(kind, message.format(**context))


def parse_size(value: Any, bare_unit: int = 1) -> int:
    """`512M` -> bytes. A bare number is multiplied by `bare_unit`."""
    if isinstance(value, bool):
        raise _fail("size", "{value!r} is not a size such as 512M or 2G", value=value)
    if isinstance(value, int) and value > 0:
        return value * bare_unit
    match = _SIZE.match(value) if isinstance(value, str) else None
    if not match:
        raise _fail("size", "{value!r} is not a size such as 512M or 2G", value=value)
    number, suffix = match.groups()
    unit = _UNITS[suffix.upper()] if suffix else bare_unit
    size = int(float(number) * unit)
    if size <= 0:
        raise _fail("size", "{value!r} is not a size such as 512M or 2G", value=value)
    return size


def _memory_mib(value: Any) -> int:
    """Memory in MiB; a bare integer means MiB, as in QEMU's -m."""
    size = parse_size(value, bare_unit=1 << 20)
    if size % (1 << 20):
        raise _fail("size", "{value!r} is not a whole number of MiB", value=value)
    if size >> 20 < MIN_MEMORY_MIB:
        raise _fail("size", "{value!r} is too little to boot anything; at least {least}M", value=value,
                    least=MIN_MEMORY_MIB)
    return size >> 20


def parse_duration(value: Any) -> float:
    """`30s`, `2m`, `500ms`, `1h` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise _fail("duration", "{value!r} is not a duration such as 30s, 2m or 90", value=value)
    if isinstance(value, int | float) and value >= 0 and math.isfinite(value):
        seconds = float(value)
    else:
        match = _DURATION.match(value) if isinstance(value, str) else None
        if not match:
            raise _fail("duration", "{value!r} is not a duration such as 30s, 2m or 90", value=value)
        number, unit = match.groups()
        seconds = float(number) * _SECONDS[unit.lower() if unit else None]
    if seconds > MAX_DURATION:  # a wait that never ends is no timeout
        raise _fail("duration", "{value!r} is longer than a week (604800 s)", value=value)
    return seconds


MAX_DURATION = 7 * 24 * 3600.0


def _safe_text(value: str) -> str:
    """Values that end up on QEMU's command line can never contain control characters."""
    if _CONTROL.search(value):
        raise _fail("control_character", "control characters (newline, tab, ...) are not allowed here")
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise _fail("regex", "{value!r} is not a valid regular expression ({error})", value=value,
                    error=str(exc)) from None
    return value


_SIZE_SCHEMA = {"type": ["string", "integer"], "pattern": r"^\d+(\.\d+)?[KMGTPEkmgtpe]?$",
                "examples": ["512M", "2G"]}

MemoryMiB = Annotated[
    int,
    BeforeValidator(_memory_mib),
    WithJsonSchema({**_SIZE_SCHEMA,
                    "description": "Size with a K/M/G/T/P/E suffix; a bare integer is MiB; at least 16M"}),
]
SizeBytes = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({**_SIZE_SCHEMA, "description": "Size with a K/M/G/T/P/E suffix; a bare integer is bytes"}),
]
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"type": ["string", "number"], "pattern": r"^\d+(\.\d+)?(ms|s|m|h)?$",
                    "examples": ["30s", "2m", 90]}),
]
SafeStr = Annotated[str, AfterValidator(_safe_text)]
Regex = Annotated[str, AfterValidator(_regex)]
