"""Disks at start: `size` creates a missing image the guest then sees; `ephemeral: true` never writes the base."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from qemuvm.qemu import img

pytestmark = pytest.mark.integration


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ephemeral_base_is_never_written(qemuvm_home: Path, short_tmp: Path, test_guest) -> None:
    """up, write in the guest, down, up again, down with --rm: the base image's sha256 never changes."""
    from qemuvm import api
    from qemuvm.control import ssh

    base = short_tmp / "base.qcow2"
    shutil.copyfile(test_guest.data_disk, base)
    before = sha256(base)
    profile = short_tmp / "eph.yaml"
    profile.write_text(f"""
machine: {{accel: tcg, memory: 256M}}
boot: {{kernel: {test_guest.vmlinuz}, initrd: {test_guest.initrd}, cmdline: console=ttyS0}}
disks:
  - {{file: base.qcow2, ephemeral: true}}
  - {{file: scratch.qcow2, size: 64M}}
ssh: {{identity: {test_guest.key}}}
ready: {{serial: QEMUVM_GUEST_READY}}
shutdown: {{timeout: 20s}}
""")
    overlay = qemuvm_home / "eph" / "disk0.overlay.qcow2"

    def guest(command: str) -> str:
        result = ssh.run("eph", command, timeout=60)
        assert result.returncode == 0, f"{command}: {result.stderr}"
        return result.stdout

    try:
        api.up(profile)
        # The created disk is there, with the profile's size (in 512-byte sectors).
        assert guest("cat /sys/block/vdb/size").strip() == str(64 << 20 >> 9)
        assert guest("cat /mnt/data/marker.txt").strip() == "QEMUVM_DATA_MARKER"
        guest("dd if=/dev/urandom of=/mnt/data/written bs=1M count=4 2>/dev/null && sync")
        assert api.down("eph")["step"] == "acpi"
        assert sha256(base) == before
        info = img.info(overlay)
        assert info.backing_filename == str(base)
        assert info.actual_size > 4 << 20  # the guest's writes went to the overlay

        # A restart of the same instance keeps the overlay; `--rm` removes it (and the instance) at down.
        api.up("eph", remove_on_down=True)
        assert guest("ls /mnt/data").split() == sorted(["lost+found", "marker.txt", "written"])
        assert api.down("eph").get("removed") is True
        assert not overlay.exists() and not (qemuvm_home / "eph").exists()
        assert sha256(base) == before

        # A new instance sees the pristine image.
        api.up(profile)
        assert "written" not in guest("ls /mnt/data").split()
    finally:
        if (qemuvm_home / "eph").exists():
            api.down("eph", force=True)
    assert sha256(base) == before


def test_a_block_device_is_a_disk_the_guest_reads_and_writes(qemuvm_home: Path, short_tmp: Path, test_guest) -> None:
    """A loop device as a disk: QEMU's host_device driver (the file driver refuses a device node); preflight
    refuses a device that is mounted or not a block device, in one sentence each."""
    import os
    import subprocess

    from qemuvm import api
    from qemuvm.control import ssh
    from qemuvm.errors import UsageError

    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("loop devices need root and losetup")
    raw = short_tmp / "data.raw"
    img.convert(test_guest.data_disk, raw, "raw")
    device = subprocess.run(["losetup", "--find", "--show", str(raw)], capture_output=True, text=True,
                            check=True).stdout.strip()
    mountpoint = short_tmp / "mnt"
    try:
        profile = short_tmp / "blk.yaml"
        profile.write_text(f"""
machine: {{accel: tcg, memory: 256M}}
boot: {{kernel: {test_guest.vmlinuz}, initrd: {test_guest.initrd}, cmdline: console=ttyS0}}
disks: [{{file: {device}, format: raw}}]
ssh: {{identity: {test_guest.key}}}
ready: {{serial: QEMUVM_GUEST_READY}}
shutdown: {{timeout: 20s}}
""")
        api.up(profile)
        assert "driver=host_device" in (qemuvm_home / "blk" / "argv.json").read_text()
        done = ssh.run("blk", "cat /mnt/data/marker.txt && echo written > /mnt/data/new && sync", timeout=60)
        assert done.returncode == 0 and done.stdout.strip() == "QEMUVM_DATA_MARKER", done.stderr
        api.down("blk")
        api.rm("blk")
        mountpoint.mkdir()
        subprocess.run(["mount", device, str(mountpoint)], check=True)
        assert (mountpoint / "new").read_text() == "written\n"  # the guest wrote the device itself
        with pytest.raises(UsageError, match=rf"disks\[0\].file: {device} is mounted on the host at {mountpoint}"):
            api.up(profile)
        subprocess.run(["umount", str(mountpoint)], check=True)
        profile.write_text(profile.read_text().replace(device, "/dev/null"))
        with pytest.raises(UsageError, match=r"/dev/null is not a block device"):
            api.up(profile)
        assert not (qemuvm_home / "blk").exists()
    finally:
        subprocess.run(["umount", str(mountpoint)], capture_output=True)
        subprocess.run(["losetup", "-d", device], check=False)
