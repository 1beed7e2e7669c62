"""aarch64 guests on this x86_64 host (TCG): the arm64 test guest (scripts/build-test-guest --arch arm64) through
smoke with a JUnit report, the pytest plugin's `vm`, ssh, the screen, top, snapshots, an ACPI power-off through
virt's GED device, warm clones, and the refusals (KVM for a foreign guest)."""

from __future__ import annotations

import json
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO, cli, guest_overrides, guest_sets, screenshot_until_not_blank

from qemuvm.testing import VM, vm

pytestmark = pytest.mark.integration

CI_SMOKE_ARM64 = REPO / "profiles" / "ci-smoke-arm64.yaml"


@pytest.fixture(scope="module")
def arm(test_guest_arm64) -> Iterator[VM]:
    """One arm64 VM for the tests of this module that leave it running, with a screen (ramfb, the kernel's
    console on it too) in a private short QEMUVM_HOME; started by the pytest plugin's `vm`."""
    home = tempfile.mkdtemp(prefix="qv", dir="/tmp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QEMUVM_HOME", home)
        overrides = {**guest_overrides(test_guest_arm64), "boot.cmdline": "console=tty0 console=ttyAMA0",
                     "display": {"vga": "std", "vnc": {"port": "unix"}}}
        with vm(CI_SMOKE_ARM64, **overrides) as running:
            yield running
    shutil.rmtree(home, ignore_errors=True)


def test_smoke_passes_on_the_arm64_guest(test_guest_arm64, qemuvm_home: Path, short_tmp: Path) -> None:
    done = cli("smoke", str(CI_SMOKE_ARM64), *guest_sets(test_guest_arm64), "--junit", "out.xml",
               "--timeout", "400", cwd=short_tmp, timeout=500)
    assert done.returncode == 0, done.stderr
    cases = {case.get("name"): case for case in ET.parse(short_tmp / "out.xml").getroot().iter("testcase")}
    assert list(cases) == ["boot", "ready", "firmware", "arch", "data-disk", "agent"]
    assert not [c for c in cases.values() if c.find("failure") is not None or c.find("skipped") is not None]
    assert [p.name for p in qemuvm_home.iterdir() if not p.name.startswith(".")] == []


def test_the_guest_is_aarch64_under_tcg(arm: VM) -> None:
    done = cli("ssh", arm.name, "--", "uname -m; cat /mnt/data/marker.txt")
    assert (done.returncode, done.stdout) == (0, "aarch64\nQEMUVM_DATA_MARKER\n"), done.stderr
    status = json.loads(cli("status", arm.name, "--json").stdout)
    assert (status["state"], status["accel"]) == ("running", "tcg")
    assert "QEMUVM_GUEST_FIRMWARE=uefi" in arm.serial_tail(200)


def test_screenshot_of_the_ramfb_console(arm: VM, short_tmp: Path) -> None:
    summary = screenshot_until_not_blank(arm.name, short_tmp / "screen.png", timeout=120)
    assert (summary.width, summary.height) == (800, 600)  # AAVMF's ramfb mode, which efifb keeps
    assert summary.colours > 1


def test_top_shows_the_arm64_vm(arm: VM) -> None:
    done = cli("top", "--once", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert rows[arm.name]["state"] == "running" and rows[arm.name]["rss_bytes"] > 0


def test_snapshot_save_and_load(arm: VM) -> None:
    assert cli("ssh", arm.name, "--", "echo before > /tmp/mark").returncode == 0
    saved = cli("snapshot", "save", arm.name, "s1", timeout=300)
    assert saved.returncode == 0, saved.stderr
    assert cli("ssh", arm.name, "--", "echo after > /tmp/mark").returncode == 0
    loaded = cli("snapshot", "load", arm.name, "s1", timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    assert cli("ssh", arm.name, "--", "cat /tmp/mark").stdout == "before\n"
    assert "s1" in cli("snapshot", "list", arm.name).stdout


def test_down_powers_off_through_acpi(test_guest_arm64, qemuvm_home: Path) -> None:
    """virt's power button is an ACPI GED event (the guest booted through AAVMF, so with ACPI); the guest's
    acpid sees it as KEY_POWER and powers off through PSCI, and QEMU exits."""
    with vm(CI_SMOKE_ARM64, **guest_overrides(test_guest_arm64)) as guest:
        done = cli("down", guest.name, timeout=200)
        assert done.returncode == 0, done.stderr
        assert "powered off (ACPI)" in done.stdout
        assert "QEMUVM_GUEST_POWEROFF" in guest.serial_tail(50)
        status = json.loads(cli("status", guest.name, "--json").stdout)
        assert (status["state"], status["last_exit"]["failure"]) == ("stopped", False)


def test_warm_clones_restore_the_arm64_template(test_guest_arm64, qemuvm_home: Path) -> None:
    overrides = guest_overrides(test_guest_arm64)
    with vm(CI_SMOKE_ARM64, warm=True, **overrides) as first, vm(CI_SMOKE_ARM64, warm=True, **overrides) as second:
        for guest in (first, second):
            done = cli("ssh", guest.name, "--", "uname -m")
            assert (done.returncode, done.stdout) == (0, "aarch64\n"), done.stderr
    templates = json.loads(cli("template", "ls", "--json").stdout)
    assert len(templates) == 1 and templates[0]["hits"] == 2
    assert cli("template", "rm", templates[0]["fingerprint"]).returncode == 0


def test_kvm_for_an_aarch64_guest_is_refused_here(test_guest_arm64, qemuvm_home: Path) -> None:
    done = cli("up", str(CI_SMOKE_ARM64), *guest_sets(test_guest_arm64), "--set", "machine.accel=kvm", "--no-wait")
    assert done.returncode == 2
    assert done.stderr.strip() == ("qemuvm: machine.accel is kvm, but KVM runs only x86_64 guests on this x86_64 "
                                   "host and this guest is aarch64: use accel: tcg or auto")
    assert [p.name for p in qemuvm_home.iterdir() if not p.name.startswith(".")] == []

