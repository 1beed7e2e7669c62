"""README "Coming from libvirt", run: scripts/libvirt-walkthrough imports a libvirt domain of the test guest and
drives it with every qemuvm command of the README table (tests/unit/test_readme.py keeps the two in step)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_every_command_of_the_libvirt_table_works(test_guest: Any) -> None:
    done = subprocess.run([str(REPO / "scripts" / "libvirt-walkthrough"), str(test_guest.outdir)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    both = done.stdout + done.stderr
    assert "vm rebooted (acpi)" in both and "the guest powered off (ACPI)" in both
    assert "every command of the table ran" in done.stderr and "Traceback" not in done.stderr
    assert "<domain type=\"qemu\">" in done.stdout  # export libvirt printed the domain
