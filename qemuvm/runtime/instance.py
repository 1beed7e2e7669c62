"""The instance folder on disk: creation (0700), state.json (atomic), the instance lock, listing, liveness.

Imported by the supervisor: stdlib and psutil only (no pydantic, no CLI), so it stays small.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from qemuvm.runtime.paths import InstancePaths, state_home

# States written to state.json (what `status` reports).
STARTING, RUNNING, PAUSED, SHUTDOWN = "starting", "running", "paused", "shutdown"
CRASHED, STOPPED = "crashed", "stopped"
ALIVE_STATES = frozenset({STARTING, RUNNING, PAUSED, SHUTDOWN})
# Two process start times of the same process read through psutil agree to the clock tick (10 ms).
_START_TIME_SLACK = 0.05


class LockTimeout(Exception):
    """The instance lock stayed busy past the deadline."""


def create_dir(path: Path) -> None:
    """Create `path` (and parents) with mode 0700 and make sure an existing one is 0700 too."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def write_private_atomic(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Write a private file so that readers see the old file or the new one, never half of one
    (tmp + fsync + rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
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


def write_json_atomic(path: Path, data: Any) -> None:
    """state.json and friends: indented JSON, written atomically (write_private_atomic)."""
    write_private_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None if it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_state(paths: InstancePaths) -> dict[str, Any] | None:
    return read_json(paths.state)


@contextlib.contextmanager
def locked(path: Path, timeout: float | None = 30.0) -> Iterator[int]:
    """Hold an exclusive flock on `path` (created 0600). timeout None: fail at once if it is busy."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + (timeout or 0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise LockTimeout(str(path)) from None
                time.sleep(0.05)
        yield fd
    finally:
        os.close(fd)  # closing releases the lock


def instance_lock(paths: InstancePaths, timeout: float | None = 30.0) -> contextlib.AbstractContextManager[int]:
    """The instance lock: held around creation + launch, and by rm."""
    create_dir(paths.root)
    return locked(paths.lock, timeout)


def list_instances(home: Path | None = None) -> list[InstancePaths]:
    """Every instance folder below the home (a folder with a state.json or a profile.yaml), by name."""
    root = home or state_home()
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        if entry.is_dir() and not entry.name.startswith("."):
            paths = InstancePaths(Path(entry.path))
            if paths.state.exists() or paths.profile.exists():
                found.append(paths)
    return found


# -- processes -----------------------------------------------------------------------------------


def process_if_alive(pid: int | None, start_time: float | None) -> psutil.Process | None:
    """The process `pid` if it is alive (not a zombie) and started at `start_time` (guards against pid reuse)."""
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if start_time is not None and abs(proc.create_time() - start_time) > _START_TIME_SLACK:
            return None
        return proc
    except psutil.Error:
        return None


def proven_qemu(state: dict[str, Any] | None) -> psutil.Process | None:
    """The QEMU recorded in `state` if a live process is provably it: same pid, start time and command line.

    Anything less is not proof: a process that fails this check is never signalled.
    """
    if not state or not state.get("qemu_pid") or state.get("qemu_start_time") is None:
        return None
    proc = process_if_alive(state["qemu_pid"], state["qemu_start_time"])
    if proc is None:
        return None
    try:
        return proc if proc.cmdline() == state.get("qemu_cmdline") else None
    except psutil.Error:
        return None


def live_supervisor(state: dict[str, Any] | None) -> psutil.Process | None:
    if not state:
        return None
    return process_if_alive(state.get("supervisor_pid"), state.get("supervisor_start_time"))


def effective_state(state: dict[str, Any] | None) -> dict[str, Any]:
    """state.json corrected by a cheap liveness check (no QMP): what `ls` shows.

    A state that claims a live VM whose QEMU is gone is stale (both processes were killed): it reads
    `stopped` after a clean exit record, else `crashed`.
    """
    view = dict(state or {"state": STOPPED})
    supervisor = live_supervisor(state)
    qemu_alive = bool(state) and process_if_alive(state.get("qemu_pid"), state.get("qemu_start_time")) is not None
    view["supervised"] = supervisor is not None
    if view.get("state") in ALIVE_STATES and not qemu_alive and supervisor is None:
        view["state"] = CRASHED if view.get("qemu_pid") else STOPPED
        view["stale"] = True
    if not qemu_alive:
        view["qemu_pid_alive"] = False
    started = view.get("qemu_start_time") if qemu_alive else None
    view["uptime_s"] = round(time.time() - started, 1) if started else None
    return view


def is_active(state: dict[str, Any] | None) -> bool:
    """True while a supervisor or a (proven) QEMU of this instance is alive."""
    return live_supervisor(state) is not None or proven_qemu(state) is not None


def unlink_stale_sockets(paths: InstancePaths) -> None:
    """Socket files left by a crashed QEMU refuse connections and block the next bind: remove them."""
    for sock in paths.sockets():
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()


def tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a text file ('' when it is missing), reading at most 64 KiB."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 65536))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
