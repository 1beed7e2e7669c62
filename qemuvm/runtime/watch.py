"""Wake a waiter when something in a folder changes, instead of polling on a timer.

`up` waits for state.json to say running, `wait` for a regex on serial.log: both files live in the instance
folder, and both are written by other processes (the supervisor renames state.json into place, QEMU appends to
serial.log). An inotify watch on the folder turns each such write into a wake-up within microseconds, so a
wait ends when its condition becomes true rather than up to one poll interval later.

inotify through ctypes: the four libc calls it needs are all there is to it (a library such as inotify_simple
wraps the same calls), and the supervisor's import rules keep this layer on the stdlib. Where inotify is
unavailable (another OS, the per-user watch limit reached) `wait` is a plain sleep: slower, never wrong.
Conditions that no file reports (a process gone, a port that opens) are still re-checked at every timeout.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from pathlib import Path

# <sys/inotify.h>: a file in the folder was written, closed after writing, renamed into it, made or removed.
_MASK = 0x002 | 0x008 | 0x080 | 0x100 | 0x200  # IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC


def _inotify_fd(folder: Path) -> int | None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None
    if libc.inotify_add_watch(fd, os.fsencode(folder), _MASK) < 0:
        os.close(fd)
        return None
    return fd


class FolderWatch:
    """`wait(timeout)` returns when a file in `folder` changed since the last call, or after `timeout` seconds.

    Use it as a context manager (it holds a file descriptor). A change that happened before a `wait` makes that
    wait return at once, so a check followed by a wait never misses a write that landed in between."""

    def __init__(self, folder: Path) -> None:
        self.fd = _inotify_fd(folder) if folder.is_dir() else None

    def wait(self, timeout: float) -> bool:
        """True when woken by a change, False after the timeout."""
        if self.fd is None:
            time.sleep(timeout)
            return False
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0.0))
        if not ready:
            return False
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 65536):  # drain: one wake-up for every change so far
                pass
        return True

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> FolderWatch:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
