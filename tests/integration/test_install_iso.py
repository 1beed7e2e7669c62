"""The classic install scenario: 512M, a 7G raw disk created on first start, an ISO booted once, user
networking, VNC on loopback. With a third-party ISO (Debian's ipxe.iso) and the test guest's guest.iso.

Evidence of the boot order comes from SeaBIOS's own log (its debug port 0x402, captured with
isa-debugcon through qemu.extra_args): "Booting from DVD/CD..." / "Booting from Hard Disk...".
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from vmrun import Vm, free_port, profile_from

from qemuvm.control.display import read_png, screenshot
from qemuvm.qemu import img
from qemuvm.qemu.compile import PortPlan

pytestmark = pytest.mark.integration
IPXE_ISO = Path("/usr/lib/ipxe/ipxe.iso")


def install_profile(iso: Path, folder: Path) -> str:
    return f"""
machine: {{accel: tcg, memory: 512M}}
boot: {{order: [disk, cdrom], once: cdrom}}
disks:
  - {{file: install-disk.img, format: raw, size: 7G}}
  - {{file: {iso}, media: cdrom, interface: sata}}
network:
  - mode: user
display:
  vga: std
  vnc: {{listen: 127.0.0.1, port: auto}}
qemu:
  extra_args: [-chardev, "file,id=biosdbg,path={folder}/bios.log", -device, "isa-debugcon,iobase=0x402,chardev=biosdbg"]
"""


def boots(log: Path) -> list[str]:
    """SeaBIOS's boot attempts so far, in order: 'Hard Disk', 'DVD/CD', ..."""
    text = log.read_bytes().decode(errors="replace") if log.exists() else ""
    return re.findall(r"Booting from (Hard Disk|DVD/CD|Floppy|ROM)", text)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def test_ipxe_iso_boots_once_then_disk_first(short_tmp: Path) -> None:
    profile = profile_from(install_profile(IPXE_ISO, short_tmp), short_tmp, "install")
    disk = short_tmp / "install-disk.img"
    log = short_tmp / "bios.log"
    assert not disk.exists()
    with Vm(profile, short_tmp / "home", PortPlan(vnc_port=free_port(5900))) as vm:
        # First start: the 7G raw disk was created, and the firmware went straight to the cdrom.
        info = img.info(disk)
        assert (info.format, info.virtual_size) == ("raw", 7 << 30)
        assert wait_for(lambda: boots(log), 30, "a boot attempt")[0] == "DVD/CD"
        # iPXE's banner is on screen: not a single colour, VGA text mode size.
        shot = short_tmp / "ipxe.png"

        def showing_ipxe():
            screenshot(vm.paths.qmp_socket, shot)
            summary = read_png(shot)
            return summary if summary.colours > 1 else None

        summary = wait_for(showing_ipxe, 60, "a non-blank screen")
        assert (summary.width, summary.height) == (720, 400)
        vnc = vm.qmp("query-vnc")
        assert vnc["enabled"] and vnc["host"] == "127.0.0.1"
        # The next boot follows boot.order: disk first (blank: "not a bootable disk"), then the cdrom.
        attempts = len(boots(log))
        vm.qmp("system_reset")
        after = wait_for(lambda: boots(log)[attempts:attempts + 2] if len(boots(log)) >= attempts + 2 else None,
                         60, "two boot attempts after the reset")
        assert after == ["Hard Disk", "DVD/CD"]
        assert "Boot failed: not a bootable disk" in log.read_text(errors="replace")
    # A second start of the instance keeps the disk as it is (never recreated, never resized).
    disk.write_bytes(b"installed")
    with Vm(profile, short_tmp / "home", PortPlan(vnc_port=free_port(5900))):
        assert disk.read_bytes() == b"installed"


def test_guest_iso_boots_from_cdrom(short_tmp: Path, test_guest) -> None:
    profile = profile_from(install_profile(test_guest.iso, short_tmp), short_tmp, "guestiso")
    log = short_tmp / "bios.log"
    with Vm(profile, short_tmp / "home", PortPlan(vnc_port=free_port(5900))) as vm:
        vm.wait_serial("QEMUVM_GUEST_READY", 120)
        assert boots(log)[0] == "DVD/CD"
        assert "QEMUVM_GUEST_FIRMWARE=bios" in vm.serial_text()
        # After a reset SeaBIOS tries the blank disk first, fails, and falls back to the cdrom: the guest
        # comes up a second time.
        attempts, offset = len(boots(log)), len(vm.serial_text())
        vm.qmp("system_reset")
        vm.wait_serial("QEMUVM_GUEST_READY", 120, start=offset)
        assert boots(log)[attempts:attempts + 2] == ["Hard Disk", "DVD/CD"]
