"""Disks at start: `size` creates a missing image the guest then sees; `ephemeral: true` never writes the base."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from vmrun import Vm, free_port, profile_from

from qemuvm.qemu import img
from qemuvm.runtime.prepare import remove_ephemeral

pytestmark = pytest.mark.integration


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ephemeral_base_is_never_written(short_tmp: Path, test_guest) -> None:
    base = short_tmp / "base.qcow2"
    shutil.copyfile(test_guest.data_disk, base)
    before = sha256(base)
    port = free_port()
    profile = profile_from(f"""
machine: {{accel: tcg, memory: 256M}}
boot: {{kernel: {test_guest.vmlinuz}, initrd: {test_guest.initrd}, cmdline: console=ttyS0}}
disks:
  - {{file: base.qcow2, ephemeral: true}}
  - {{file: scratch.qcow2, size: 64M}}
network:
  - mode: user
    forwards: ["tcp:127.0.0.1:{port}-:22"]
""", short_tmp, "eph")
    home = short_tmp / "home"

    def ssh(vm: Vm, command: str) -> str:
        result = vm.ssh(test_guest.key, port, command)
        assert result.returncode == 0, f"{command}: {result.stderr}"
        return result.stdout

    with Vm(profile, home) as vm:
        vm.wait_serial("QEMUVM_GUEST_READY", 120)
        # The created disk is there, with the profile's size (in 512-byte sectors).
        assert ssh(vm, "cat /sys/block/vdb/size").strip() == str(64 << 20 >> 9)
        assert ssh(vm, "cat /mnt/data/marker.txt").strip() == "QEMUVM_DATA_MARKER"
        ssh(vm, "dd if=/dev/urandom of=/mnt/data/written bs=1M count=4 2>/dev/null && sync")
        vm.qmp("quit")
        vm.proc.wait(timeout=30)
    assert sha256(base) == before
    overlay = img.info(Path(vm.paths.overlay(0)))
    assert overlay.backing_filename == str(base)
    assert overlay.actual_size > 4 << 20  # the guest's writes went to the overlay

    # A restart of the same instance keeps the overlay: the guest's file is still there.
    with Vm(profile, home) as vm:
        vm.wait_serial("QEMUVM_GUEST_READY", 120)
        assert ssh(vm, "ls /mnt/data").split() == sorted(["lost+found", "marker.txt", "written"])
    # Without the overlay (`up --rm` at down, or `rm`), the next start sees the pristine image.
    assert remove_ephemeral(vm.paths) == [vm.paths.overlay(0)]
    with Vm(profile, home) as vm:
        vm.wait_serial("QEMUVM_GUEST_READY", 120)
        assert "written" not in ssh(vm, "ls /mnt/data").split()
    assert sha256(base) == before
