"""Stopping a VM: `down`'s escalation (ACPI power-down, `quit`, SIGTERM, SIGKILL, saying which step ended
it) and `kill`. Both first record a stop intent (runtime/intent.py), so the supervisor does not restart what
was meant to end, and return once the supervisor recorded the exit."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from qemuvm.control.client import Monitor
from qemuvm.errors import OperationError
from qemuvm.paths import InstancePaths
from qemuvm.runtime import helpers, instance, intent, launch, records
from qemuvm.runtime.instance import STOPPED

Progress = Callable[[str], None]
GRACE_AFTER_QUIT = 10.0  # `quit` and SIGTERM each get this long before the next step


def request_stop(paths: InstancePaths, action: str, state: records.StateView, lifetime: float = 30.0) -> None:
    """Tell the supervisor that the coming exit of this QEMU is intentional: no restart (runtime/intent.py)."""
    intent.request(paths, action, state.qemu_pid, state.qemu_start_time, lifetime)


def wait_gone(state: records.StateView, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if instance.process_if_alive(state.qemu_pid, state.qemu_start_time) is None:
            return True
        time.sleep(0.05)
    return instance.process_if_alive(state.qemu_pid, state.qemu_start_time) is None


def wait_recorded(paths: InstancePaths, timeout: float = 10.0) -> records.StateView:
    """After QEMU is gone: wait until the supervisor recorded the exit (and exited), then the state."""
    deadline = time.monotonic() + timeout
    state = instance.read_state(paths) or records.StateView()
    while time.monotonic() < deadline and instance.live_supervisor(state) is not None:
        time.sleep(0.05)
        state = instance.read_state(paths) or records.StateView()
    return state


def stop(name: str, paths: InstancePaths, timeout: float | None, force: bool,
         progress: Progress) -> dict[str, Any]:
    """ACPI power-down, wait `timeout` (default: shutdown.timeout), `quit`, SIGTERM, SIGKILL; which step ended it.

    Its stop intent names the QEMU and lapses with this attempt, so an interrupted stop disables nothing."""
    state = launch.ensure_supervised(paths) or records.StateView()
    started = time.monotonic()
    if instance.proven_qemu(state) is None:
        if instance.live_supervisor(state) is not None:  # waiting to restart: cancel that
            request_stop(paths, "down", state)
            state = wait_recorded(paths)
        helpers.stop_orphans(state)
        view = instance.effective_state(state)
        return {"name": name, "step": None, "state": view.state, "already_stopped": True}
    spec = records.read_launch_spec(paths)
    grace = timeout if timeout is not None else (spec or records.LaunchSpec("", [])).shutdown_timeout
    request_stop(paths, "down", state, lifetime=grace + 3 * GRACE_AFTER_QUIT)
    try:
        return _escalate(name, paths, state, grace, force, started, progress)
    finally:
        if instance.proven_qemu(state) is not None:  # interrupted or failed: the intent goes with the attempt
            intent.withdraw(paths)


def _escalate(name: str, paths: InstancePaths, state: records.StateView, grace: float, force: bool, started: float,
              progress: Progress) -> dict[str, Any]:
    monitor = Monitor(paths.qmp_socket, timeout=10.0, busy_timeout=5.0)
    step = None
    if not force:
        try:
            if monitor.execute("query-status").get("status") == "running":
                progress(f"ACPI power-down sent to {name}; waiting up to {grace:g} s …")
                monitor.execute("system_powerdown")
                step = "acpi" if wait_gone(state, grace) else None
                if step is None:
                    progress(f"{name} did not power off within {grace:g} s; forcing")
            else:
                progress(f"{name} is paused: an ACPI power-down would go unanswered; using quit")
        except OperationError:
            progress(f"{name}: the monitor did not answer the power-down; forcing")
    if step is None and not force and paths.guest_agent_socket.exists():
        step = _agent_shutdown(name, paths, state, progress)
    if step is None:
        with contextlib.suppress(OperationError):
            monitor.execute("quit")
        step = "quit" if wait_gone(state, GRACE_AFTER_QUIT) else None
    for sig, label in ((15, "sigterm"), (9, "sigkill")):
        if step is not None:
            break
        proc = instance.proven_qemu(state)
        if proc is None:
            step = label
            break
        proc.send_signal(sig)
        step = label if wait_gone(state, GRACE_AFTER_QUIT) else None
    if step is None:
        raise OperationError(f"QEMU pid {state.qemu_pid} of {name} survived SIGKILL")
    final = wait_recorded(paths)
    last = final.last_exit or records.ExitRecord()
    view = instance.effective_state(final)
    # A supervisor that has not recorded the exit yet (stopped, or slow): QEMU is gone, and by our hand.
    stopped = STOPPED if view.stale else view.state
    return {"name": name, "step": step, "forced": step not in ("acpi", "agent"), "state": stopped,
            "exit_code": last.exit_code, "signal": last.signal,
            "elapsed_s": round(time.monotonic() - started, 2)}


def _agent_shutdown(name: str, paths: InstancePaths, state: records.StateView, progress: Progress) -> str | None:
    """The guest ignored ACPI (or is paused in its own way): ask its agent to power off (guest-shutdown sends no
    reply when it works). "agent" when QEMU then exits, None when no agent answers or the guest stays up."""
    from qemuvm.control import agent

    if not agent.request_shutdown(paths, "powerdown"):
        return None
    progress(f"{name}: power-off asked through the guest agent; waiting up to {GRACE_AFTER_QUIT:g} s …")
    return "agent" if wait_gone(state, GRACE_AFTER_QUIT) else None


def kill(name: str, paths: InstancePaths) -> dict[str, Any]:
    """SIGKILL QEMU at once (virsh destroy); the restart policy does not apply."""
    state = launch.ensure_supervised(paths) or records.StateView()
    proc = instance.proven_qemu(state)
    if proc is None:
        if instance.live_supervisor(state) is not None:
            request_stop(paths, "kill", state)
            state = wait_recorded(paths)
        helpers.stop_orphans(state)
        return {"name": name, "killed": False, "state": instance.effective_state(state).state}
    request_stop(paths, "kill", state)
    proc.kill()
    wait_gone(state, 10)
    final = wait_recorded(paths)
    return {"name": name, "killed": True, "state": instance.effective_state(final).state}
