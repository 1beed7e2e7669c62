"""Reading files a user names (profiles, cloud-init documents, password files): regular files only, bounded.

`/dev/zero`, a FIFO, a socket or a symlink to one of them would otherwise mean unbounded memory or a read that
never returns; a huge file would mean minutes of parsing. Each is one sentence naming the field and the file.
Stdlib only (the supervisor may use it).
"""

from __future__ import annotations

import os
import stat

from qemuvm.errors import UsageError

MIB = 1 << 20


def read_regular(path: str | os.PathLike[str], what: str, limit: int) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them; `what` names it in errors
    ("the profile", "cloud_init.user_data", ...)."""
    shown = os.fspath(path)
    try:
        # O_NONBLOCK: opening a FIFO with no writer would otherwise wait forever, before any check could run.
        fd = os.open(shown, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise UsageError(f"{what}: {shown} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{what}: {shown} is a folder, not a file") from None
    except OSError as exc:
        raise UsageError(f"{what}: cannot read {shown} ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise UsageError(f"{what}: {shown} is a folder, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{what}: {shown} is not a regular file (a device, FIFO or socket); name a file")
        if info.st_size > limit:
            raise UsageError(f"{what}: {shown} is {info.st_size} bytes, more than the {_size(limit)} allowed")
        chunks, total = [], 0
        while total <= limit:
            try:
                chunk = os.read(fd, min(1 << 16, limit + 1 - total))
            except BlockingIOError:  # a regular file never blocks; be safe all the same
                break
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:  # it grew while we read
            raise UsageError(f"{what}: {shown} is more than the {_size(limit)} allowed")
        return b"".join(chunks)
    except OSError as exc:
        raise UsageError(f"{what}: cannot read {shown} ({exc.strerror})") from None
    finally:
        os.close(fd)


def read_text(path: str | os.PathLike[str], what: str, limit: int) -> str:
    """read_regular, decoded as UTF-8 (an error names the file)."""
    data = read_regular(path, what, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what}: {os.fspath(path)} is not UTF-8 text (byte {exc.start})") from None


def _size(limit: int) -> str:
    return f"{limit // MIB} MiB" if limit >= MIB and limit % MIB == 0 else f"{limit} bytes"
