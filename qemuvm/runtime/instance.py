"""The instance folder on disk: creation (0700), state.json (atomic), the instance lock, listing, liveness.

Imported by the supervisor: stdlib and psutil only (no pydantic, no CLI), so it stays small.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from qemuvm.errors import UsageError
from qemuvm.paths import InstancePaths, state_home
from qemuvm.runtime import records
from qemuvm.runtime.atomic import read_json, write_json_atomic, write_private_atomic  # noqa: F401 (re-exported)

# States written to state.json (what `status` reports).
STARTING, RUNNING, PAUSED, SHUTDOWN = "starting", "running", "paused", "shutdown"
CRASHED, STOPPED, SAVED = "crashed", "stopped", "saved"  # saved: QEMU exited after `save`; `start` restores
UNKNOWN = "unknown"  # state.json unreadable, or a QEMU found through its pidfile before any record said so
ALIVE_STATES = frozenset({STARTING, RUNNING, PAUSED, SHUTDOWN})
ALL_STATES = (STARTING, RUNNING, PAUSED, SHUTDOWN, CRASHED, STOPPED, SAVED, UNKNOWN)
# Two process start times of the same process read through psutil agree to the clock tick (10 ms).
_START_TIME_SLACK = 0.05


# QMP run states (query-status) that mean "alive, not executing guest code". io-error is among them: with
# QEMU's default werror=enospc→stop a full host disk pauses the guest, and `resume` continues it once there
# is room again -- it is not a crash.
_PAUSED_STATUSES = frozenset({"paused", "suspended", "debug", "inmigrate", "postmigrate", "finish-migrate",
                              "restore-vm", "save-vm", "watchdog", "colo", "io-error"})


def qmp_state(status: str) -> str:
    """The qemuvm state of a QMP run status (the one map; a table test covers every status QEMU 7.2 has)."""
    if status == "running":
        return RUNNING
    if status == "prelaunch":
        return STARTING
    if status == "shutdown":
        return SHUTDOWN
    if status in ("guest-panicked", "internal-error"):
        return CRASHED
    return PAUSED  # the paused family, and any status a newer QEMU adds: alive but not known to run


class LockTimeout(Exception):
    """The instance lock stayed busy past the deadline."""


def create_dir(path: Path) -> None:
    """Create `path` and any missing parents with mode 0700. An existing folder is left as it is: qemuvm never
    changes the mode of a folder it did not make (QEMUVM_HOME=/tmp must stay 1777)."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # a parallel `up` made it first
            folder.mkdir(mode=0o700)
            os.chmod(folder, 0o700)  # the umask may have narrowed it; never widened


def check_home(home: Path) -> None:
    """Refuse a home that another local user could tamper with: owned by someone else, or writable by others
    without the sticky bit (where they could replace our instance folders)."""
    try:
        info = home.stat()
    except FileNotFoundError:
        return
    if info.st_uid != os.geteuid():
        raise UsageError(f"the state folder {home} belongs to uid {info.st_uid}, not to you; set QEMUVM_HOME to "
                         "a folder of your own")
    if info.st_mode & 0o002 and not info.st_mode & 0o1000:
        raise UsageError(f"the state folder {home} is writable by every user and has no sticky bit; set "
                         "QEMUVM_HOME to a private folder (or chmod o-w / +t it)")


def read_state(paths: InstancePaths) -> records.StateView | None:
    """state.json, checked, plus the processes the folder itself proves (qemu.pid, supervisor.lock).

    A state.json that is missing, truncated or of the wrong types never hides a live QEMU or supervisor:
    QEMU's pidfile and the pid the supervisor writes into its lock are proof enough (the process's command
    line names this folder), so every command finds, adopts or ends them whatever state.json says.
    """
    data = read_json(paths.state)
    exists = data is not None or paths.state.exists()
    problem = records.state_problem(data) if data is not None else ("not valid JSON" if exists else None)
    if problem:
        unreadable = f"state.json unreadable ({problem})"
        view: records.StateView | None = records.StateView(state=UNKNOWN, unreadable=unreadable)
    else:
        view = records.state_view(data) if data is not None else None
    return _with_found_processes(paths, view)


def _pid_in(path: Path) -> int | None:
    try:
        text = path.read_text(errors="replace")[:32].strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _naming(pid: int | None, *needles: str) -> psutil.Process | None:
    """The live process `pid` whose command line contains every one of `needles` as an argument."""
    proc = process_if_alive(pid, None)
    try:
        return proc if proc is not None and all(n in proc.cmdline() for n in needles) else None
    except psutil.Error:
        return None


def _holding_supervisor_lock(paths: InstancePaths) -> psutil.Process | None:
    """The supervisor whose pid supervisor.lock holds, proven by its command line and by holding that file
    open (a prestarted supervisor's command line does not name its instance)."""
    proc = _naming(_pid_in(paths.supervisor_lock), "qemuvm.runtime.supervisor")
    try:
        if proc is None or str(paths.root) in proc.cmdline():
            return proc
        return proc if any(f.path == str(paths.supervisor_lock) for f in proc.open_files()) else None
    except psutil.Error:
        return None


def scan_for_qemu(paths: InstancePaths) -> psutil.Process | None:
    """A QEMU whose command line names this instance's pidfile, found by scanning every process: for the
    moment between exec and QEMU writing that pidfile (a supervisor killed right after starting it)."""
    wanted = str(paths.pidfile)
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if wanted in cmdline and "-pidfile" in cmdline:
            return proc
    return None


def _with_found_processes(paths: InstancePaths, state: records.StateView | None) -> records.StateView | None:
    if proven_qemu(state) is None:
        qemu = _naming(_pid_in(paths.pidfile), "-pidfile", str(paths.pidfile))
        if qemu is not None:
            with contextlib.suppress(psutil.Error):
                state = dataclasses.replace(state or records.StateView(state=UNKNOWN), qemu_pid=qemu.pid,
                                            qemu_start_time=qemu.create_time(), qemu_cmdline=qemu.cmdline(),
                                            found_by="qemu.pid")
    if live_supervisor(state) is None:
        supervisor = _holding_supervisor_lock(paths)
        if supervisor is not None:
            with contextlib.suppress(psutil.Error):
                # A supervisor that has not written its first record yet: whatever the old record says, the
                # instance is starting (and that record is not the new supervisor's word).
                old = state or records.StateView(state=STARTING)
                state = dataclasses.replace(old, supervisor_pid=supervisor.pid,
                                            supervisor_start_time=supervisor.create_time(),
                                            supervisor_found_by="supervisor.lock",
                                            state=old.state if old.state in ALIVE_STATES else STARTING)
    return state


@contextlib.contextmanager
def locked(path: Path, timeout: float | None = 30.0) -> Iterator[int]:
    """Hold an exclusive flock on `path` (created 0600). timeout None: fail at once if it is busy.

    A holder may remove the lock file as it finishes (`template rm`): a waiter that then gets the lock on the
    removed file opens the path again, so two processes never hold "the" lock on two different files."""
    deadline = time.monotonic() + (timeout or 0)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
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
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)  # removed (or replaced) by the holder before us: lock the file that is there now
    try:
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


def proven_qemu(state: records.StateView | None) -> psutil.Process | None:
    """The QEMU recorded in `state` if a live process is provably it: same pid, start time and command line.

    Anything less is not proof: a process that fails this check is never signalled.
    """
    if not state or not state.qemu_pid or state.qemu_start_time is None:
        return None
    proc = process_if_alive(state.qemu_pid, state.qemu_start_time)
    if proc is None:
        return None
    try:
        return proc if proc.cmdline() == state.qemu_cmdline else None
    except psutil.Error:
        return None


def live_supervisor(state: records.StateView | None) -> psutil.Process | None:
    if not state:
        return None
    return process_if_alive(state.supervisor_pid, state.supervisor_start_time)


def effective_state(state: records.StateView | None) -> records.StateView:
    """state.json corrected by a cheap liveness check (no QMP): what `ls` shows.

    A state that claims a live VM whose QEMU is gone is stale (both processes were killed): it reads
    `stopped` after a clean exit record, else `crashed`.
    """
    view = dataclasses.replace(state) if state is not None else records.StateView(state=STOPPED)
    supervisor = live_supervisor(state)
    view.qemu_alive = process_if_alive(view.qemu_pid, view.qemu_start_time) is not None
    view.supervised = supervisor is not None
    restarting = supervisor is not None and view.state == STARTING
    if view.state in ALIVE_STATES and not view.qemu_alive and not restarting \
            and not (supervisor is not None and not view.qemu_pid):
        # QEMU is gone and nobody has recorded it yet (both processes were killed, or the supervisor is about
        # to write, or is stopped): say what is true now rather than what the record last said.
        view.state = CRASHED if view.qemu_pid else STOPPED
        view.stale = True
    started = view.qemu_start_time if view.qemu_alive else None
    view.uptime_s = round(time.time() - started, 1) if started else None
    return view


def is_active(state: records.StateView | None) -> bool:
    """True while a supervisor or a (proven) QEMU of this instance is alive."""
    return live_supervisor(state) is not None or proven_qemu(state) is not None


def unlink_stale_sockets(paths: InstancePaths) -> None:
    """Socket files left by a crashed QEMU refuse connections and block the next bind: remove them."""
    for sock in paths.sockets():
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with control characters (but newline and tab) shown as \\xNN: what a guest, a log or QEMU wrote
    is quoted in a message, and an escape sequence in it must not reach the terminal."""
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


def tail(path: Path, lines: int = 20, raw: bool = False) -> str:
    """The last `lines` lines of a text file ('' when it is missing), reading at most 64 KiB; control characters
    are shown as \\xNN (`printable`) unless raw (`qemuvm logs` prints a log as it is, as cat would)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 65536))
            data = handle.read()
    except OSError:
        return ""
    text = "\n".join(data.decode(errors="replace").splitlines()[-lines:])
    return text if raw else printable(text)
