"""Helper processes beside QEMU (DESIGN.md, "Helper processes"): start one and wait until it listens, prove a
recorded one is still ours (pid + start time + command line, as for QEMU), say how one ended, stop them.

Imported by the supervisor: stdlib and psutil only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from qemuvm.runtime import decisions, instance, records

START_TIMEOUT = 10.0  # virtiofsd listens within milliseconds; this covers a loaded host
STOP_GRACE = 5.0  # SIGTERM, then SIGKILL

# Our children, by pid, so an exit code can be read (and the zombie reaped) once one ends.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class HelperFailed(Exception):
    """A helper did not come up: the message says which, how it ended and its last log line."""


def _readonly_bind(source: str) -> Callable[[], None]:
    """In the child before exec: a mount namespace of its own in which `source` is a read-only bind mount, so
    the helper (and the guest through it) cannot write there; the host's view is untouched. It goes away with
    the helper: nothing to clean up, nothing left mounted if anything dies."""
    import ctypes  # here, not at the top: only a read-only virtiofs share needs it, and it costs RSS

    libc = ctypes.CDLL(None, use_errno=True)
    ms_rdonly, ms_remount, ms_bind, ms_rec, ms_private, clone_newns = 1, 32, 4096, 0x4000, 1 << 18, 0x20000
    path = os.fsencode(source)

    def setup() -> None:
        for step, result in (("unshare", lambda: libc.unshare(clone_newns)),
                             ("mount --make-rprivate /", lambda: libc.mount(b"none", b"/", None, ms_rec | ms_private,
                                                                            None)),
                             ("bind", lambda: libc.mount(path, path, None, ms_bind | ms_rec, None)),
                             ("remount read-only", lambda: libc.mount(None, path, None,
                                                                      ms_bind | ms_remount | ms_rdonly, None))):
            if result() != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"{step} of {source}: {os.strerror(errno)}")

    return setup


def last_line(log: str) -> str:
    lines = [line for line in instance.tail(Path(log), 5).splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def start(helper: records.Helper, timeout: float = START_TIMEOUT) -> records.HelperState:
    """Start `helper` in its own session and wait until its socket exists (then 0600); HelperFailed otherwise."""
    program = os.path.basename(helper.argv[0])
    with contextlib.suppress(FileNotFoundError):
        os.unlink(helper.socket)  # a crashed run's socket would make it fail to bind
    log_fd = os.open(helper.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(log_fd, f"--- qemuvm: starting {program} for {helper.what} at {time.strftime('%F %T')}\n".encode())
        proc = subprocess.Popen(helper.argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                                start_new_session=True, close_fds=True,
                                preexec_fn=_readonly_bind(helper.readonly_source) if helper.readonly_source else None)
    except (OSError, subprocess.SubprocessError) as exc:
        raise HelperFailed(f"{program} for {helper.what} could not start: {exc}") from None
    finally:
        os.close(log_fd)
    _CHILDREN[proc.pid] = proc
    deadline = time.monotonic() + timeout
    while not os.path.exists(helper.socket):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                how = f"did not listen within {timeout:g} s"
                stop_pid(proc.pid)
            else:
                how = describe_exit(exit_of(proc.pid))
            why = last_line(helper.log)
            raise HelperFailed(f"{program} for {helper.what} {how}" + (f": {why}" if why else "") +
                               f" (its log: {helper.log})")
        time.sleep(0.005)
    os.chmod(helper.socket, 0o600)
    started = instance.process_if_alive(proc.pid, None)
    return records.HelperState(name=helper.name, what=helper.what, pid=proc.pid,
                               start_time=started.create_time() if started else None, cmdline=list(helper.argv),
                               log=helper.log)


def proven(entry: records.HelperState) -> psutil.Process | None:
    """The live process a state.json helper entry names, if it provably is that helper; else None."""
    if entry.exited is not None or not entry.pid or entry.start_time is None:
        return None
    proc = instance.process_if_alive(entry.pid, entry.start_time)
    try:
        return proc if proc is not None and proc.cmdline() == entry.cmdline else None
    except psutil.Error:
        return None


def exit_of(pid: int) -> dict[str, Any]:
    """How helper `pid` ended: its code or signal when it was our child (reaped here), else unknown."""
    record: dict[str, Any] = {"at": time.time()}
    proc = _CHILDREN.pop(pid, None)
    if proc is not None:
        code = proc.wait()
        if code < 0:
            record["signal"] = decisions.signal_name(-code)
        else:
            record["exit_code"] = code
    return record


def describe_exit(exited: dict[str, Any]) -> str:
    if exited.get("signal"):
        return f"was killed by {exited['signal']}"
    if exited.get("exit_code") is not None:
        return f"exited with code {exited['exit_code']}"
    return "ended (while no supervisor watched it)"


def ended(entry: records.HelperState) -> records.HelperState:
    """The entry of a helper that is gone, with how and why (its log's last line)."""
    exited = exit_of(entry.pid)
    if not exited.get("signal"):  # its own last words say why; a signal's victim has none
        exited["why"] = last_line(entry.log)
    return dataclasses.replace(entry, exited=exited)


def stop_orphans(state: records.StateView | None) -> None:
    """Helpers left by a supervisor killed before its QEMU started (virtiofsd then waits for QEMU forever):
    with neither QEMU nor a supervisor alive, end every one proven ours."""
    if state and not instance.is_active(state) and any(proven(entry) for entry in state.helpers):
        stop(state.helpers)


def stop_pid(pid: int, grace: float = STOP_GRACE) -> None:
    """Stop and reap our child `pid` (SIGTERM, then SIGKILL after `grace`)."""
    proc = _CHILDREN.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop(entries: list[records.HelperState], grace: float = STOP_GRACE) -> list[records.HelperState]:
    """Stop every helper of `entries` that is provably ours (SIGTERM, then SIGKILL after `grace`); the entries
    come back with how each ended. One that cannot be proven ours is never signalled."""
    alive = [(entry, proc) for entry in entries if (proc := proven(entry)) is not None]
    for _, proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _gone, still = psutil.wait_procs([proc for _, proc in alive], timeout=grace)
    for proc in still:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(still, timeout=grace)
    out = []
    for entry in entries:
        if entry.exited is None:
            exited = exit_of(entry.pid) if entry.pid else {"at": time.time()}
            entry = dataclasses.replace(entry, exited={**exited, "why": "stopped after QEMU"})
        out.append(entry)
    return out


class Watch:
    """A supervisor's helpers for the current QEMU run: started before QEMU, each one's end noticed the moment
    it comes (pidfd), stopped after QEMU; every change goes to `record` (state.json's `helpers`)."""

    def __init__(self, record: Callable[[list[records.HelperState]], None], log: Callable[[str], None],
                 qemu_runs: Callable[[], bool]) -> None:
        self.entries: list[records.HelperState] = []
        self._record, self._log, self._qemu_runs = record, log, qemu_runs

    def _set(self, entries: list[records.HelperState]) -> None:
        self.entries = entries
        self._record(entries)

    def start_all(self, specs: list[records.Helper]) -> str | None:
        """Start every helper in order; on a failure, stop those already started and return why."""
        self._set([])
        for spec in specs:
            try:
                started = start(spec)
            except HelperFailed as exc:
                self._log(str(exc))
                self._set(stop(self.entries))
                return str(exc)
            self._set([*self.entries, started])
            self._log(f"started {spec.name} pid {started.pid} for {spec.what}")
            self._watch(started.pid)
        return None

    def adopt(self, previous: list[records.HelperState]) -> None:
        """Adopting QEMU adopts its helpers: each one proven ours is watched again; one that is gone is recorded
        as such (it ended while no supervisor watched)."""
        gone = {"at": time.time(), "why": "gone while no supervisor watched it"}
        entries = [dataclasses.replace(entry, exited=gone) if entry.exited is None and proven(entry) is None
                   else entry for entry in previous]
        self._set(entries)
        for entry in entries:
            if entry.exited is None:
                self._log(f"adopting {entry.name} pid {entry.pid}")
                self._watch(entry.pid)

    def pids(self) -> list[int]:
        """The helpers of this run that have not ended (their sockets are proven with QEMU's)."""
        return [entry.pid for entry in self.entries if entry.pid and entry.exited is None]

    def stop_all(self) -> None:
        if any(entry.exited is None for entry in self.entries):
            self._set(stop(self.entries))

    def _watch(self, pid: int) -> None:
        """Record a helper's end when it comes. Before QEMU ends it is news (`status` names the share that is
        gone, and how); virtiofsd also ends by itself when QEMU does, which is not."""
        import asyncio  # the supervisor's loop; `status` and `rm` import this module without one

        loop = asyncio.get_running_loop()
        try:
            pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            pidfd = None

        def on_end() -> None:
            if pidfd is not None:
                loop.remove_reader(pidfd)
                os.close(pidfd)
            qemu_runs = self._qemu_runs()
            entries = []
            for entry in self.entries:
                if entry.pid == pid and entry.exited is None:
                    entry = ended(entry)
                    exited = entry.exited or {}
                    if not qemu_runs:
                        exited["why"] = "QEMU exited"
                    else:
                        self._log(f"{entry.name} for {entry.what} {describe_exit(exited)} while QEMU "
                                  f"runs: {exited.get('why') or 'see ' + entry.log}")
                entries.append(entry)
            self._set(entries)

        if pidfd is None:
            on_end()
        else:
            loop.add_reader(pidfd, on_end)
