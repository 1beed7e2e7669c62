"""The classic install scenario, started the way users start it: `qemuvm up profiles/install-iso.yaml` (512M, a 7G
raw disk created on the first start, an ISO booted once, user networking, VNC on loopback). With a third-party
ISO (Debian's ipxe.iso) and the test guest's guest.iso.

Evidence of the boot order comes from SeaBIOS's own log (its debug port 0x402, captured with isa-debugcon
through qemu.extra_args): "Booting from DVD/CD..." / "Booting from Hard Disk...".
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from helpers import REPO, cli, poll, screenshot_until_not_blank

from qemuvm import api
from qemuvm.control import wait
from qemuvm.qemu import img
from qemuvm.testing import VM, vm

pytestmark = pytest.mark.integration

INSTALL_ISO = REPO / "profiles" / "install-iso.yaml"
IPXE_ISO = Path("/usr/lib/ipxe/ipxe.iso")

def overrides(folder: Path, iso: Path) -> dict[str, object]:
    """install-iso.yaml as shipped, but under TCG, with its disk in `folder`, `iso` in the cdrom drive and
    SeaBIOS's debug log in `folder`/bios.log."""
    return {"machine.accel": "tcg", "disks.0.file": str(folder / "install-disk.img"), "disks.1.file": str(iso),
            "qemu.extra_args": ["-chardev", f"file,id=biosdbg,path={folder}/bios.log",
                                "-device", "isa-debugcon,iobase=0x402,chardev=biosdbg"]}


def boots(log: Path) -> list[str]:
    """SeaBIOS's boot attempts so far, in order: 'Hard Disk', 'DVD/CD', ..."""
    text = log.read_bytes().decode(errors="replace") if log.exists() else ""
    return re.findall(r"Booting from (Hard Disk|DVD/CD|Floppy|ROM)", text)


def boot_attempts(log: Path, start: int, count: int, timeout: float = 60) -> list[str]:
    """The `count` boot attempts from attempt number `start` on, once SeaBIOS has made them."""
    return poll(f"{count} boot attempts from attempt {start} in {log}",
                lambda: boots(log)[start:start + count] if len(boots(log)) >= start + count else None, timeout)


def argv(guest: VM) -> list[str]:
    return json.loads(guest.paths.argv.read_text())


@pytest.mark.skipif(not IPXE_ISO.exists(), reason="needs Debian's ipxe package")
def test_ipxe_iso_boots_once_then_disk_first(qemuvm_home: Path, short_tmp: Path) -> None:
    disk, log = short_tmp / "install-disk.img", short_tmp / "bios.log"
    assert not disk.exists()
    with vm(INSTALL_ISO, **overrides(short_tmp, IPXE_ISO)) as guest:
        # First start: the 7G raw disk was created, and the firmware went straight to the cdrom (boot.once).
        info = img.info(disk)
        assert (info.format, info.virtual_size) == ("raw", 7 << 30)
        assert "order=cd,once=d" in argv(guest)
        assert boot_attempts(log, 0, 1, 30) == ["DVD/CD"]
        # iPXE's banner is on screen (`qemuvm screenshot`): not a single colour, VGA text mode size.
        summary = screenshot_until_not_blank(guest.name, short_tmp / "ipxe.png")
        assert (summary.width, summary.height) == (720, 400)

        # `qemuvm status --json` shows the VNC address; QEMU's VNC server listens there, on loopback only.
        shown = cli("status", guest.name, "--json")
        assert shown.returncode == 0, shown.stderr
        address = json.loads(shown.stdout)["vnc"]
        assert address["listen"] == "127.0.0.1" and 5900 <= address["port"] < 6000
        assert address["display"] == address["port"] - 5900
        live = guest.qmp("query-vnc")
        assert live["enabled"] and (live["host"], int(live["service"])) == ("127.0.0.1", address["port"])
        with socket.create_connection(("127.0.0.1", address["port"]), timeout=10) as conn:
            assert conn.recv(12).startswith(b"RFB 003.")  # a VNC server greets

        # A reset (an installer's final reboot) follows boot.order: disk first (blank: "not a bootable disk"),
        # then the cdrom.
        attempts = len(boots(log))
        guest.qmp("system_reset")
        assert boot_attempts(log, attempts, 2) == ["Hard Disk", "DVD/CD"]
        assert "Boot failed: not a bootable disk" in log.read_text(errors="replace")

        # The next start of the same instance: no boot.once any more, the disk is tried first, and the disk
        # is kept as it is (never recreated, never resized).
        api.down(guest.name, force=True)
        with disk.open("r+b") as handle:
            handle.write(b"installed")  # no boot signature: still "not a bootable disk"
        log.unlink()
        api.up(guest.name)
        second = argv(guest)
        assert "order=cd" in second and not [arg for arg in second if "once=" in arg]
        assert boot_attempts(log, 0, 2) == ["Hard Disk", "DVD/CD"]
        assert "Boot failed: not a bootable disk" in log.read_text(errors="replace")
        with disk.open("rb") as handle:
            assert handle.read(9) == b"installed"
        info = img.info(disk)
        assert (info.format, info.virtual_size) == ("raw", 7 << 30)


def test_guest_iso_boots_from_cdrom(qemuvm_home: Path, short_tmp: Path, test_guest) -> None:
    log = short_tmp / "bios.log"
    ready = {"ready.serial": "QEMUVM_GUEST_READY", "ready.timeout": 300}
    with vm(INSTALL_ISO, **overrides(short_tmp, test_guest.iso), **ready) as guest:  # waits for READY
        assert "order=cd,once=d" in argv(guest)
        assert boots(log)[0] == "DVD/CD"
        assert "QEMUVM_GUEST_FIRMWARE=bios" in guest.serial_log
        # `qemuvm reset`: SeaBIOS tries the blank disk first, fails, and falls back to the cdrom, so
        # the guest comes up a second time.
        attempts, offset = len(boots(log)), guest.paths.serial_log.stat().st_size
        rebooted = cli("reset", guest.name)
        assert rebooted.returncode == 0, rebooted.stderr
        wait.wait_for(guest.paths, [wait.serial_condition(guest.paths, "QEMUVM_GUEST_READY", offset=offset)], 300)
        assert boots(log)[attempts:attempts + 2] == ["Hard Disk", "DVD/CD"]


@pytest.mark.skipif(not IPXE_ISO.exists(), reason="needs Debian's ipxe package")
@pytest.mark.parametrize("machine", ["q35", "pc"])
def test_contract_cdrom_example_boots_ipxe(qemuvm_home: Path, short_tmp: Path, machine: str) -> None:
    """PROFILE.md's `{file: ./install.iso, media: cdrom}` (no interface) validates, renders on virtio-scsi and
    boots Debian's ipxe.iso on q35 and pc."""
    profile = short_tmp / "cd.yaml"
    (short_tmp / "install.iso").symlink_to(IPXE_ISO)
    profile.write_text(f"name: cd-{machine}\nmachine: {{type: {machine}, accel: tcg, memory: 256M}}\n"
                       "disks:\n  - file: ./install.iso\n    media: cdrom\n"
                       "boot: {order: [cdrom]}\ndisplay: {vga: std}\n"
                       "qemu:\n  extra_args: [-chardev, 'file,id=biosdbg,path=" + str(short_tmp / "bios.log") + "',"
                       " -device, 'isa-debugcon,iobase=0x402,chardev=biosdbg']\n")
    assert cli("validate", str(profile)).returncode == 0
    rendered = cli("render", str(profile)).stdout
    assert "scsi-cd,bus=scsi0.0,drive=disk0" in rendered and "virtio-scsi-pci" in rendered
    with vm(profile) as guest:
        assert boot_attempts(short_tmp / "bios.log", 0, 1, 60) == ["DVD/CD"]
        screenshot_until_not_blank(guest.name, short_tmp / "ipxe.png")
        assert "Boot failed" not in (short_tmp / "bios.log").read_text(errors="replace")
