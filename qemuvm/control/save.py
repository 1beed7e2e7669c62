"""`qemuvm save NAME` (virsh managedsave): the whole VM state -- RAM and devices -- to saved.state, then QEMU
exits and the instance reads `saved`; the next `start` continues it where it was (runtime/restore.py).

QEMU 7.2 writes the state as a migration stream. It goes to an open file we pass over the monitor
(`getfd` + `fd:`), not to `exec:cat > FILE`: no shell command. The stream lands under a temporary name and
gets its real name only after QEMU has exited and saved.json records the disks it goes with, so a save that
is interrupted or killed at any step never leaves a state file that looks good.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

from qemuvm.control.client import Monitor, QmpSession
from qemuvm.control.stop import wait_recorded
from qemuvm.control.wait import await_record
from qemuvm.errors import OperationError
from qemuvm.paths import InstancePaths
from qemuvm.runtime import instance, intent, records
from qemuvm.runtime.restore import disk_print, profile_sha256

UNTHROTTLED = 1 << 40  # bytes/s: QEMU's default migration bandwidth (128 MiB/s) would slow a save to a file


def _image_files(blocks: list[dict[str, Any]]) -> list[str]:
    """Every image file QEMU has open (each device's image and its backing chain), in order."""
    found: list[str] = []
    for block in blocks:
        image = (block.get("inserted") or {}).get("image")
        while image:
            name = image.get("filename", "")
            if name.startswith("/") and name not in found:
                found.append(name)
            image = image.get("backing-image")
    return found


async def _migrate_to(session: QmpSession, target: str, timeout: float) -> list[str]:
    """Pause, stream the state into `target`; the image files QEMU has open. OperationError on failure (the
    guest then runs again if it ran)."""
    was_running = (await session.execute("query-status"))["status"] == "running"
    files = _image_files(await session.execute("query-block"))
    await session.execute("stop")  # as libvirt's managedsave: a paused guest dirties no memory while saved
    try:
        await session.execute("migrate-set-parameters", {"max-bandwidth": UNTHROTTLED})
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            await session.pass_fd("saved-state", fd)
        finally:
            os.close(fd)
        await session.execute("migrate", {"uri": "fd:saved-state"})
        deadline = time.monotonic() + timeout
        while (info := await session.execute("query-migrate")).get("status") != "completed":
            if info.get("status") in ("failed", "cancelled"):
                raise OperationError(f"QEMU could not save the state: {info.get('error-desc', info['status'])}")
            if time.monotonic() > deadline:
                await session.execute("migrate_cancel")
                raise OperationError(f"the save did not finish within {timeout:g} s")
            await asyncio.sleep(0.02)
    except BaseException:
        if was_running:  # the guest goes on as if nothing happened
            with contextlib.suppress(Exception):
                await session.execute("cont")
        raise
    return files


def _ends_soon(state: records.StateView, within: float = 1.0) -> bool:
    """QEMU is gone, or going: a process killed closes its sockets (which is how the save saw it end) a moment
    before it is seen to have exited, and under load that moment is long enough to read it as alive."""
    deadline = time.monotonic() + within
    while instance.process_if_alive(state.qemu_pid, state.qemu_start_time) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # a bounded look at a process that is exiting (no event tells its last moment)
    return True


def _exit_recorded(paths: InstancePaths, since: float) -> records.StateView:
    """The state once the supervisor has recorded a QEMU exit that came after `since`."""
    return await_record(paths, "QEMU's exit", lambda s: s.last_exit is not None and s.last_exit.time >= since,
                        timeout=60)


def save(paths: InstancePaths, state: records.StateView, timeout: float = 600.0) -> dict[str, Any]:
    """Save a running instance; returns what saved.json records. On failure the VM keeps running."""
    temporary = paths.saved_state.with_name(".saved.state.tmp")
    monitor = Monitor(paths.qmp_socket, timeout=30.0)
    began = time.time()
    try:
        files = monitor.run(lambda session: _migrate_to(session, str(temporary), timeout))
    except BaseException:
        temporary.unlink(missing_ok=True)
        if _ends_soon(state):
            # QEMU died under the save: its exit is on record before we say so (status never lags).
            with contextlib.suppress(OperationError):
                _exit_recorded(paths, began)
        raise
    # Every byte is in the file and QEMU sits in postmigrate. Only now is its exit intended: QEMU dying
    # during the stream above is a crash (the restart policy applies), never a save.
    intent.request(paths, "save", state.qemu_pid, state.qemu_start_time, lifetime=120)
    with contextlib.suppress(OperationError):  # quit closes the monitor as it answers
        monitor.execute("quit")
    ended = _exit_recorded(paths, began)
    if ended.state != instance.SAVED:  # killed before the intent was on record: a crash, not a save
        temporary.unlink(missing_ok=True)
        reason = ended.last_exit.reason if ended.last_exit else None
        raise OperationError(f"{paths.name}'s QEMU ended before the save was complete ({reason}); nothing was saved")
    wait_recorded(paths)  # and its supervisor has exited: a `start` right after finds nothing running
    disks = [found for found in map(disk_print, files) if found is not None]  # after QEMU closed them
    saved = records.SavedState(saved_at=time.time(), size=temporary.stat().st_size,
                               profile_sha256=profile_sha256(paths.profile.read_text()), disks=disks)
    records.write_saved_state(paths, saved)
    os.replace(temporary, paths.saved_state)  # only now is it a saved state
    return {"name": paths.name, "state": instance.SAVED, "file": str(paths.saved_state), "bytes": saved.size,
            "disks": [d.path for d in disks]}
