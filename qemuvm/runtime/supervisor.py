"""The per-VM supervisor: `python -S -m qemuvm.runtime.supervisor INSTANCE_DIR` (or `--instance-from-stdin`,
prestarted by `up`: runtime/spawn.py).

It starts QEMU (paused with -S) as its child in a new session, holds the supervisor monitor
(supervisor.sock), writes every QMP event to events.jsonl, keeps state.json current and applies the
restart policy (runtime/supervision.py, the loop). A QEMU that outlived an earlier supervisor is adopted when
state.json proves it is ours. What it needs from the profile comes from supervisor.json, written by `up`.

This entry is light on purpose (issue 28): it starts QEMU before it imports asyncio and qemu.qmp, which then
load while QEMU initialises, so a start waits for the longer of the two rather than their sum. Only a first
run with no helper processes starts that early (helpers come up before QEMU, under the loop's watch), and
never when a QEMU of this instance already runs (the loop adopts it). A prestarted supervisor imports the loop
in a thread while it waits for its instance: for the starts that cannot go early, the imports still overlap
with `up`'s own work.

Imports: stdlib, psutil and qemuvm.runtime only; asyncio and qemu.qmp come with the loop.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from qemuvm.errors import UsageError
from qemuvm.paths import InstancePaths
from qemuvm.runtime import instance, records
from qemuvm.runtime.supervisor_base import EarlyQemu, checkpoint, log, start_qemu


def _import_the_loop() -> None:
    import qemuvm.runtime.supervision  # noqa: F401  (asyncio, qemu.qmp)


def early_qemu(paths: InstancePaths) -> tuple[records.StateView | None, EarlyQemu | None]:
    """The state before this start, and QEMU started now when this start may go early (a first run, no helper
    processes, no QEMU of this instance alive). Anything unusual is left to the loop, which says why."""
    previous = instance.read_state(paths)
    try:
        spec = records.read_launch_spec(paths)
    except UsageError:
        return previous, None
    if spec is None or spec.helpers or instance.proven_qemu(previous) is not None:
        return previous, None
    checkpoint("before-qemu")
    checkpoint("after-helpers")
    try:
        proc, argv, serial_offset = start_qemu(paths, spec, restarted=False)
    except OSError:
        return previous, None  # the loop tries again, and records why it cannot
    checkpoint("after-exec")  # QEMU runs, nothing recorded it yet: its pidfile is the only proof
    return previous, EarlyQemu(proc, argv, serial_offset)


def _instance_from_stdin() -> str | None:
    """Prestarted by `up` (runtime/spawn.Prestart): the instance folder arrives as one line on stdin, and from
    then on stdout and stderr go to its supervisor.log. EOF: up needed no supervisor after all."""
    threading.Thread(target=_import_the_loop, name="import-the-loop", daemon=True).start()
    root = sys.stdin.readline().strip()
    if not root:
        return None
    log_fd = os.open(Path(root) / "supervisor.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    for target in (1, 2):
        os.dup2(log_fd, target)
    os.close(log_fd)
    return root


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--instance-from-stdin"]:
        root = _instance_from_stdin()
        if root is None:
            return 0
        args = [root]
    if len(args) != 1:
        print("usage: python -m qemuvm.runtime.supervisor INSTANCE_DIR | --instance-from-stdin", file=sys.stderr)
        return 2
    paths = InstancePaths(Path(args[0]).resolve())
    os.umask(0o077)  # what QEMU and the helpers create (logs, sockets) is the owner's only, as the folder is
    # Terminal signals are for the CLI in front of us (`up --foreground` turns Ctrl-C into `down`).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with instance.locked(paths.supervisor_lock, timeout=None) as lock_fd:
            # Our pid in the lock we hold: commands find this supervisor even when state.json cannot say.
            os.ftruncate(lock_fd, 0)
            os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
            log(f"supervisor pid {os.getpid()} for {paths.root}")
            previous, early = early_qemu(paths)
            from qemuvm.runtime import supervision  # asyncio and qemu.qmp load while QEMU initialises

            return supervision.run(paths, previous, early)
    except instance.LockTimeout:
        log("another supervisor already watches this instance")
        return 0


if __name__ == "__main__":
    sys.exit(main())
