"""An instance's logs and recorded events: `logs`, `logs -f`, `events`, `console`'s history."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qemuvm.control.wait import Tail
from qemuvm.errors import UsageError
from qemuvm.paths import InstancePaths
from qemuvm.runtime import instance

LOGS = {"serial": "serial_log", "qemu": "qemu_log", "events": "events", "supervisor": "supervisor_log"}


def log_path(paths: InstancePaths, kind: str) -> Path:
    if kind not in LOGS:
        raise UsageError(f"unknown log {kind!r}: one of {', '.join(LOGS)}")
    return getattr(paths, LOGS[kind])


def follow(path: Path, *, lines: int | None = None, keep_going: bool = False,
           poll: float = 0.1) -> Iterator[str]:
    """The last `lines` lines of `path` (all when None), then, with keep_going, new text as it arrives."""
    offset = 0
    if lines is not None:
        text = instance.tail(path, lines, raw=True)
        if text:
            yield text + "\n"
        offset = path.stat().st_size if path.exists() else 0
    tail = Tail(path, offset)
    while True:
        text = tail.new()
        if text:
            yield text
        if not keep_going:
            return
        time.sleep(poll)


def events(paths: InstancePaths) -> list[dict[str, Any]]:
    """Every recorded QMP event of the instance, oldest first (a torn last line is skipped)."""
    found = []
    with contextlib.suppress(FileNotFoundError), paths.events.open() as handle:
        for line in handle:
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
    return found
