"""Record files: private (0600), written atomically, padded so that a full disk can still overwrite them in place.

Imported by the supervisor: stdlib only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Any


def write_private_atomic(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Write a private file so that readers see the old file or the new one, never half of one
    (tmp + fsync + rename). The temporary name is unique and made exclusively (never a file or link that is
    there already): two threads or processes writing one record never share it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


_BLOCK = 4096


def write_json_atomic(path: Path, data: Any) -> None:
    """state.json and friends: indented JSON, written atomically (write_private_atomic).

    The text is padded with spaces to whole 4 KiB blocks, so that when the disk is full (no room for the
    temporary copy) the record can still be overwritten in place, in blocks it already owns: a full disk
    never freezes an instance's state or stops a `down`."""
    text = json.dumps(data, indent=2, default=str) + "\n"
    padded = text + " " * (-len(text) % _BLOCK)
    try:
        write_private_atomic(path, padded)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not overwrite_in_place(path, padded):
            raise


def overwrite_in_place(path: Path, text: str) -> bool:
    """Write `text` over the existing file without growing it; False when it does not fit."""
    data = text.encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        if len(data) > size:
            return False
        os.pwrite(fd, data + b" " * (size - len(data)), 0)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None if it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
