"""What `status` and `ls` show: state.json corrected by liveness checks (`ls`, no QMP) and, for `status`, the
run state QEMU reports over QMP (`instance.qmp_state`, the one map)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

from qemuvm import files
from qemuvm.control import autostart
from qemuvm.errors import OperationError, UsageError
from qemuvm.paths import InstancePaths
from qemuvm.runtime import helpers, instance, records
from qemuvm.runtime.instance import PAUSED


def view(paths: InstancePaths, state: records.StateView | None) -> dict[str, Any]:
    """One row of `ls --json` (and the base of `status --json`)."""
    seen = instance.effective_state(state)
    return {
        "name": paths.name,
        "state": seen.state,
        "qemu_pid": seen.qemu_pid if seen.qemu_alive else None,
        "supervisor_pid": seen.supervisor_pid if seen.supervised else None,
        "supervised": seen.supervised,
        "accel": seen.accel,
        "uptime_s": seen.uptime_s,
        "restarts": seen.restarts,
        "policy": seen.policy,
        "forwards": seen.forwards,
        "vnc": seen.vnc,
        "last_exit": dataclasses.asdict(seen.last_exit) if seen.last_exit else None,
        "restored_at": seen.restored_at,  # this run continues a saved state (or a template's)
        "clock_behind_s": seen.clock_behind_s,  # restored from a saved state: the guest clock's lag
        "problem": seen.unreadable,  # state.json could not be read: the state comes from the processes
        "helpers": helper_views(seen),
        "started": state is not None,  # False: defined (`qemuvm define`), never started
        "autostart": autostart.is_enabled(paths.name, paths.root.parent),  # a systemd unit starts it at boot
        "dir": str(paths.root),
    }


def helper_views(seen: records.StateView) -> list[dict[str, Any]]:
    """The current run's helpers (virtiofsd), each checked live: `running`, or how it ended; while the VM is
    alive, one that ended carries `gone`: the sentence `status` shows (which share, how, why, its log)."""
    alive_vm = seen.state in instance.ALIVE_STATES
    out = []
    for entry in seen.helpers:
        if not entry.name:
            continue
        running = helpers.proven(entry) is not None
        item: dict[str, Any] = {"name": entry.name, "what": entry.what, "pid": entry.pid, "log": entry.log,
                                "exited": entry.exited, "running": running}
        if alive_vm and not running:
            exited = entry.exited or {}
            how = helpers.describe_exit(exited) if exited else "is gone (not yet recorded)"
            why = f" ({exited['why']})" if exited.get("why") else ""
            program = os.path.basename((entry.cmdline or ["helper"])[0])
            item["gone"] = (f"{entry.what} is gone: its {program} {how}{why}; what the guest does through it "
                            f"fails or hangs until the VM restarts; log {entry.log}")
        out.append(item)
    return out


def status(paths: InstancePaths) -> dict[str, Any]:
    """The instance's state; the live run state comes from QMP when QEMU is alive."""
    from qemuvm.control.client import Monitor  # qemu.qmp (asyncio): only here, `ls` starts faster without it

    state = instance.read_state(paths)
    result = view(paths, state)
    if instance.proven_qemu(state) is not None:
        try:
            live = Monitor(paths.qmp_socket, timeout=5.0, busy_timeout=3.0).execute("query-status")["status"]
            result["qmp_status"] = live
            # A reset while paused leaves QEMU in prelaunch until `cont`: it is paused, not starting (as `ls`).
            paused_reset = live == "prelaunch" and state is not None and state.state == PAUSED
            result["state"] = PAUSED if paused_reset else instance.qmp_state(live)
        except OperationError:
            result["qmp_status"] = None  # busy or going away: state.json's word stands
        if result.get("state") == "running" and paths.guest_agent_socket.exists():
            result["guest"] = _guest_facts(paths)
    problems = [result["problem"]] if result.get("problem") else []
    with contextlib.suppress(UsageError):
        spec = records.read_launch_spec(paths)
        if spec is not None and spec.template:
            result["template"] = spec.template  # a clone: its disks back onto that template
        if spec is not None and spec.taps:
            from qemuvm.runtime import nics

            result["addresses"] = nics.addresses(spec.taps)  # leased on qemuvm networks (dnsmasq)
            if result.get("state") in instance.ALIVE_STATES:
                problems.extend(nics.tap_problems(spec.taps))
        if spec is not None and spec.shares and result.get("state") in instance.ALIVE_STATES:
            problems.extend(share_problems(paths, spec.shares, state.serial_offset if state else 0))
    # `problem`: every problem in one line (None: nothing wrong), `problems`: the same one by one.
    problems.extend(helper["gone"] for helper in result["helpers"] if helper.get("gone"))
    result["problems"] = problems
    result["problem"] = "; ".join(problems) or None
    if paths.saved_state.exists():
        result["saved_state"] = {"file": str(paths.saved_state), "bytes": paths.saved_state.stat().st_size}
    if result.get("vnc") and paths.vnc_password.exists():  # the owner may see it: the file is theirs, 0600
        with contextlib.suppress(UsageError):
            password = files.read_text(paths.vnc_password, "vnc.password", 4096).strip()
            result["vnc"] = {**result["vnc"], "password": password}
    return result


SHARE_REPORT_WINDOW = 4 << 20  # bytes of this boot's serial output searched for a failed share mount


def share_problems(paths: InstancePaths, shares: list[dict[str, Any]], serial_offset: int) -> list[str]:
    """A running VM's shares that are not what the guest should see: the source gone from the host, or a
    mount the guest reported failed in this boot's serial output (control/wait.SHARE_FAILED)."""
    from qemuvm.control.wait import SHARE_FAILED, share_failure

    found = []
    for share in shares:
        if not os.path.isdir(share.get("source") or ""):
            found.append(f"shares[{share.get('index')}] (tag {share.get('tag')}): its source {share.get('source')} is "
                         "gone from the host; the guest sees a stale or empty folder")
    with contextlib.suppress(OSError), paths.serial_log.open("rb") as log:
        log.seek(serial_offset)
        text = log.read(SHARE_REPORT_WINDOW).decode(errors="replace")
        found.extend(share_failure(match) for match in SHARE_FAILED.finditer(text))
    return found


def _guest_facts(paths: InstancePaths) -> dict[str, Any] | None:
    """Hostname and IP addresses from the guest agent, when it answers within half a second (else None: status
    does not wait for a guest that runs no agent)."""
    from qemuvm.control import agent

    try:
        with agent.Agent(paths, sync_timeout=0.5) as session:
            return agent.guest_facts(session)
    except OperationError:
        return None
