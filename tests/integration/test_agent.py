"""Into the guest through QEMU's guest agent (qemu-ga in the test guest, started by its init when the port
exists): `exec` (exit codes, signals, stdout vs stderr, binary, stdin, env, the 16 MiB cap said), `cp` both ways
byte-exact with the mode, the guest's addresses in `status`, `ready: {agent: true}`, `down` of a guest that
ignores ACPI, a smoke `agent:` check, the plugin's `exec()`; and the failures: no channel (exit 2), no agent in the
guest, the agent stopping mid-command (one sentence each, no hang)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import cli, guest_profile

from qemuvm import api
from qemuvm.testing import VM

pytestmark = pytest.mark.integration


def _agent_vm(home: Path, guest: Any, name: str, cmdline: str = "", **sections: Any) -> Path:
    return guest_profile(home, guest, name, cmdline=cmdline, guest_agent=True,
                         ready={"agent": True, "timeout": "180s"}, **sections)


def test_exec_cp_and_status_through_the_agent(home: Path, test_guest: Any, tmp_path: Path) -> None:
    profile = _agent_vm(home, test_guest, "ga")
    assert api.up(str(profile))["ready"] is True  # ready: {agent: true} waited for qemu-ga

    # Exit codes: 0, 7, and a signal as a shell says it (128 + 9).
    assert cli("exec", "ga", "--", "true").returncode == 0
    done = cli("exec", "ga", "--", "sh", "-c", "echo to-out; echo to-err >&2; exit 7")
    assert (done.returncode, done.stdout, done.stderr) == (7, "to-out\n", "to-err\n")
    assert cli("exec", "ga", "--", "sh", "-c", "kill -9 $$").returncode == 137
    # Binary output, byte for byte; stdin; the environment; --json.
    assert api.exec_("ga", ["printf", "\\000\\001\\377"]).stdout == b"\x00\x01\xff"
    assert api.exec_("ga", ["cat"], stdin=b"in\x00put").stdout == b"in\x00put"
    done = cli("exec", "ga", "--json", "--env", "GREETING=hi there", "--", "sh", "-c", 'echo "$GREETING"; exit 3')
    result = json.loads(done.stdout)
    assert done.returncode == 3 and result["exit_code"] == 3 and result["stdout"] == "hi there\n"
    # 20 MiB of output: qemu-ga keeps 16 MiB, and that is said, not silently cut.
    big = cli("exec", "ga", "--", "head", "-c", str(20 << 20), "/dev/zero", timeout=300)
    assert len(big.stdout) == 16 << 20 and "stdout was cut by the guest agent at 16 MiB" in big.stderr
    assert big.returncode == 3  # not 0: the output is not all there

    # cp both ways: byte-exact, with the mode.
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom((4 << 20) + 12345))  # four whole 1 MiB chunks and a partial one
    blob.chmod(0o751)
    assert cli("cp", str(blob), "ga:/tmp/blob.bin", timeout=600).returncode == 0
    inside = api.exec_("ga", ["sh", "-c", "sha256sum /tmp/blob.bin; stat -c %a /tmp/blob.bin"]).stdout.split()
    assert inside[0].decode() == hashlib.sha256(blob.read_bytes()).hexdigest() and inside[-1] == b"751"
    api.exec_("ga", ["sh", "-c", "head -c 1000000 /dev/urandom > /tmp/out.bin && chmod 640 /tmp/out.bin"])
    assert cli("cp", "ga:/tmp/out.bin", str(tmp_path), timeout=600).returncode == 0
    back = tmp_path / "out.bin"
    assert hashlib.sha256(back.read_bytes()).hexdigest() == \
        api.exec_("ga", ["sha256sum", "/tmp/out.bin"]).stdout.split()[0].decode()
    assert back.stat().st_mode & 0o777 == 0o640
    # What a hostile guest offers: a setuid file comes over without the bit; a device, a folder and a file past
    # --max-size are one sentence each, and nothing half-copied is left behind.
    api.exec_("ga", ["sh", "-c", "echo x > /tmp/suid && chmod 6755 /tmp/suid"])
    assert cli("cp", "ga:/tmp/suid", str(tmp_path / "suid")).returncode == 0
    assert (tmp_path / "suid").stat().st_mode & 0o7777 == 0o755
    for source, args, expected in (("/dev/zero", [], "is a character special file in the guest"),
                                   ("/tmp", [], "is a directory in the guest"),
                                   ("/tmp/out.bin", ["--max-size", "1000"], "more than --max-size 1000")):
        refused = cli("cp", f"ga:{source}", str(tmp_path / "refused"), *args, timeout=120)
        assert refused.returncode == 2 and expected in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.bin", "out.bin", "suid"]

    # The guest's own view, in status: hostname and addresses (user networking: 10.0.2.15).
    status = json.loads(cli("status", "ga", "--json").stdout)
    assert status["guest"]["hostname"] == "qemuvm-guest"
    assert {"interface": "eth0", "address": "10.0.2.15", "prefix": 24, "type": "ipv4"} in status["guest"]["addresses"]

    # The pytest plugin's handle, on the same VM.
    assert VM("ga", profile).exec(["uname", "-s"], check=True).stdout == b"Linux\n"

    # The agent stops mid-command: a clear error within seconds, not a hang.
    stopped = cli("exec", "ga", "--", "sh", "-c", "kill $(cat /run/qemu-ga.pid); sleep 2", timeout=120)
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr
    assert "guest agent of ga did not answer" in stopped.stderr, stopped.stderr
    api.down("ga", force=True)


def test_down_of_a_guest_that_ignores_acpi_goes_through_the_agent(home: Path, test_guest: Any) -> None:
    profile = _agent_vm(home, test_guest, "noacpi", cmdline="qemuvm.noacpi", shutdown={"timeout": "3s"})
    api.up(str(profile))
    result = api.down("noacpi")
    assert result["step"] == "agent" and result["forced"] is False and result["state"] == "stopped"
    assert "QEMUVM_GUEST_POWEROFF" in (home / "noacpi" / "serial.log").read_text(errors="replace")


def test_a_smoke_check_through_the_agent(home: Path, test_guest: Any, short_tmp: Path) -> None:
    profile = short_tmp / "agent-smoke.yaml"
    data = yaml.safe_load(_agent_vm(home, test_guest, "agent-smoke").read_text())
    data["network"] = []  # no network at all: the agent is the only way in
    data["smoke"] = {"checks": [{"name": "kernel", "agent": "uname -r", "expect": r"^6\."},
                                {"name": "exit status", "agent": "exit 4"}]}
    profile.write_text(yaml.safe_dump(data))
    done = cli("smoke", str(profile), "--json", cwd=short_tmp, timeout=600)
    cases = {case["name"]: case for case in json.loads(done.stdout)["cases"]}
    assert done.returncode == 1
    assert cases["kernel"]["status"] == "passed"
    assert cases["exit status"]["status"] == "failed" and "exited with status 4" in cases["exit status"]["message"]


def test_agent_failures_are_one_sentence(home: Path, test_guest: Any) -> None:
    # No channel in the profile: how to enable it, exit 2.
    api.up(str(guest_profile(home, test_guest, "nochannel")))
    done = cli("exec", "nochannel", "--", "true")
    assert done.returncode == 2 and "set `guest_agent: true`" in done.stderr and "Traceback" not in done.stderr
    api.down("nochannel", force=True)
    # A channel, but no agent in the guest: a timeout that says so.
    profile = guest_profile(home, test_guest, "noagent", cmdline="qemuvm.noagent", guest_agent=True)
    api.up(str(profile))
    done = cli("exec", "noagent", "--", "true", timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "the guest agent of noagent does not answer" in done.stderr and "qemu-ga is not running" in done.stderr
    api.down("noagent", force=True)


def test_a_restored_guest_gets_its_clock_set_through_the_agent(home: Path, test_guest: Any) -> None:
    import time

    profile = _agent_vm(home, test_guest, "clock")
    api.up(str(profile))
    api.save("clock")
    # The guest's clock stands still while it is saved; the start that restores it sets it again. (Not a
    # synchronisation: the host clock has to move on for a stale guest clock to show.)
    time.sleep(3)
    started = api.start("clock")
    assert started["clock_set"] is True
    guest_now = int(api.exec_("clock", ["date", "+%s"]).stdout)
    assert abs(guest_now - time.time()) < 2.5, (guest_now, time.time())
    api.down("clock", force=True)
