"""`qemuvm screenshot NAME OUT.png`: QMP screendump as PNG; a headless VM gives a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from vmrun import Vm, profile_from

from qemuvm.control.display import read_png

pytestmark = pytest.mark.integration


def qemuvm(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QEMUVM_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "qemuvm", *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def test_screenshot_of_the_ipxe_iso(short_tmp: Path) -> None:
    profile = profile_from("""
machine: {accel: tcg, memory: 256M}
disks: [{file: /usr/lib/ipxe/ipxe.iso, media: cdrom, interface: sata}]
network: []
display: {vga: std}
""", short_tmp, "shot")
    home = short_tmp / "home"
    out = short_tmp / "screen.png"
    with Vm(profile, home):
        # The screen starts black; poll (100 ms) until iPXE's text shows up.
        deadline = time.monotonic() + 60
        while True:
            result = qemuvm(home, "screenshot", "shot", str(out))
            assert result.returncode == 0, result.stderr
            summary = read_png(out)
            if summary.colours > 1 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert (summary.width, summary.height) == (720, 400)  # VGA text mode, 80x25 with 9x16 glyphs
    assert summary.colours > 1, "the screen stayed a single colour"
    assert not [p for p in short_tmp.iterdir() if p.name.startswith(".screen.png")]  # no temp file left


def test_headless_vm_gives_a_clear_error(short_tmp: Path, test_guest) -> None:
    profile = profile_from(f"""
machine: {{accel: tcg, memory: 256M}}
boot: {{kernel: {test_guest.vmlinuz}, initrd: {test_guest.initrd}, cmdline: console=ttyS0}}
network: []
""", short_tmp, "headless")
    home = short_tmp / "home"
    with Vm(profile, home):
        result = qemuvm(home, "screenshot", "headless", str(short_tmp / "x.png"))
    assert result.returncode == 2
    assert result.stderr.strip() == ("qemuvm: the VM is headless (no display device): add a display section to "
                                     "its profile to take screenshots")
    assert not (short_tmp / "x.png").exists()


def test_screenshot_of_an_unknown_instance(short_tmp: Path) -> None:
    result = qemuvm(short_tmp, "screenshot", "nosuchvm", str(short_tmp / "x.png"))
    assert (result.returncode, result.stderr.strip()) == (2, "qemuvm: no instance named 'nosuchvm'")
