"""Status that never misleads and small gaps (issue 11, items 13 and 14), on the test guest under TCG."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import cli, guest_profile, poll, state_at

from qemuvm import api
from qemuvm.paths import InstancePaths

pytestmark = pytest.mark.integration


def test_a_wait_after_a_reset_starts_from_the_reset(home: Path, test_guest: Any) -> None:
    """Reset while paused: the new boot cannot print anything, so a wait for READY must not be satisfied by
    the previous boot's READY line; and status and ls agree that the VM is paused."""
    api.up(guest_profile(home, test_guest, "again"))
    api.pause("again")
    assert cli("reset", "again").returncode == 0
    assert api.status("again")["state"] == "paused"
    assert {r["name"]: r for r in api.ls()}["again"]["state"] == "paused"
    waited = cli("wait", "again", "--for", "serial:QEMUVM_GUEST_READY", "--timeout", "3s")
    assert waited.returncode == 1 and "timed out" in waited.stderr, waited.stderr
    api.resume("again")  # the new boot runs and prints READY again
    assert cli("wait", "again", "--for", "serial:QEMUVM_GUEST_READY", "--timeout", "180s").returncode == 0
    # down of a paused VM says why it does not ask the guest, and nothing about a timeout.
    api.pause("again")
    down = cli("down", "again")
    assert down.returncode == 0 and "is paused" in down.stderr and "did not power off" not in down.stderr


def test_screenshot_into_a_folder_is_a_usage_error(home: Path, test_guest: Any, short_tmp: Path) -> None:
    api.up(guest_profile(home, test_guest, "shot", display={"vga": "std"}), wait=False)
    done = cli("screenshot", "shot", f"{short_tmp}/")
    assert done.returncode == 2 and "is a folder" in done.stderr and "Traceback" not in done.stderr
    api.kill("shot")


def test_ctrl_c_during_up_wait_says_the_vm_keeps_running(home: Path, test_guest: Any) -> None:
    profile = guest_profile(home, test_guest, "patient", ready={"serial": "NEVER_PRINTED", "timeout": "300s"})
    up = subprocess.Popen([sys.executable, "-m", "qemuvm", "up", str(profile)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
    paths = InstancePaths.for_name("patient")
    poll("the VM to run", lambda: state_at(paths).state == "running", 120)
    up.send_signal(signal.SIGINT)
    _, err = up.communicate(timeout=60)
    assert up.returncode == 130 and "patient keeps running (qemuvm down patient" in err and "Traceback" not in err
    assert api.status("patient")["state"] == "running"
    api.down("patient", force=True)


def test_qemu_killed_during_snapshot_save_is_one_sentence(home: Path, test_guest: Any, short_tmp: Path) -> None:
    disk = short_tmp / "snap.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    first = api.up(guest_profile(home, test_guest, "snap", disks=[{"file": str(disk)}],
                                 machine={"accel": "tcg", "memory": "1G"}))
    paths = InstancePaths.for_name("snap")
    save = subprocess.Popen([sys.executable, "-m", "qemuvm", "snapshot", "save", "snap", "t1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    poll("the snapshot job to run", lambda: '"status": "running"' in paths.events.read_text()
         and "snapshot-save" in paths.events.read_text(), 60)
    os.kill(first["qemu_pid"], signal.SIGKILL)
    _, err = save.communicate(timeout=120)
    assert save.returncode in (0, 1) and "Traceback" not in err, err  # (it may have just finished)
    if save.returncode == 1:
        assert err.startswith("qemuvm: ") and len(err.strip().splitlines()) == 1, err
    info = subprocess.run(["qemu-img", "check", "-U", str(disk)], capture_output=True, text=True, check=False)
    # The image itself is fine: exit 0, or 3 = only leaked clusters (space a killed writer had allocated;
    # "no harm to data"); 2 would be corruption.
    assert info.returncode in (0, 3) and "corrupt" not in info.stdout.lower(), info.stdout + info.stderr


def test_qmp_warns_before_a_command_that_ends_the_vm(home: Path, test_guest: Any) -> None:
    api.up(guest_profile(home, test_guest, "quitter"), wait=False)
    done = cli("qmp", "quitter", "quit")
    assert done.returncode in (0, 1) and "warning: quit ends QEMU at once" in done.stderr
    assert "Traceback" not in done.stderr
    poll("QEMU to exit", lambda: state_at(InstancePaths.for_name("quitter")).state
         == "stopped", 30)
    assert cli("qmp", "quitter", "query-status").returncode == 1  # not running: one sentence
