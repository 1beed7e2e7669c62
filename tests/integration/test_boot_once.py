"""`boot.once` boots the install medium on the instance's first start only (virt-install's behaviour)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qemuvm import api

pytestmark = pytest.mark.integration
IPXE = Path("/usr/lib/ipxe/ipxe.iso")


@pytest.mark.skipif(not IPXE.exists(), reason="needs Debian's ipxe package")
def test_once_only_on_the_first_start(qemuvm_home: Path, short_tmp: Path) -> None:
    profile = short_tmp / "install.yaml"
    profile.write_text(
        "machine: {accel: tcg, memory: 128M}\n"
        "boot: {order: [disk, cdrom], once: cdrom}\n"
        "disks:\n  - {file: disk.img, size: 64M}\n"
        f"  - {{file: {IPXE}, media: cdrom, interface: sata}}\n"
        "network: []\nshutdown: {timeout: 1s}\n"
    )
    argv_file = qemuvm_home / "install" / "argv.json"
    try:
        api.up(profile, wait=False)
        assert "order=cd,once=d" in json.loads(argv_file.read_text())
        api.down("install", force=True)
        api.up("install", wait=False)  # the second start of the same instance
        second = json.loads(argv_file.read_text())
        assert "order=cd" in second and not any("once=" in arg for arg in second)
    finally:
        api.down("install", force=True)
