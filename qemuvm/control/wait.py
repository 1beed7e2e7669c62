"""Waiting for a VM: a serial regex, a guest TCP port through a forward, a QMP event, SSH, or shutdown.

Conditions are read from the files the supervisor and QEMU keep -- serial.log, events.jsonl, state.json --
so a wait needs no monitor connection; an inotify watch on the instance folder (runtime/watch.py) wakes the
wait at each write, so a serial line or an event ends it as it arrives, not at the next poll. Probes that no
file reports (a guest port, SSH, the guest agent) are retried every 100 ms. A wait fails at once, with the
last serial lines and how QEMU ended, when QEMU exits for good or the supervisor gives up.

Adding a condition: a `Condition(description, check)` whose `check()` returns True once satisfied; cheap
(reads a file the folder watch reports) unless it is marked `probe=True`. `ssh` is a probe: it calls
`qemuvm.control.ssh.ssh_ready(name, home)`.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qemuvm.errors import OperationError, UsageError
from qemuvm.paths import InstancePaths
from qemuvm.runtime import instance, ports, records
from qemuvm.runtime.watch import FolderWatch

if TYPE_CHECKING:
    import threading

    from qemuvm.profile.model import Ready

POLL = 0.1  # how often a probe is retried, and how often a wait looks whether QEMU is gone
LOOKBACK = 64 << 10  # a serial match may begin this far before the newest output (and end in it)


@dataclass
class Condition:
    description: str  # "serial /login:/" -- shown while waiting and in a timeout
    check: Callable[[], bool]
    until_exit: bool = False  # satisfied by QEMU exiting: an exit is not a failure
    probe: bool = False  # check() reaches into the guest (a connection): retried every POLL, not at each write


class WaitFailed(OperationError):
    """QEMU ended (or the wait timed out) before the condition held. `summary` is the sentence; the message
    adds the last serial lines (a smoke report shows those apart)."""

    def __init__(self, summary: str, serial_tail: str = "") -> None:
        super().__init__(summary + serial_tail)
        self.summary = summary


class Tail:
    """Reads a growing file incrementally from an offset; a file that shrank (truncated, rotated, replaced)
    is read again from its start. The one follower: waits, `logs -f`, `events -f`."""

    def __init__(self, path: Any, offset: int = 0) -> None:
        self.path, self.offset, self.text = path, offset, ""

    def new(self) -> str:
        """The text appended since the last call."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return ""
        if size < self.offset:
            self.offset, self.text = 0, ""
        if size <= self.offset:
            return ""
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read(size - self.offset)
        self.offset += len(data)
        return data.decode(errors="replace")

    def read(self) -> str:
        """Everything read since the offset it started from."""
        self.text += self.new()
        return self.text


def _size(path: Any) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def serial_condition(paths: InstancePaths, pattern: str, *, offset: int | None = None) -> Condition:
    """`pattern` (a regex, multi-line) appears on the serial console after byte `offset` (default: from now)."""
    try:
        regex = re.compile(pattern, re.MULTILINE)
    except re.error as exc:
        raise UsageError(f"{pattern!r} is not a valid regular expression ({exc})") from None
    tail = Tail(paths.serial_log, _size(paths.serial_log) if offset is None else offset)
    seen = {"text": "", "searched": False}

    def check() -> bool:
        # Only new output can complete a match: search it with what came just before it (LOOKBACK), never
        # the whole boot again at every write.
        new = tail.new()
        if not new and seen["searched"]:
            return False
        text = seen["text"] + new
        seen["text"], seen["searched"] = text[-LOOKBACK:], True
        return regex.search(text) is not None

    return Condition(f"serial /{pattern}/", check)


def event_condition(paths: InstancePaths, event: str, *, offset: int | None = None) -> Condition:
    """A QMP event named `event` is recorded in events.jsonl after byte `offset` (default: from now)."""
    tail = Tail(paths.events, _size(paths.events) if offset is None else offset)
    needle = re.compile(r'"event": "' + re.escape(event) + '"')
    return Condition(f"QMP event {event}", lambda: needle.search(tail.read()) is not None)


def _probe_port(address: str, port: int) -> bool:
    """QEMU's user-mode forward accepts every connection and closes it at once when the guest port is
    closed; an open guest port keeps it open (or sends a banner)."""
    try:
        with socket.create_connection((address, port), timeout=1.0) as sock:
            sock.settimeout(0.5)
            try:
                return sock.recv(1) != b""
            except TimeoutError:
                return True
    except OSError:
        return False


def port_condition(paths: InstancePaths, guest_port: int) -> Condition:
    """The guest's TCP `guest_port` accepts connections through the instance's forward to it."""
    found = ports.forward_address((instance.read_state(paths) or records.StateView()).forwards, guest_port)
    if found is None:
        raise UsageError(f"{paths.name} has no TCP forward to guest port {guest_port}")
    address, port = found
    return Condition(f"guest port {guest_port} (host {address}:{port})", lambda: _probe_port(address, port),
                     probe=True)


def ssh_condition(paths: InstancePaths) -> Condition:
    """An SSH command succeeds in the guest (the hook into qemuvm.control.ssh)."""
    from qemuvm.control import ssh

    return Condition("ssh", lambda: ssh.ssh_ready(paths.name, paths.root.parent), probe=True)


def agent_condition(paths: InstancePaths) -> Condition:
    """The guest agent answers a guest-sync (qemu-ga runs in the guest)."""
    from qemuvm.control import agent

    return Condition("the guest agent", lambda: agent.available(paths, timeout=1.0), probe=True)


def shutdown_condition(paths: InstancePaths) -> Condition:
    """QEMU has exited and will not be restarted."""
    def check() -> bool:
        state = instance.read_state(paths)
        return not instance.is_active(state) or (state is not None and state.state in (instance.STOPPED,
                                                                                        instance.CRASHED))
    return Condition("shutdown", check, until_exit=True)


def ready_conditions(paths: InstancePaths, ready: Ready | None, *, serial_offset: int = 0,
                     restored: bool = False) -> list[Condition]:
    """What the profile's `ready` block asks for (None: running is ready); `ready` is the section itself or the
    same fields as attributes (runtime/reuse.py records it). A guest restored from a saved state printed its
    boot messages before the save and will not again: only its port and ssh are checked."""
    if ready is None:
        return []
    conditions = []
    if ready.serial and not restored:
        conditions.append(serial_condition(paths, ready.serial, offset=serial_offset))
    if ready.port:
        conditions.append(port_condition(paths, ready.port))
    if ready.ssh:
        conditions.append(ssh_condition(paths))
    if ready.agent:
        conditions.append(agent_condition(paths))
    return conditions


def _ended(paths: InstancePaths) -> str | None:
    """How QEMU ended, when it is gone for good (no restart coming); None while it runs or restarts."""
    state = instance.read_state(paths) or records.StateView()
    supervised = instance.live_supervisor(state) is not None
    if supervised and state.state not in (instance.STOPPED, instance.CRASHED):
        return None
    if not supervised and instance.proven_qemu(state) is not None:
        return None  # unsupervised but alive: still worth waiting for
    last = state.last_exit or records.ExitRecord()
    how = last.reason or "it is not running"
    if last.signal:
        how += f", killed by {last.signal}"
    elif last.exit_code is not None:
        how += f", exit code {last.exit_code}"
    if last.gave_up:
        how += f"; the supervisor gave up after {state.restarts} restarts"
    return how


# The guest's report of a share it could not mount: the test guest's init prints it for each `qemuvm.share=`
# of its kernel command line (scripts/guest/README.md), as any guest may that follows that contract.
SHARE_FAILED = re.compile(r"^QEMUVM_GUEST_SHARE_FAILED tag=(\S+) (.*?)\r?$", re.MULTILINE)


def share_failure_guard(paths: InstancePaths, offset: int = 0) -> Callable[[], str | None]:
    """A check for wait_for: the sentence once the guest reported a share it could not mount after `offset`
    of serial.log (reading only what is new each time), else None."""
    tail = Tail(paths.serial_log, offset)
    carried = {"text": ""}

    def check() -> str | None:
        text = carried["text"] + tail.new()
        found = SHARE_FAILED.search(text)
        carried["text"] = text[text.rfind("\n") + 1:][-4096:]  # an unfinished line waits for its end
        return share_failure(found) if found else None

    return check


def share_failure(found: re.Match[str]) -> str:
    return f"the guest could not mount the share with tag {found[1]} ({found[2].strip()})"


def _serial_tail(paths: InstancePaths) -> str:
    # The last 15 lines with something in them: firmware and boot loaders end lines with \n\r and redraw with
    # blank lines, which would push the line that says why (grub's "bad shim signature") out of a plain tail.
    lines = [line.rstrip("\r") for line in instance.tail(paths.serial_log, 100).splitlines()]
    text = "\n".join([line for line in lines if line.strip()][-15:])
    return f"\nlast serial lines ({paths.serial_log}):\n{text}" if text else ""


def wait_for(paths: InstancePaths, conditions: list[Condition], timeout: float,
             progress: Callable[[str], None] | None = None, cancel: threading.Event | None = None,
             guards: Sequence[Callable[[], str | None]] = ()) -> float:
    """Wait until every condition holds, in order; returns the seconds it took. `cancel` set (by another
    thread: `up` of several VMs on Ctrl-C) ends the wait as a KeyboardInterrupt would. A guard that returns a
    sentence (the guest reported a share it could not mount) fails the wait with it."""
    started = time.monotonic()
    deadline = started + timeout
    with FolderWatch(paths.root) as watch:  # made before the first check: no write between them is missed
        for condition in conditions:
            if progress:
                progress(f"waiting for {condition.description} (up to {max(0.0, deadline - time.monotonic()):.0f} s) …")
            looked = 0.0
            while not condition.check():
                now = time.monotonic()
                if cancel is not None and cancel.is_set():
                    raise KeyboardInterrupt
                _check(paths, guards)
                if now - looked >= POLL:  # QEMU gone for good? (state.json and the processes: not at every write)
                    looked = now
                    ended = None if condition.until_exit else _ended(paths)
                    if ended is not None:
                        if condition.check():  # the match may have been written just before the exit
                            break
                        raise WaitFailed(f"{paths.name} stopped ({ended}) before {condition.description}",
                                         _serial_tail(paths))
                if now >= deadline:
                    raise WaitFailed(f"timed out after {timeout:g} s waiting for {paths.name}: "
                                     f"{condition.description}", _serial_tail(paths))
                if condition.probe:
                    time.sleep(min(POLL, max(deadline - now, 0.0)))
                else:
                    watch.wait(min(POLL, max(deadline - now, 0.0)))
    _check(paths, guards)  # what was reported before (or as) the last condition held
    return time.monotonic() - started


def _check(paths: InstancePaths, guards: Sequence[Callable[[], str | None]]) -> None:
    """WaitFailed with the first guard's sentence, when one has something to say."""
    for guard in guards:
        failure = guard()
        if failure is not None:
            raise WaitFailed(f"{paths.name}: {failure}", _serial_tail(paths))


def conditions_for(paths: InstancePaths, *, serial: str | None = None, port: int | None = None,
                   event: str | None = None, ssh: bool = False, shutdown: bool = False, ready: bool = False,
                   since: str = "boot", agent: bool = False) -> list[Condition]:
    """The conditions `qemuvm wait`, `api.wait` and the pytest plugin ask for, in that order; none given
    means the profile's `ready`. `since` is where serial and event matches start: boot (the current boot's
    first byte, as the supervisor recorded it at the start or the last reset), now, or start (the whole log)."""
    state = instance.read_state(paths) or records.StateView()
    if since == "boot":
        serial_at: int | None = state.serial_offset
        events_at: int | None = None
    elif since in ("now", "start"):
        serial_at = events_at = None if since == "now" else 0
    else:
        raise UsageError(f"since {since!r}: one of boot, now, start")
    conditions = []
    if serial:
        conditions.append(serial_condition(paths, serial, offset=serial_at))
    if port:
        conditions.append(port_condition(paths, port))
    if event:
        conditions.append(event_condition(paths, event, offset=events_at))
    if ssh:
        conditions.append(ssh_condition(paths))
    if agent:
        conditions.append(agent_condition(paths))
    if shutdown:
        conditions.append(shutdown_condition(paths))
    if ready or not conditions:
        from qemuvm.profile.validate import load_and_validate

        conditions += ready_conditions(paths, load_and_validate(str(paths.profile)).ready,
                                       serial_offset=serial_at or 0)
    return conditions



def await_record(paths: InstancePaths, what: str, holds: Callable[[records.StateView], bool],
                 timeout: float = 10.0) -> records.StateView:
    """Wait until the supervisor has recorded the result of a command in state.json: a command returns only
    once `ls`, `status` and state.json show what it did (read-your-writes)."""
    deadline = time.monotonic() + timeout
    while True:
        state = instance.read_state(paths) or records.StateView()
        if holds(state):
            return state
        gone = instance.live_supervisor(state) is None
        if gone or time.monotonic() > deadline:
            # The supervisor may have written the record and exited since the read above (a save's supervisor does
            # just that, at once): the record decides, read once more.
            state = instance.read_state(paths) or records.StateView()
            if holds(state):
                return state
            why = "ended without recording" if gone else "has not recorded"
            raise OperationError(f"{paths.name}: QEMU did it, but its supervisor {why} {what}"
                                 f"{'' if gone else f' within {timeout:g} s'}; see {paths.supervisor_log}")
        time.sleep(0.005)


def wait_ready(paths: InstancePaths, ready: Ready | None, wait: bool | None, timeout: float | None,
               serial_offset: int, progress: Callable[[str], None] | None = None, *,
               restored: bool = False, cancel: threading.Event | None = None) -> float | None:
    """`up`'s wait for the profile's `ready` (wait None: when it has one); the seconds it took, or None when
    there was nothing to wait for. timeout overrides ready.timeout."""
    if not (ready is not None if wait is None else wait):
        return None
    limit = timeout if timeout is not None else (ready.timeout if ready else 120.0)
    conditions = ready_conditions(paths, ready, serial_offset=serial_offset, restored=restored)
    # A share the guest could not mount fails `up --wait` at once (its writes would land in an empty folder).
    return wait_for(paths, conditions, limit, progress=progress, cancel=cancel,
                    guards=[share_failure_guard(paths, serial_offset)])
