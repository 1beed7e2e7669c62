"""`qemuvm screenshot NAME OUT.png` on VMs started by `qemuvm up`: QMP screendump as PNG; headless is a clear error."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from qemuvm.testing import vm

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CI_SMOKE = REPO / "profiles" / "ci-smoke.yaml"
IPXE_ISO = Path("/usr/lib/ipxe/ipxe.iso")


def qemuvm(*args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess; it inherits QEMUVM_HOME from the `qemuvm_home` fixture."""
    return subprocess.run([sys.executable, "-m", "qemuvm", *args], capture_output=True, text=True, timeout=120,
                          check=False)


def guest_overrides(guest) -> dict[str, object]:
    """profiles/ci-smoke.yaml pointed at the fixture's busybox guest, with a generous boot time for loaded hosts."""
    return {"boot.kernel": str(guest.vmlinuz), "boot.initrd": str(guest.initrd),
            "disks.0.file": str(guest.data_disk), "ssh.identity": str(guest.key), "ready.timeout": 300}


@dataclass(frozen=True)
class PngSummary:
    width: int
    height: int
    colours: int  # distinct pixel values (a blank screen has 1); counted up to 256


def read_png(path: Path) -> PngSummary:
    """Decode the PNG for real (Pillow), so a truncated or malformed file fails the test."""
    with Image.open(path) as image:
        image.load()
        colours = image.getcolors(maxcolors=256)
        return PngSummary(image.width, image.height, len(colours) if colours else 256)


def screenshot_until_not_blank(name: str, out: Path, timeout: float = 60) -> PngSummary:
    """`qemuvm screenshot` until the screen shows more than one colour (a VM's screen starts black).

    Every call must succeed; polls at most every 100 ms, fails at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = qemuvm("screenshot", name, str(out))
        assert result.returncode == 0, result.stderr
        summary = read_png(out)
        if summary.colours > 1:
            return summary
        assert time.monotonic() < deadline, f"the screen of {name} stayed a single colour for {timeout} s"
        time.sleep(0.1)


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
        result = qemuvm("screenshot", guest.name, str(short_tmp / "x.png"))
    assert result.returncode == 2
    assert result.stderr.strip() == ("qemuvm: the VM is headless (no display device): add a display section to "
                                     "its profile to take screenshots")
    assert not (short_tmp / "x.png").exists()
    assert not [p for p in short_tmp.iterdir() if p.name.startswith(".x.png")]  # no temp file left


def test_screenshot_of_an_unknown_instance(qemuvm_home: Path, short_tmp: Path) -> None:
    result = qemuvm("screenshot", "nosuchvm", str(short_tmp / "x.png"))
    assert (result.returncode, result.stderr.strip()) == (2, "qemuvm: no instance named nosuchvm (see `qemuvm ls`)")
