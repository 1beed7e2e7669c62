"""`firmware: uefi`: the test guest boots under OVMF with a per-instance copy of the UEFI variables."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from vmrun import Vm, profile_from

from qemuvm.qemu.host import HostFacts

pytestmark = pytest.mark.integration


def test_guest_reports_uefi_with_private_variables(short_tmp: Path, test_guest) -> None:
    profile = profile_from(f"""
machine: {{accel: tcg, memory: 512M, firmware: uefi}}
boot: {{kernel: {test_guest.vmlinuz}, initrd: {test_guest.initrd}, cmdline: console=ttyS0}}
network: []
""", short_tmp, "efi")
    template = Path(HostFacts().ovmf_vars)
    template_digest = hashlib.sha256(template.read_bytes()).hexdigest()
    with Vm(profile, short_tmp / "home") as vm:
        vm.wait_serial("QEMUVM_GUEST_FIRMWARE=", 180)
        assert "QEMUVM_GUEST_FIRMWARE=uefi" in vm.serial_text()
        private = vm.paths.uefi_vars
        assert private.stat().st_size == template.stat().st_size
        assert private.stat().st_mode & 0o777 == 0o600
        # QEMU holds the private copy writable (pflash1), the distribution's template is not in use.
        blocks = {b["node-name"]: b for b in vm.qmp("query-named-block-nodes")}
        assert blocks["pflash1-file"]["file"] == str(private) and not blocks["pflash1-file"]["ro"]
    # The copy survives the VM (a restart keeps boot entries); the template was never written.
    assert private.exists()
    assert hashlib.sha256(template.read_bytes()).hexdigest() == template_digest
