"""Stop intents (`stop.request`): "the coming exit of this QEMU is a `down`/`kill`, not a failure".

An intent belongs to one stop attempt: it names the QEMU it is meant for (pid + start time) and the process
that asked. It counts only for that QEMU, and only while its requester is alive or until it expires, so an
interrupted `down` (Ctrl-C, or the CLI killed) cannot turn a later crash into a clean exit that is never
restarted. Imported by the supervisor: stdlib and runtime only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from qemuvm.errors import OperationError
from qemuvm.paths import InstancePaths
from qemuvm.runtime import atomic, instance


def request(paths: InstancePaths, action: str, qemu_pid: int | None, qemu_start_time: float | None,
            lifetime: float) -> None:
    """Record that this process is about to stop QEMU `qemu_pid` (`action`: down | kill)."""
    me = instance.process_if_alive(os.getpid(), None)
    now = time.time()
    instance.write_json_atomic(paths.stop_request, {
        "action": action, "time": now, "expires_at": now + lifetime,
        "requester_pid": os.getpid(), "requester_start_time": me.create_time() if me else None,
        "qemu_pid": qemu_pid, "qemu_start_time": qemu_start_time})


def clear(paths: InstancePaths) -> None:
    """No intent, but a file of one block ready for it: a later `down` on a full disk writes its intent over
    these blocks in place (instance.write_json_atomic) instead of needing new ones. On a full disk the old
    file is blanked in place (a `start` there must not fail on this)."""
    try:
        instance.write_private_atomic(paths.stop_request, " " * 4095 + "\n")
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        if paths.stop_request.exists() and not atomic.overwrite_in_place(paths.stop_request, ""):
            raise


def withdraw(paths: InstancePaths) -> None:
    """Remove this process's own intent (a stop attempt that ended without QEMU exiting)."""
    record = instance.read_json(paths.stop_request)
    if record and record.get("requester_pid") == os.getpid():
        try:
            clear(paths)
        except OSError:  # a full disk: blank it in place
            with contextlib.suppress(OSError):
                instance.write_json_atomic(paths.stop_request, {})


def applies(record: dict[str, Any] | None, qemu_pid: int | None, *, now: float, requester_alive: bool) -> bool:
    """Whether `record` makes the exit of QEMU `qemu_pid` intentional (pure: a table test covers it)."""
    if not record or record.get("qemu_pid") != qemu_pid:
        return False
    expires = record.get("expires_at")
    return requester_alive or (isinstance(expires, (int, float)) and now <= expires)


def action_for(paths: InstancePaths, qemu_pid: int | None) -> str | None:
    """The action (down | kill) of the intent that applies to QEMU `qemu_pid` now, or None."""
    record = instance.read_json(paths.stop_request)
    if not record:
        return None
    if not applies(record, qemu_pid, now=time.time(), requester_alive=_requester_alive(record)):
        return None
    return str(record.get("action") or "down")


# -- one ending at a time (`operation.lock`) ------------------------------------------------------------------
# `save` and `down` each end QEMU, and each reads the exit as its own: a `down` during a `save` saw the save's
# quit as its ACPI power-off, and the save froze a guest that was powering off, both reporting success. Like
# libvirt's per-domain job lock, each holds this lock for its whole run; the other waits a while for it and then
# refuses in one sentence, naming who holds it. `kill` takes no lock: it ends anything at once (and a save it
# cuts short says so).

OPERATION_WAIT = 30.0  # seconds the second command waits before it refuses


@contextlib.contextmanager
def operation(paths: InstancePaths, action: str, timeout: float | None = None) -> Iterator[None]:
    """Hold the instance's operation lock while `action` (save | down) runs; OperationError when another
    operation holds it past `timeout` (default OPERATION_WAIT)."""
    timeout = OPERATION_WAIT if timeout is None else timeout
    try:
        with instance.locked(paths.operation_lock, timeout=timeout) as fd:
            with contextlib.suppress(OSError):  # who holds it, for the other's message; a full disk keeps the lock
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps({"action": action, "pid": os.getpid()}).encode(), 0)
            yield
    except instance.LockTimeout:
        holder = instance.read_json(paths.operation_lock) or {}
        what = f"a {holder.get('action', 'save or down')} (pid {holder.get('pid', '?')})"
        raise OperationError(f"{paths.name}: {what} is under way and still running after {timeout:g} s; "
                             f"{action} again once it has finished") from None


# -- a reboot in progress (`reboot.request`) ----------------------------------------------------------------
# The ACPI reboot tells QEMU to pause at the guest's power-off (set-action shutdown=pause), then resets and
# continues it. A `reboot` killed in between would leave that action behind, and every later power-off would
# leave QEMU paused instead of ending it: the supervisor, which outlives the CLI, ends such a QEMU when no live
# reboot claims the pause.


def request_reboot(paths: InstancePaths, qemu_pid: int | None) -> None:
    me = instance.process_if_alive(os.getpid(), None)
    instance.write_json_atomic(paths.reboot_request, {
        "requester_pid": os.getpid(), "requester_start_time": me.create_time() if me else None,
        "qemu_pid": qemu_pid, "time": time.time()})


def clear_reboot(paths: InstancePaths) -> None:
    with contextlib.suppress(FileNotFoundError):
        paths.reboot_request.unlink()


def reboot_in_progress(paths: InstancePaths, qemu_pid: int | None) -> bool:
    """A live `reboot` of this QEMU holds it paused at the power-off on purpose."""
    record = instance.read_json(paths.reboot_request)
    return bool(record) and record.get("qemu_pid") == qemu_pid and _requester_alive(record)


def _requester_alive(record: dict[str, Any]) -> bool:
    """The process that wrote an intent still runs (pid and start time: never a reused pid)."""
    pid, started = record.get("requester_pid"), record.get("requester_start_time")
    return isinstance(pid, int) and isinstance(started, (int, float)) \
        and instance.process_if_alive(pid, started) is not None
