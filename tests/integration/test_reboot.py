"""`reboot` as virsh means it (issue 17): the guest is asked -- ACPI without an agent (QEMU paused at the
power-off, then reset and continued: the same QEMU), the guest agent when there is one -- and the new boot
comes up; a guest that ignores the request gets nothing forced and one sentence; `reset` is the hard reset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import cli, guest_profile, state_of

from qemuvm import api
from qemuvm.control import wait
from qemuvm.paths import InstancePaths

pytestmark = pytest.mark.integration


def _new_boot_ready(name: str, offset: int) -> None:
    paths = InstancePaths.for_name(name)
    wait.wait_for(paths, [wait.serial_condition(paths, "QEMUVM_GUEST_READY", offset=offset)], 180)


def test_reboot_asks_the_guest_through_acpi_and_keeps_qemu(home: Path, test_guest: Any) -> None:
    started = api.up(guest_profile(home, test_guest, "acpirb"))
    paths = InstancePaths.for_name("acpirb")
    offset, resets = paths.serial_log.stat().st_size, state_of("acpirb").resets
    rebooted = cli("reboot", "acpirb", "--json")
    assert rebooted.returncode == 0, rebooted.stderr
    result = json.loads(rebooted.stdout)
    assert result["how"] == "acpi" and result["qemu_pid"] == started["qemu_pid"]  # the same QEMU
    assert result["state"] == "running" and state_of("acpirb").resets > resets
    assert "QEMUVM_GUEST_POWEROFF" in paths.serial_log.read_bytes()[offset:].decode(errors="replace")
    assert "`qemuvm reset` (or `reboot --force`) is the hard reset" in rebooted.stderr  # the notice, once
    _new_boot_ready("acpirb", offset)
    offset = paths.serial_log.stat().st_size
    assert "now asks the guest" not in cli("reboot", "acpirb").stderr
    _new_boot_ready("acpirb", offset)  # (acpid runs again: a power button pressed before it is lost)
    # QEMU is back to ending at a power-off: `down` by ACPI ends it.
    assert api.down("acpirb")["step"] == "acpi"


def test_reboot_through_the_guest_agent(home: Path, test_guest: Any) -> None:
    started = api.up(guest_profile(home, test_guest, "agentrb", guest_agent=True,
                                   ready={"agent": True, "timeout": "180s"}))
    paths = InstancePaths.for_name("agentrb")
    offset = paths.serial_log.stat().st_size
    result = api.reboot("agentrb")
    assert result["how"] == "agent" and result["qemu_pid"] == started["qemu_pid"]
    assert "QEMUVM_GUEST_REBOOT" in paths.serial_log.read_bytes()[offset:].decode(errors="replace")
    _new_boot_ready("agentrb", offset)
    api.down("agentrb", force=True)


def test_a_guest_that_ignores_the_request_gets_nothing_forced(home: Path, test_guest: Any) -> None:
    started = api.up(guest_profile(home, test_guest, "deafrb", cmdline="qemuvm.noacpi",
                                   shutdown={"timeout": "3s"}))
    refused = cli("reboot", "deafrb")
    assert refused.returncode == 1 and "did not act on the ACPI power button within 3 s" in refused.stderr
    assert "qemuvm reset deafrb" in refused.stderr and "Traceback" not in refused.stderr
    assert api.status("deafrb")["state"] == "running" and state_of("deafrb").qemu_pid == started["qemu_pid"]
    api.pause("deafrb")
    paused = cli("reboot", "deafrb")
    assert paused.returncode == 1 and "is paused" in paused.stderr, paused.stderr
    forced = cli("reboot", "deafrb", "--force", "--json")
    assert forced.returncode == 0 and json.loads(forced.stdout)["how"] == "reset", forced.stderr
    api.down("deafrb", force=True)


def test_a_pause_at_power_off_that_no_reboot_claims_ends_qemu(home: Path, test_guest: Any) -> None:
    """What a `reboot` killed between its two QMP calls leaves behind: QEMU told to pause at the guest's
    power-off. The supervisor ends such a QEMU when no live reboot holds it, as the profile asks: the guest's
    own power-off still ends the VM (a clean ACPI `down`, not one forced after shutdown.timeout)."""
    api.up(guest_profile(home, test_guest, "leftpause", shutdown={"timeout": "60s"}))
    api.qmp("leftpause", "set-action", {"shutdown": "pause"})  # as a killed reboot leaves it
    stopped = api.down("leftpause")
    assert stopped["step"] == "acpi" and stopped["state"] == "stopped", stopped
    last = state_of("leftpause").last_exit
    assert last.shutdown_reason == "guest-shutdown" and last.reason != "signal", last
