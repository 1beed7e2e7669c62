"""What the supervisor's entry (runtime/supervisor.py) and its loop (runtime/supervision.py) share, light enough
to run before asyncio is imported: the supervisor's log, its named steps, and starting QEMU.

Imported by the supervisor: stdlib and qemuvm.runtime only.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from dataclasses import dataclass

from qemuvm.paths import InstancePaths
from qemuvm.runtime import instance, records


def checkpoint(step: str) -> None:
    """Each named bring-up step (before-qemu, after-helpers, after-exec, after-cont, on-resume) is an audit event,
    `qemuvm.supervisor.step`: nothing happens unless a hook listens. The fault tests' wrapper listens, to kill -9
    the supervisor at exactly that step (tests/integration/supervisor_stops.py)."""
    sys.audit("qemuvm.supervisor.step", step)


def log(message: str) -> None:
    with contextlib.suppress(OSError):  # supervisor.log on a full disk: the message is lost, the VM is not
        now = time.time()  # milliseconds: a start's steps are tens of them apart
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}.{int(now * 1000) % 1000:03d} {message}",
              flush=True)


@dataclass(frozen=True)
class EarlyQemu:
    """A QEMU the entry started before the loop's imports: the loop takes it as its first run's."""

    proc: subprocess.Popen[bytes]
    argv: list[str]
    serial_offset: int


def serial_size(paths: InstancePaths) -> int:
    try:
        return paths.serial_log.stat().st_size
    except FileNotFoundError:
        return 0


def start_qemu(paths: InstancePaths, spec: records.LaunchSpec,
               restarted: bool) -> tuple[subprocess.Popen[bytes], list[str], int]:
    """QEMU as the supervisor's child in a new session (it survives the supervisor, for adoption, and terminal
    signals), its output appended to qemu.log. Returns it, its argv and where this run's console output starts in
    serial.log (QEMU appends: `wait --serial` reads from there). OSError when it cannot start at all."""
    argv = list(spec.argv)  # compiled with -S by `up`: paused until our monitor listens, no event lost
    if spec.restore_from and not restarted:
        argv += ["-incoming", "defer"]  # a saved state comes in over QMP (restore); a restart boots afresh
    instance.unlink_stale_sockets(paths)
    serial_offset = serial_size(paths)
    with paths.qemu_log.open("ab") as qemu_log:
        qemu_log.write(f"--- qemuvm: starting QEMU at {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        qemu_log.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    return proc, argv, serial_offset
