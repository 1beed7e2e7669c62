"""The libvirt corpus: domain definitions from libvirt's own tests (libvirt/libvirt, tests/qemuxmlconfdata;
see libvirt/README.md) and what `qemuvm import libvirt` makes of each. Shared by test_libvirt.py (goldens)
and tests/integration/test_libvirt_qemu.py (the real QEMU)."""

from __future__ import annotations

from pathlib import Path

from golden_cases import GOLDEN, REGEN

from qemuvm.convert import libvirt_import
from qemuvm.profile.load import load_text
from qemuvm.profile.model import Profile
from qemuvm.profile.validate import validate

LIBVIRT = GOLDEN / "libvirt"
DOMAINS = sorted((LIBVIRT / "domains").glob("*.xml"))
IMPORTED = LIBVIRT / "imported"
EXPORTED = LIBVIRT / "exported"
__all__ = ["DOMAINS", "EXPORTED", "IMPORTED", "REGEN", "import_case", "imported_profile"]


def import_case(path: Path) -> str:
    """Exactly the profile `qemuvm import libvirt PATH -o NAME.yaml` writes (no qemuvm networks exist)."""
    imported = libvirt_import.import_domain(path.read_bytes(), source=path.name)
    password = f"{path.stem}.vnc-password" if imported.vnc_password else None
    return libvirt_import.render_profile(imported, path.name, password)


def imported_profile(path: Path) -> Profile:
    return validate(load_text(import_case(path), f"{path.stem}.yaml"))
