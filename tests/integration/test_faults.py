"""Faults at every step (issues 10 and 11): the supervisor killed during `up`, corrupt records, an interrupted
`down`, and commands whose result must already be in state.json when they return. Real QEMU, the test guest.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from helpers import alive, cli, guest_profile, kill_everything, poll, state_of, up_with_supervisor_stopped_at

from qemuvm import api
from qemuvm.paths import InstancePaths
from qemuvm.runtime import instance

pytestmark = pytest.mark.integration


def state_json(name: str) -> dict[str, Any]:
    return json.loads(InstancePaths.for_name(name).state.read_text())


def no_qemu_of(home: Path) -> bool:
    return not [p for p in psutil.process_iter(["cmdline"]) if str(home) in " ".join(p.info["cmdline"] or [])
                and "qemu-system" in " ".join(p.info["cmdline"] or [])]


# -- read-your-writes: every verb's result is in state.json when it returns --------------------------------


def test_every_verb_is_recorded_before_it_returns(home: Path, test_guest: Any) -> None:
    profile = guest_profile(home, test_guest, "ryw", ready={"serial": "QEMUVM_GUEST_READY", "timeout": "180s"})
    api.up(profile)
    for _ in range(50):
        api.pause("ryw")
        assert state_json("ryw")["state"] == "paused"
        assert {r["name"]: r for r in api.ls()}["ryw"]["state"] == "paused"
        api.resume("ryw")
        assert state_json("ryw")["state"] == "running"
        resets = state_json("ryw").get("resets", 0)
        api.reset("ryw")
        assert state_json("ryw")["resets"] > resets  # (a guest reset of its own may add one)
    for verb in ("pause", "resume", "reset"):  # the CLI is the same API
        assert cli(verb, "ryw").returncode == 0
        assert state_json("ryw")["state"] == ("paused" if verb == "pause" else "running")
    for _ in range(50):
        api.kill("ryw")
        assert state_json("ryw")["state"] == "stopped" and state_json("ryw")["last_exit"]["reason"] == "kill"
        started = api.start("ryw", wait=False)
        assert state_json("ryw")["state"] == "running" and state_json("ryw")["qemu_pid"] == started["qemu_pid"]
        api.down("ryw", force=True)
        assert state_json("ryw")["state"] == "stopped" and state_json("ryw")["last_exit"]["reason"] == "down"
        api.up("ryw", wait=False)
        assert state_json("ryw")["state"] == "running"
    api.down("ryw", force=True)


# -- the supervisor killed at each step of `up` ----------------------------------------------------------------


@pytest.mark.parametrize("step", ["before-qemu", "after-exec", "after-cont"])
def test_supervisor_killed_during_up(home: Path, test_guest: Any, step: str) -> None:
    name = f"k9-{step}"
    profile = guest_profile(home, test_guest, name)
    up, supervisor = up_with_supervisor_stopped_at(home, profile, step)
    if step == "after-cont":
        # The RESUME is recorded before the supervisor stops at this step, so `up` returns on it; only then is
        # the supervisor killed (killed sooner, `up` would adopt QEMU itself: the after-exec case).
        out, err = up.communicate(timeout=120)
        os.kill(supervisor, signal.SIGKILL)
    else:
        os.kill(supervisor, signal.SIGKILL)
        out, err = up.communicate(timeout=120)
    paths = InstancePaths.for_name(name)
    if step == "before-qemu":
        # Nothing ran: up says how its supervisor ended, and no QEMU exists.
        assert up.returncode == 1 and "supervisor" in err and "Traceback" not in err
        assert no_qemu_of(home)
        assert api.up(profile, wait=False)["state"] == "running"  # a clean start afterwards
    else:
        # QEMU outlived its supervisor: up had it adopted and finished the start.
        assert up.returncode == 0, err
        result = json.loads(out)
        assert result["state"] == "running" and alive(result["qemu_pid"])
        assert api.status(name)["qmp_status"] == "running"
    listed = {r["name"]: r for r in api.ls()}[name]
    # after-cont: `up` already saw RESUME recorded and returned; the supervisor died afterwards, so the VM runs
    # unsupervised until the next command adopts it (below: up refuses, down adopts and stops it).
    assert listed["state"] == "running" and listed["supervised"] == (step != "after-cont")
    assert cli("up", str(profile)).returncode == 1  # already running: found, never started twice
    assert api.down(name, force=True)["state"] == "stopped"
    assert no_qemu_of(home)
    api.rm(name)
    assert not paths.root.exists()


def test_qemu_killed_as_the_guest_starts_is_restarted(home: Path, test_guest: Any) -> None:
    """QEMU killed right after its RESUME was recorded (up has returned), before the supervisor finished the
    start: a crash the restart policy acts on, never a "start-failed" left down (a CI run once hit this)."""
    profile = guest_profile(home, test_guest, "early", restart={"policy": "on-failure", "backoff": "0.1s"})
    up, supervisor = up_with_supervisor_stopped_at(home, profile, "on-resume")
    out, err = up.communicate(timeout=120)
    assert up.returncode == 0, err
    first = json.loads(out)
    assert first["state"] == "running"
    os.kill(first["qemu_pid"], signal.SIGKILL)
    poll("the killed QEMU to go", lambda: not alive(first["qemu_pid"]), 10)
    os.kill(supervisor, signal.SIGCONT)
    restarted = poll("a restarted QEMU", lambda: (s := api.status("early"))["state"] == "running"
                     and s["qemu_pid"] != first["qemu_pid"] and s, 60)
    assert restarted["restarts"] == 1 and restarted["last_exit"]["reason"] == "signal"
    assert api.down("early", force=True)["state"] == "stopped"
    assert no_qemu_of(home)


def test_a_restart_that_fails_is_retried(home: Path, test_guest: Any) -> None:
    """The restart policy starts QEMU again and that start fails (here its kernel is gone meanwhile; a port
    taken or a disk locked alike): retried with the backoff, not left down as a first start's failure is."""
    kernel = home / "vmlinuz"
    shutil.copy(test_guest.vmlinuz, kernel)
    profile = guest_profile(home, test_guest, "retry", restart={"policy": "on-failure", "backoff": "1s"})
    profile.write_text(profile.read_text().replace(str(test_guest.vmlinuz), str(kernel)))
    first = api.up(profile, wait=False)
    os.kill(first["supervisor_pid"], signal.SIGSTOP)  # the supervisor waits while the kernel goes
    os.kill(first["qemu_pid"], signal.SIGKILL)
    kernel.rename(home / "vmlinuz.away")
    os.kill(first["supervisor_pid"], signal.SIGCONT)
    failed = poll("the failed restart", lambda: (s := api.status("retry"))["last_exit"]
                  and s["last_exit"]["reason"] == "restart-failed" and s, 60)
    assert failed["state"] == "starting" and failed["restarts"] >= 1  # a next restart is scheduled
    (home / "vmlinuz.away").rename(kernel)
    restarted = poll("a restart that works", lambda: (s := api.status("retry"))["state"] == "running" and s, 60)
    assert restarted["restarts"] >= 2 and restarted["qemu_pid"] != first["qemu_pid"]
    assert api.down("retry", force=True)["state"] == "stopped"


def test_qemu_found_without_any_record(home: Path, test_guest: Any) -> None:
    """state.json lost (or never written): the pidfile still proves the QEMU, and every command finds it."""
    profile = guest_profile(home, test_guest, "norecord")
    first = api.up(profile, wait=False)
    paths = InstancePaths.for_name("norecord")
    os.kill(first["supervisor_pid"], signal.SIGKILL)
    poll("the supervisor to die", lambda: not alive(first["supervisor_pid"]), 10)
    paths.state.write_text("{trunc")  # a torn or corrupt record
    listed = {r["name"]: r for r in api.ls()}["norecord"]
    assert listed["qemu_pid"] == first["qemu_pid"]
    assert cli("up", str(profile)).returncode == 1  # never a second QEMU on the same folder
    assert alive(first["qemu_pid"]) and paths.qmp_socket.exists()  # ...nor its sockets removed
    refused = cli("rm", "norecord")
    assert refused.returncode == 1 and "running" in refused.stderr and paths.root.exists()
    assert api.down("norecord", force=True)["step"] in ("quit", "acpi")
    assert not alive(first["qemu_pid"])


def test_wrong_types_in_one_state_json_do_not_break_ls(home: Path, test_guest: Any) -> None:
    profile = guest_profile(home, test_guest, "good")
    api.up(profile, wait=False)
    bad = InstancePaths.for_name("bad")
    instance.create_dir(bad.root)
    bad.state.write_text(json.dumps({"state": "running", "qemu_pid": "abc", "restarts": []}))
    listed = cli("ls", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["good"]["state"] == "running"
    assert rows["bad"]["state"] == "unknown" and "state.json unreadable" in rows["bad"]["problem"]
    assert "unknown (state.json unreadable" in cli("ls").stdout
    api.down("good", force=True)


def test_interrupted_down_does_not_disable_the_restart_policy(home: Path, test_guest: Any) -> None:
    profile = guest_profile(home, test_guest, "intr", cmdline="qemuvm.noacpi",
                            restart={"policy": "on-failure", "backoff": "1s"})
    first = api.up(profile)
    paths = InstancePaths.for_name("intr")
    down = subprocess.Popen([sys.executable, "-m", "qemuvm", "down", "intr", "--timeout", "60s"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    poll("down's intent", lambda: instance.read_json(paths.stop_request), 30)
    down.send_signal(signal.SIGINT)  # Ctrl-C while it waits for ACPI (which this guest ignores)
    assert down.wait(30) == 130
    assert not instance.read_json(paths.stop_request)  # the intent went with the attempt
    os.kill(first["qemu_pid"], signal.SIGKILL)  # a real crash afterwards is restarted
    again = poll("the restart", lambda: (s := instance.read_state(paths)) and s.state == "running"
                 and s.qemu_pid != first["qemu_pid"] and s, 60)
    assert again.restarts == 1 and again.last_exit.reason == "signal"
    # And a stale intent left by a down that was killed outright (no chance to clean up) expires with it.
    instance.write_json_atomic(paths.stop_request, {"action": "down", "requester_pid": 1, "expires_at": 0,
                                                     "qemu_pid": again.qemu_pid})
    os.kill(again.qemu_pid, signal.SIGKILL)
    third = poll("the second restart", lambda: (s := instance.read_state(paths)) and s.restarts == 2
                 and s.state == "running" and s, 60)
    assert third.last_exit.reason == "signal"
    api.kill("intr")
    assert state_of("intr").last_exit.reason == "kill"


def test_down_with_a_stopped_supervisor_says_stopped(home: Path, test_guest: Any) -> None:
    profile = guest_profile(home, test_guest, "frozen")
    first = api.up(profile, wait=False)
    os.kill(first["supervisor_pid"], signal.SIGSTOP)
    try:
        result = cli("down", "frozen", "--force", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["state"] == "stopped"
        assert {r["name"]: r for r in api.ls()}["frozen"]["state"] != "running"
    finally:
        os.kill(first["supervisor_pid"], signal.SIGCONT)
    poll("the supervisor to record and exit", lambda: not alive(first["supervisor_pid"]), 30)
    assert state_json("frozen")["state"] == "stopped"
    kill_everything(home)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_never_freezes_the_state_or_blocks_a_stop(test_guest: Any, monkeypatch, short_tmp) -> None:
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="qf", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(home)], check=True)
    monkeypatch.setenv("QEMUVM_HOME", str(home))
    try:
        profile = guest_profile(short_tmp, test_guest, "full")
        api.up(profile, wait=False)
        with (home / "filler").open("wb") as filler, pytest.raises(OSError):  # fill every last block
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
        assert api.pause("full")["state"] == "paused"
        assert state_json("full")["state"] == "paused" and api.status("full")["state"] == "paused"
        assert api.resume("full")["state"] == "running" and state_json("full")["state"] == "running"
        done = cli("down", "full", "--force", "--json")
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
        assert json.loads(done.stdout)["state"] == "stopped" and state_json("full")["state"] == "stopped"
        # A start on the full disk is one sentence (it was a raw OSError from writing the stop-intent file).
        with pytest.raises(OSError), (home / "filler").open("ab", buffering=0) as filler:  # what down freed, too
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
        again = cli("start", "full", "--no-wait")
        assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr
        assert again.stderr.startswith("qemuvm: no space left on the device of") and again.stderr.count("\n") == 1
        assert state_json("full")["state"] == "stopped" and api.status("full")["qemu_pid"] is None
        assert cli("rm", "full").returncode == 0 and not (home / "full").exists()
    finally:
        kill_everything(home)
        subprocess.run(["umount", "-l", str(home)], check=False)
        home.rmdir()


def test_ssh_never_splits_a_home_with_spaces_quotes_or_percent(test_guest: Any, monkeypatch, short_tmp) -> None:
    home = short_tmp / 'my "VMs" 100%d'
    decoy = short_tmp / "my"  # what an unquoted UserKnownHostsFile would have written to
    decoy.write_text("untouched\n")
    monkeypatch.setenv("QEMUVM_HOME", str(home))
    profile = guest_profile(short_tmp, test_guest, "spaced", ssh={"identity": str(test_guest.key)})
    try:
        api.up(profile)
        done = cli("ssh", "spaced", "--", "echo", "hi")
        assert (done.returncode, done.stdout) == (0, "hi\n"), done.stderr
        assert "ssh-ed25519" in (home / "spaced" / "known_hosts").read_text()
        assert decoy.read_text() == "untouched\n"
        assert sorted(p.name for p in short_tmp.iterdir()) == sorted([home.name, "my", "spaced.yaml"])
    finally:
        kill_everything(home)


def test_a_chatty_guest_cannot_grow_serial_log_without_bound(home: Path, test_guest: Any) -> None:
    import socket

    profile = guest_profile(home, test_guest, "chatty", cmdline="qemuvm.shell", serial={"log_max": "64K"})
    api.up(profile)
    paths = InstancePaths.for_name("chatty")
    rotated = paths.serial_log.with_name("serial.log.1")
    # Type into the console and go: a connected client that does not read would hold the guest's output back.
    # Stay until the guest answers (QEMU drops what a client sent when it hangs up first).
    def type_in(text: bytes, answer: bytes) -> None:
        with socket.socket(socket.AF_UNIX) as console:
            console.connect(str(paths.serial_socket))
            console.settimeout(120)
            console.sendall(text)
            seen = b""
            while answer not in seen:
                chunk = console.recv(65536)
                assert chunk, "the console closed"
                seen = seen[-4096:] + chunk

    type_in(b"\nwhile :; do echo 0123456789abcdef0123456789abcdef0123456789abcdef; done\n", b"abcdef\r\n0123")
    poll("serial.log to be rotated", rotated.exists, 120)
    type_in(b"\x03\necho QUIET_\\NOW\n", b"QUIET_NOW")  # Ctrl-C: the loop ends
    poll("the guest to be quiet and serial.log within its cap again",
         lambda: "QUIET_NOW" in paths.serial_log.read_text(errors="replace")
         and paths.serial_log.stat().st_size <= 64 << 10, 120)
    assert rotated.stat().st_size == 32 << 10  # the newest half of the 64K cap
    assert state_json("chatty")["serial_offset"] <= paths.serial_log.stat().st_size
    logs = cli("logs", "chatty", "-n", "5")
    assert logs.returncode == 0 and "Traceback" not in logs.stderr
    assert api.down("chatty", force=True)["state"] == "stopped"
