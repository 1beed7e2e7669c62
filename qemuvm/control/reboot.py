"""`reboot` as virsh means it: ask the guest -- through its agent when one answers, else with the ACPI power
button while QEMU is told to pause rather than exit at the power-off -- and return once its RESET is recorded.
`reset` (also `reboot --force`) is the hard reset, the button on the case.

The ACPI way is libvirt's fake reboot: QEMU has no ACPI "reboot" request, so the guest powers off, QEMU stops
in `shutdown` instead of exiting (`set-action shutdown=pause`), and qemuvm resets and continues it: the same
QEMU process, its pid, ports and taps kept."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from qemuvm.control import agent
from qemuvm.control.client import Monitor
from qemuvm.control.wait import await_record
from qemuvm.errors import OperationError
from qemuvm.paths import InstancePaths
from qemuvm.runtime import intent, records
from qemuvm.runtime.instance import PAUSED, RUNNING

Progress = Callable[[str], None]


def reset(paths: InstancePaths, state: records.StateView) -> None:
    """QMP system_reset; returns once the supervisor recorded the RESET (waits then start from the new boot)."""
    before = state.resets
    Monitor(paths.qmp_socket).execute("system_reset")
    await_record(paths, "the reset", lambda s: s.resets > before)


def reboot(paths: InstancePaths, state: records.StateView, progress: Progress) -> str:
    """Ask the guest to reboot; "agent" or "acpi", the way that worked. OperationError when the guest did not
    act within shutdown.timeout (nothing is forced: `reset` is the way then)."""
    spec = records.read_launch_spec(paths)
    timeout = float(spec.shutdown_timeout) if spec else 60.0
    monitor = Monitor(paths.qmp_socket, timeout=10.0, busy_timeout=5.0)
    if monitor.execute("query-status").get("status") != "running":
        raise OperationError(f"{paths.name} is paused: the guest cannot answer a reboot request; resume it "
                             f"first, or reset it: qemuvm reset {paths.name}")
    before = state.resets
    how = "agent" if agent.request_shutdown(paths, "reboot") else None
    if how is None:
        _acpi_reboot(paths, state, monitor, timeout, spec.argv if spec else [], progress)
        how = "acpi"
    else:
        progress(f"{paths.name}: reboot asked through the guest agent; waiting up to {timeout:g} s …")
    await_record(paths, "the reboot", lambda s: s.resets > before and s.state in (RUNNING, PAUSED),
                 timeout=timeout + 10)
    return how


def _acpi_reboot(paths: InstancePaths, state: records.StateView, monitor: Monitor, timeout: float, argv: list[str],
                 progress: Progress) -> None:
    intent.request_reboot(paths, state.qemu_pid)  # first: killed after set-action, the supervisor knows
    monitor.execute("set-action", {"shutdown": "pause"})
    try:
        progress(f"ACPI power button pressed on {paths.name} (a reboot); waiting up to {timeout:g} s …")
        monitor.execute("system_powerdown")
        deadline = time.monotonic() + timeout
        while monitor.execute("query-status").get("status") != "shutdown":
            if time.monotonic() > deadline:
                raise OperationError(f"{paths.name} did not act on the ACPI power button within {timeout:g} s "
                                     f"(shutdown.timeout); reset it instead: qemuvm reset {paths.name}")
            time.sleep(0.1)  # a poll of QEMU's run state, bounded by the deadline
        monitor.execute("system_reset")
        monitor.execute("cont")
    finally:  # back to what the profile asked for: QEMU ends when the guest powers off (unless -no-shutdown)
        with contextlib.suppress(OperationError):
            monitor.execute("set-action", {"shutdown": "pause" if "-no-shutdown" in argv else "poweroff"})
        intent.clear_reboot(paths)
