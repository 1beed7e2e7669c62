"""Typing into guests with neither an agent nor SSH: the serial console (`send`, smoke send/serial steps, the
plugin's send/expect) on the test guest's serial shell, and keys on the screen (`sendkey`) in Debian's iPXE,
whose command line Ctrl-B opens at boot, shown by screenshots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import cli, guest_profile, poll, read_png

from qemuvm import api
from qemuvm.testing import VM

pytestmark = pytest.mark.integration

IPXE_ISO = Path("/usr/lib/ipxe/ipxe.iso")


def test_a_serial_shell_driven_by_send_and_expect(home: Path, test_guest: Any) -> None:
    profile = guest_profile(home, test_guest, "typed", cmdline="qemuvm.shell", network=[])
    api.up(str(profile))
    guest = VM("typed", profile)
    # As an expect script does: the prompt first (input typed before the shell owns the tty is flushed).
    guest.expect(r"qemuvm-guest# ", timeout=60)
    guest.send("echo TYPED-$((6*7))\\n")
    assert guest.expect(r"^TYPED-(\d+)", timeout=60).group(1) == "42"  # the shell computed it: not our echo
    guest.send("echo SLEEPING-$((2*2)); sleep 600\\n")
    guest.expect(r"^SLEEPING-4", timeout=60)
    guest.send("\\x03")  # Ctrl-C reaches the foreground job through the serial tty: the prompt comes back
    guest.expect(r"qemuvm-guest# ", timeout=60)
    guest.send("echo AFTER-$((1+1))\\n")
    guest.expect(r"^AFTER-2", timeout=60)
    done = cli("send", "typed", "bad \\q escape is kept\\n")  # an unknown escape is text, not an error
    assert done.returncode == 0
    api.down("typed", force=True)


def test_smoke_steps_alternate_send_and_serial(home: Path, test_guest: Any, short_tmp: Path) -> None:
    data = yaml.safe_load(guest_profile(home, test_guest, "expect-smoke", cmdline="qemuvm.shell",
                                        network=[]).read_text())
    data["smoke"] = {"checks": [
        {"name": "prompt", "serial": "qemuvm-guest# "},
        {"name": "type", "send": "echo STEP-$((2+3))\\n"},
        {"name": "answer", "serial": "^STEP-5", "timeout": "60s"},
        {"name": "type again", "send": "echo NOPE\\n"},
        {"name": "not there", "serial": "^STEP-5", "timeout": "3s"},  # looks only after the last send
    ]}
    profile = short_tmp / "expect-smoke.yaml"
    profile.write_text(yaml.safe_dump(data))
    done = cli("smoke", str(profile), "--json", cwd=short_tmp, timeout=600)
    cases = {case["name"]: case["status"] for case in json.loads(done.stdout)["cases"]}
    assert cases == {"boot": "passed", "ready": "passed", "prompt": "passed", "type": "passed", "answer": "passed",
                     "type again": "passed", "not there": "failed"}, done.stdout
    assert done.returncode == 1


def _screen(name: str, out: Path) -> bytes:
    assert cli("screenshot", name, str(out), timeout=120).returncode == 0
    return out.read_bytes()


def _vga_text(name: str) -> str:
    """The VGA text-mode screen as text (80x25 cells at 0xb8000: a character byte and an attribute byte each),
    read through HMP `xp`: what the screenshot shows, without OCR."""
    dump = api.qmp(name, "human-monitor-command", {"command-line": "xp /2000hx 0xb8000"})
    cells = [int(word, 16) & 0xFF for line in dump.splitlines() for word in line.split()[1:]]
    text = "".join(chr(c) if 32 <= c < 127 else " " for c in cells)
    return "\n".join(text[row:row + 80].rstrip() for row in range(0, len(text), 80))


@pytest.mark.skipif(not IPXE_ISO.exists(), reason="needs Debian's ipxe package")
def test_keys_open_the_ipxe_command_line(home: Path, short_tmp: Path) -> None:
    profile = short_tmp / "ipxe.yaml"
    profile.write_text(yaml.safe_dump({
        "name": "keys", "machine": {"accel": "tcg", "type": "pc"}, "network": [], "display": {"vga": "std"},
        "disks": [{"file": str(IPXE_ISO), "media": "cdrom"}], "boot": {"order": ["cdrom"]}}))
    api.up(str(profile))

    def prompt() -> bool:
        # Ctrl-B once iPXE has shown its banner: it asks for it for two seconds. Pressed earlier, the key
        # stops ISOLINUX's timeout at its `boot:` prompt instead (Enter then boots on). A loaded host can miss
        # the two seconds; iPXE then falls through to "No bootable device." and a reset tries again.
        screen = _vga_text("keys")
        if "iPXE>" in screen:
            return True
        if "No bootable device" in screen:
            api.qmp("keys", "system_reset")
        elif "Network Boot Firmware" in screen:
            api.sendkey("keys", ["ctrl-b"], delay=0)
        elif screen.rstrip().endswith("boot:"):
            api.sendkey("keys", ["ret"], delay=0)
        return False
    poll("iPXE's command line after Ctrl-B", prompt, 120)
    before = _screen("keys", short_tmp / "before.png")
    assert "help" not in _vga_text("keys")
    # Typed key by key at the prompt: `help` and Enter lists iPXE's commands, and the screen shows it.
    assert cli("sendkey", "keys", "ret", "--text", "help").returncode == 0  # keys first, then the text
    assert cli("sendkey", "keys", "ret").returncode == 0
    listed = poll("iPXE's command list", lambda: "Available commands" in _vga_text("keys"), 60)
    assert listed
    after = _screen("keys", short_tmp / "after.png")
    assert after != before and read_png(short_tmp / "after.png").colours > 1
    api.down("keys", force=True)
