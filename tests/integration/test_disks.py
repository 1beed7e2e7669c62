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
