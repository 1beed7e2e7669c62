"""`firmware: uefi` (profiles/uefi.yaml via `qemuvm up`): the test guest boots under OVMF with a per-instance
copy of the UEFI variables, which the next start of the instance keeps."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from helpers import REPO

from qemuvm import api
from qemuvm.qemu.probe import find_ovmf
from qemuvm.testing import vm

pytestmark = pytest.mark.integration

UEFI = REPO / "profiles" / "uefi.yaml"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def only_clears_bits(before: bytes, after: bytes) -> bool:
    """True when `after` has no bit set that `before` had clear (the same size, flash write semantics)."""
    return len(before) == len(after) and int.from_bytes(after, "big") & ~int.from_bytes(before, "big") == 0


def test_guest_reports_uefi_with_private_variables(qemuvm_home: Path, test_guest) -> None:
    template = Path(find_ovmf()[1] or "/usr/share/OVMF/OVMF_VARS_4M.fd")
    template_digest = digest(template)
    overrides = {"machine.accel": "tcg", "boot.kernel": str(test_guest.vmlinuz),
                 "boot.initrd": str(test_guest.initrd), "ready.timeout": 300}
    # uefi.yaml's ready block waits for QEMUVM_GUEST_FIRMWARE=uefi on the serial console.
    with vm(UEFI, **overrides) as guest:
        assert "QEMUVM_GUEST_FIRMWARE=uefi" in guest.serial_log
        private = guest.paths.uefi_vars
        assert private.parent == guest.paths.root  # in the instance folder
        assert private.stat().st_size == template.stat().st_size
        assert private.stat().st_mode & 0o777 == 0o600
        # QEMU holds the private copy writable (pflash1), the distribution's template is not in use.
        blocks = {b["node-name"]: b for b in guest.qmp("query-named-block-nodes")}
        assert blocks["pflash1-file"]["file"] == str(private) and not blocks["pflash1-file"]["ro"]

        # The next start of the same instance keeps the file. OVMF writes its variables store like flash: a
        # boot appends variables and clears bits of old ones, never sets a bit back. So the store after the
        # second run is the first run's store plus what the second run added -- a copy of the template at the
        # second start would have lost the first run's variables and set bits back to 1.
        # `quit` (forced, but a clean QEMU exit that flushes the flash): the guest's ACPI handler may not be up
        # yet, ready only waited for the firmware line.
        api.down(guest.name, force=True)
        first, first_inode = private.read_bytes(), private.stat().st_ino
        assert first != template.read_bytes()  # the firmware wrote to the private copy
        offset = guest.paths.serial_log.stat().st_size
        api.up(guest.name)  # waits for the ready block again
        assert b"QEMUVM_GUEST_FIRMWARE=uefi" in guest.paths.serial_log.read_bytes()[offset:]
        blocks = {b["node-name"]: b for b in guest.qmp("query-named-block-nodes")}
        assert blocks["pflash1-file"]["file"] == str(private) and not blocks["pflash1-file"]["ro"]
        api.down(guest.name, force=True)
        second = private.read_bytes()
        assert (private.stat().st_ino, private.stat().st_mode & 0o777) == (first_inode, 0o600)
        assert second != first, "the second run did not write to the kept variables store"
        assert only_clears_bits(first, second), "the variables store was replaced at the second start"
    # The template was never written.
    assert digest(template) == template_digest
