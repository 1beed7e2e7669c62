"""Building QEMU option values safely: the `key=value,...` form with commas doubled, and stable MACs.

qemuvm writes every structured option (-blockdev, -device, -netdev, -chardev, -machine, ...) in QEMU's
classic `key=value,...` form rather than JSON: one style everywhere, and `qemuvm render` stays readable
and pasteable. QEMU's only escape in that form is a doubled comma (`file=we,,ird` opens `we,ird`), so
every value goes through `escape()`; control characters never reach here (validation rejects them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

Value = str | int | bool | None


def escape(value: str) -> str:
    """A value as QEMU's option parser reads it back: commas doubled."""
    return value.replace(",", ",,")


def _text(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return escape(str(value))


def keyvals(head: str | None = None, pairs: Mapping[str, Value] | None = None) -> str:
    """`head,key=value,...`: `head` is the implied first value (a driver, a machine type);
    None values are left out, booleans become on/off, and everything is escaped."""
    parts = [escape(head)] if head is not None else []
    parts += [f"{key}={_text(value)}" for key, value in (pairs or {}).items() if value is not None]
    return ",".join(parts)


def derive_mac(name: str, index: int) -> str:
    """A stable locally administered MAC for NIC `index` of instance `name`: QEMU's 52:54:00 prefix
    and three bytes of sha256, so a VM keeps its MAC (and its DHCP lease) across restarts."""
    digest = hashlib.sha256(f"{name}/{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{byte:02x}" for byte in digest[:3])
