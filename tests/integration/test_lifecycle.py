"""The supervised lifecycle against real QEMU and the busybox test guest (TCG): issue 4's list.

Every test tears its VMs down (`home` fixture) and the suite-wide check in tests/conftest.py fails
the run if a QEMU or supervisor survives.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from helpers import BOOT_TIMEOUT, alive, assert_gone, cli, guest_profile, poll, state_of

from qemuvm import api
from qemuvm.control import wait as waiting
from qemuvm.paths import InstancePaths

pytestmark = pytest.mark.integration

# -- 1. the whole lifecycle ------------------------------------------------------------------------------


def test_up_pause_resume_reboot_down(home: Path, test_guest: Any) -> None:
    profile = guest_profile(home, test_guest, "life")
    result = api.up(profile)
    paths = InstancePaths.for_name("life")
    assert result["ready"] is True
    assert "QEMUVM_GUEST_READY" in paths.serial_log.read_text(errors="replace")
    status = api.status("life")
    assert (status["state"], status["supervised"], status["accel"]) == ("running", True, "tcg")
    assert alive(status["qemu_pid"]) and alive(status["supervisor_pid"])
    assert [f["guest_port"] for f in status["forwards"] if f["ssh"]] == [22]
    assert oct(paths.root.stat().st_mode & 0o777) == "0o700"
    assert os.access(paths.run_sh, os.X_OK) and paths.argv.exists() and paths.profile.exists()

    events_at = paths.events.stat().st_size
    assert api.pause("life")["state"] == "paused"
    waiting.wait_for(paths, [waiting.event_condition(paths, "STOP", offset=events_at)], 10)
    assert state_of("life").state == "paused"
    assert api.resume("life")["state"] == "running"
    waiting.wait_for(paths, [waiting.event_condition(paths, "RESUME", offset=events_at)], 10)

    serial_at = paths.serial_log.stat().st_size
    events_at = paths.events.stat().st_size
    api.reboot("life")
    waiting.wait_for(paths, [waiting.event_condition(paths, "RESET", offset=events_at),
                             waiting.serial_condition(paths, "QEMUVM_GUEST_READY", offset=serial_at)], BOOT_TIMEOUT)

    # A QMP error through the CLI: exit 1 with its class and description.
    failed = cli("qmp", "life", "no-such-command")
    assert failed.returncode == 1 and "CommandNotFound" in failed.stderr
    assert '"running": true' in cli("qmp", "life", "query-status").stdout

    stopped = api.down("life")
    assert (stopped["step"], stopped["exit_code"], stopped["state"]) == ("acpi", 0, "stopped")
    assert "QEMUVM_GUEST_POWEROFF" in paths.serial_log.read_text(errors="replace")
    assert state_of("life").last_exit.reason == "down"
    assert_gone(status)
    assert api.status("life")["state"] == "stopped"


# -- 2. a guest that ignores ACPI; start again from the saved profile ---------------------------------------


def test_down_forces_when_acpi_is_ignored_then_start_again(home: Path, test_guest: Any) -> None:
    profile = guest_profile(home, test_guest, "deaf", cmdline="qemuvm.noacpi")
    first = api.up(profile)
    down = cli("down", "deaf", "--timeout", "2s")
    assert down.returncode == 0, down.stderr
    assert "did not power off within 2 s" in down.stderr and "forced with QMP quit" in down.stdout
    assert_gone(first)

    again = cli("start", "deaf", "--json")  # from the saved profile.yaml, waiting for ready again
    assert again.returncode == 0, again.stderr
    assert api.status("deaf")["state"] == "running"
    assert api.status("deaf")["qemu_pid"] != first["qemu_pid"]
    assert api.down("deaf", force=True)["step"] == "quit"

    # `up NAME` of a running instance refuses (exit 1) and says so.
    api.start("deaf", wait=False)
    refused = cli("up", "deaf")
    assert refused.returncode == 1 and "deaf is already running (pid" in refused.stderr
    assert api.kill("deaf")["killed"] is True


# -- 3. restart policy after kill -9 ------------------------------------------------------------------------


def test_on_failure_restarts_after_kill9(home: Path, test_guest: Any) -> None:
    profile = guest_profile(home, test_guest, "phoenix", restart={"policy": "on-failure", "backoff": "1s"})
    first = api.up(profile, wait=False)
    os.kill(first["qemu_pid"], signal.SIGKILL)
    restarted = poll("a restarted QEMU", lambda: (s := state_of("phoenix")).state == "running"
                     and s.qemu_pid != first["qemu_pid"] and s, 60)
    assert restarted.restarts == 1
    assert restarted.last_exit.signal == "SIGKILL"
    assert api.status("phoenix")["restarts"] == 1
    waiting.wait_for(InstancePaths.for_name("phoenix"),
                     [waiting.serial_condition(InstancePaths.for_name("phoenix"), "QEMUVM_GUEST_READY",
                                               offset=restarted.serial_offset)], BOOT_TIMEOUT)
    assert api.down("phoenix")["step"] == "acpi"
    assert state_of("phoenix").state == "stopped"  # down is not a failure: no restart


def test_never_is_crashed_after_kill9(home: Path, test_guest: Any) -> None:
    profile = guest_profile(home, test_guest, "mortal")
    first = api.up(profile, wait=False)
    os.kill(first["qemu_pid"], signal.SIGKILL)
    final = poll("the crash to be recorded", lambda: (s := state_of("mortal")).state == "crashed" and s, 20)
    assert final.last_exit.signal == "SIGKILL" and final.restarts == 0
    assert_gone(first)
    listed = {row["name"]: row for row in api.ls()}
    assert listed["mortal"]["state"] == "crashed"


# -- 4. a guest panic under the restart policy ----------------------------------------------------------------


@pytest.mark.parametrize("policy", ["on-failure", "never"])
def test_guest_panic_applies_the_restart_policy(home: Path, test_guest: Any, policy: str) -> None:
    name = f"panic-{policy}"
    profile = guest_profile(home, test_guest, name, cmdline="qemuvm.panic_after=1",
                            restart={"policy": policy, "backoff": "1s", "max_retries": 1})
    first = api.up(profile)
    paths = InstancePaths.for_name(name)
    waiting.wait_for(paths, [waiting.event_condition(paths, "GUEST_PANICKED", offset=0)], 60)
    if policy == "never":
        final = poll("the panic to be recorded", lambda: (s := state_of(name)).state == "crashed" and s, 20)
        assert final.last_exit.reason == "guest-panic"
        assert_gone(first)
        return
    again = poll("the restart after the panic", lambda: (s := state_of(name)).restarts == 1
                 and s.state == "running" and s, 30)
    assert again.last_exit.reason == "guest-panic" and again.qemu_pid != first["qemu_pid"]
    # The restarted guest panics again; max_retries 1 makes the supervisor give up.
    final = poll("the supervisor to give up", lambda: (s := state_of(name)).state == "crashed" and s, 120)
    assert final.last_exit.gave_up is True and final.restarts == 1


# -- 5. adoption ------------------------------------------------------------------------------------------------


def test_killed_supervisor_is_adopted_again(home: Path, test_guest: Any) -> None:
    profile = guest_profile(home, test_guest, "orphan")
    first = api.up(profile)
    os.kill(first["supervisor_pid"], signal.SIGKILL)
    poll("the supervisor to die", lambda: not alive(first["supervisor_pid"]), 10)
    assert alive(first["qemu_pid"])  # QEMU lives in its own session
    listed = {row["name"]: row for row in api.ls()}
    assert listed["orphan"]["supervised"] is False and listed["orphan"]["state"] == "running"
    assert api.status("orphan")["supervised"] is False

    adopted = cli("supervise", "orphan", "--json")
    assert adopted.returncode == 0, adopted.stderr
    status = api.status("orphan")
    assert status["supervised"] is True and status["qemu_pid"] == first["qemu_pid"]
    assert status["supervisor_pid"] != first["supervisor_pid"]

    # Again, and this time the next lifecycle command (down) adopts it by itself.
    os.kill(status["supervisor_pid"], signal.SIGKILL)
    poll("the supervisor to die", lambda: not alive(status["supervisor_pid"]), 10)
    stopped = api.down("orphan")
    assert stopped["step"] == "acpi" and stopped["state"] == "stopped"
    assert "QEMUVM_GUEST_POWEROFF" in InstancePaths.for_name("orphan").serial_log.read_text(errors="replace")
    assert_gone(status)


def test_both_killed_is_stale_and_up_starts_afresh(home: Path, test_guest: Any) -> None:
    profile = guest_profile(home, test_guest, "stale")
    first = api.up(profile, wait=False)
    os.kill(first["supervisor_pid"], signal.SIGKILL)
    os.kill(first["qemu_pid"], signal.SIGKILL)
    poll("both to die", lambda: not alive(first["supervisor_pid"]) and not alive(first["qemu_pid"]), 10)
    paths = InstancePaths.for_name("stale")
    assert paths.qmp_socket.exists()  # QEMU had no chance to remove it
    row = {r["name"]: r for r in api.ls()}["stale"]
    assert row["state"] in ("crashed", "stopped") and row["supervised"] is False
    again = api.up(profile, wait=False)
    assert again["state"] == "running" and again["qemu_pid"] != first["qemu_pid"]
    assert api.down("stale", force=True)["step"] == "quit"


# -- console ----------------------------------------------------------------------------------------------------


def test_console_with_pipes(home: Path, test_guest: Any) -> None:
    profile = guest_profile(home, test_guest, "chat", cmdline="qemuvm.shell")
    api.up(profile)
    result = cli("console", "chat", input="echo console-$((40+2))\n", timeout=60)
    assert result.returncode == 0, result.stderr
    assert "console-42" in result.stdout
    assert api.down("chat", force=True)["state"] == "stopped"
