"""`qemuvm screenshot NAME OUT.png` on VMs started by `qemuvm up`: QMP screendump as PNG; headless is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import CI_SMOKE, cli, guest_overrides, screenshot_until_not_blank

from qemuvm.testing import vm

pytestmark = pytest.mark.integration

IPXE_ISO = Path("/usr/lib/ipxe/ipxe.iso")


def test_screenshot_of_the_ipxe_iso(qemuvm_home: Path, short_tmp: Path) -> None:
    profile = short_tmp / "shot.yaml"
    profile.write_text(f"""
machine: {{accel: tcg, memory: 256M}}
disks: [{{file: {IPXE_ISO}, media: cdrom, interface: sata}}]
network: []
display: {{vga: std}}
""")
    out = short_tmp / "screen.png"
    with vm(profile) as guest:
        summary = screenshot_until_not_blank(guest.name, out)
    assert (summary.width, summary.height) == (720, 400)  # VGA text mode, 80x25 with 9x16 glyphs
    assert summary.colours > 1, "the screen stayed a single colour"
    assert not [p for p in short_tmp.iterdir() if p.name.startswith(".screen.png")]  # no temp file left


def test_headless_vm_gives_a_clear_error(qemuvm_home: Path, short_tmp: Path, test_guest) -> None:
    # profiles/ci-smoke.yaml has no display section: the VM is headless.
    with vm(CI_SMOKE, wait=False, **guest_overrides(test_guest)) as guest:
        assert guest.status()["state"] == "running"
        result = cli("screenshot", guest.name, str(short_tmp / "x.png"))
    assert result.returncode == 2
    assert result.stderr.strip() == ("qemuvm: the VM is headless (no display device): add a display section to "
                                     "its profile to take screenshots")
    assert not (short_tmp / "x.png").exists()
    assert not [p for p in short_tmp.iterdir() if p.name.startswith(".x.png")]  # no temp file left


def test_screenshot_of_an_unknown_instance(qemuvm_home: Path, short_tmp: Path) -> None:
    result = cli("screenshot", "nosuchvm", str(short_tmp / "x.png"))
    assert (result.returncode, result.stderr.strip()) == (2, "qemuvm: no instance named nosuchvm (see `qemuvm ls`)")
