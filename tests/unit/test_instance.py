"""The instance folder helpers: atomic state, the lock, liveness and identity checks, listing."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from qemuvm.errors import UsageError
from qemuvm.paths import InstancePaths
from qemuvm.runtime import atomic, instance
from qemuvm.runtime.records import StateView


def test_create_dir_is_private_and_never_changes_an_existing_folder(short_tmp: Path) -> None:
    target = short_tmp / "home" / "vm"
    instance.create_dir(target)
    assert target.stat().st_mode & 0o777 == 0o700 and target.parent.stat().st_mode & 0o777 == 0o700
    shared = short_tmp / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # QEMUVM_HOME=/tmp
    instance.create_dir(shared / "vm")
    assert shared.stat().st_mode & 0o7777 == 0o1777 and (shared / "vm").stat().st_mode & 0o777 == 0o700
    instance.check_home(shared)  # sticky: fine
    os.chmod(shared, 0o777)
    with pytest.raises(UsageError, match="writable by every user and has no sticky bit"):
        instance.check_home(shared)


def test_write_json_atomic_replaces_whole_file(short_tmp: Path) -> None:
    path = short_tmp / "state.json"
    instance.write_json_atomic(path, {"state": "running", "n": 1})
    instance.write_json_atomic(path, {"state": "stopped"})
    assert json.loads(path.read_text()) == {"state": "stopped"}
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in short_tmp.iterdir()] == ["state.json"]  # no temp file left
    assert instance.read_json(short_tmp / "missing.json") is None
    (short_tmp / "bad.json").write_text("{half")
    assert instance.read_json(short_tmp / "bad.json") is None


def test_lock_excludes_another_holder(short_tmp: Path) -> None:
    lock = short_tmp / "lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(instance.LockTimeout), instance.locked(lock, timeout=0.3):
            pass
        assert time.monotonic() - started >= 0.3
    finally:
        holder.stdin.close()
        holder.wait(10)
    with instance.locked(lock, timeout=None):  # free again once the holder is gone
        pass


def test_a_lock_its_holder_removes_is_taken_anew_by_the_waiter(short_tmp: Path) -> None:
    """`template rm` removes its lock file while holding it: the process that waited on it then locks the file
    at the path (a new one), so a third process cannot hold "the" lock at the same time on another inode."""
    import threading

    lock = short_tmp / ".key.lock"
    got: list[int] = []

    def opened() -> int:  # this process's descriptors on the lock file: the holder's, then the waiter's too
        return sum(os.path.realpath(f"/proc/self/fd/{fd}") == str(lock) for fd in os.listdir("/proc/self/fd"))

    with instance.locked(lock, timeout=None):
        waiter = threading.Thread(target=lambda: got.append(_lock_inode(lock)))
        waiter.start()
        deadline = time.monotonic() + 10
        while opened() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # a look at /proc until the waiter has the old file open (no event for that)
        assert opened() == 2
        lock.unlink()
    waiter.join(10)
    assert lock.exists() and got == [lock.stat().st_ino]  # (the old inode number may be reused)


def _lock_inode(lock: Path) -> int:
    with instance.locked(lock, timeout=10) as fd:
        return os.fstat(fd).st_ino


def test_process_identity_guards_pid_reuse() -> None:
    me = psutil.Process()
    assert instance.process_if_alive(me.pid, me.create_time()) is not None
    assert instance.process_if_alive(me.pid, me.create_time() - 5) is None
    state = StateView(qemu_pid=me.pid, qemu_start_time=me.create_time(), qemu_cmdline=me.cmdline())
    assert instance.proven_qemu(state) is not None
    assert instance.proven_qemu(dataclasses.replace(state, qemu_cmdline=["qemu-system-x86_64"])) is None
    assert instance.proven_qemu(dataclasses.replace(state, qemu_start_time=None)) is None


def test_zombie_is_not_alive() -> None:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert instance.process_if_alive(child.pid, None) is None
    finally:
        child.wait()


def test_effective_state_of_dead_processes_is_stale() -> None:
    dead = StateView(state="running", qemu_pid=2**22 + 1, qemu_start_time=1.0, supervisor_pid=2**22 + 2,
                     supervisor_start_time=1.0)
    view = instance.effective_state(dead)
    assert (view.state, view.supervised, view.stale, view.uptime_s) == ("crashed", False, True, None)
    assert dead.state == "running"  # the record read is not changed by the check
    assert instance.effective_state(None).state == "stopped"
    assert instance.effective_state(StateView(state="stopped")).state == "stopped"
    assert not instance.is_active(dead)


def test_list_instances_and_tail(short_tmp: Path) -> None:
    for name in ("b", "a"):
        paths = InstancePaths.for_name(name, short_tmp)
        instance.create_dir(paths.root)
        instance.write_json_atomic(paths.state, {"state": "stopped"})
    instance.create_dir(short_tmp / "not-an-instance")
    assert [p.name for p in instance.list_instances(short_tmp)] == ["a", "b"]
    assert instance.list_instances(short_tmp / "nowhere") == []
    log = short_tmp / "log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert instance.tail(log, 2) == "line 98\nline 99"
    assert instance.tail(short_tmp / "missing") == ""


@pytest.mark.parametrize(("status", "state"), [
    ("running", "running"), ("prelaunch", "starting"), ("shutdown", "shutdown"), ("paused", "paused"),
    ("io-error", "paused"), ("suspended", "paused"), ("inmigrate", "paused"), ("postmigrate", "paused"),
    ("finish-migrate", "paused"), ("restore-vm", "paused"), ("save-vm", "paused"), ("watchdog", "paused"),
    ("debug", "paused"), ("colo", "paused"), ("guest-panicked", "crashed"), ("internal-error", "crashed"),
    ("some-future-status", "paused"),
])
def test_qmp_status_map(status: str, state: str) -> None:
    assert instance.qmp_state(status) == state


@pytest.mark.parametrize(("record", "qemu_pid", "now", "requester_alive", "applies"), [
    (None, 10, 0.0, False, False),
    ({"qemu_pid": 10, "expires_at": 100.0}, 10, 50.0, False, True),  # young: applies
    ({"qemu_pid": 10, "expires_at": 100.0}, 10, 150.0, False, False),  # expired, requester gone
    ({"qemu_pid": 10, "expires_at": 100.0}, 10, 150.0, True, True),  # expired but the down still runs
    ({"qemu_pid": 10, "expires_at": 100.0}, 11, 50.0, True, False),  # meant for another QEMU
    ({"qemu_pid": 10}, 10, 50.0, False, False),  # no expiry, requester gone
    ({}, 10, 0.0, True, False),
])
def test_stop_intent_applies(record, qemu_pid, now, requester_alive, applies) -> None:
    from qemuvm.runtime import intent

    assert intent.applies(record, qemu_pid, now=now, requester_alive=requester_alive) is applies


def test_records_survive_a_full_disk_in_place(short_tmp: Path, monkeypatch) -> None:
    import errno

    path = short_tmp / "state.json"
    instance.write_json_atomic(path, {"state": "running"})
    assert path.stat().st_size % 4096 == 0  # padded: room to rewrite in place

    def no_space(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(atomic, "write_private_atomic", no_space)
    instance.write_json_atomic(path, {"state": "paused", "note": "x" * 100})
    assert instance.read_json(path) == {"state": "paused", "note": "x" * 100}
    with pytest.raises(OSError):
        instance.write_json_atomic(path, {"big": "y" * 9000})  # does not fit: the error stands


def test_events_jsonl_is_capped(short_tmp: Path) -> None:
    """A guest that makes an event a second (RTC_CHANGE) cannot grow events.jsonl without bound."""
    from qemuvm.runtime import records
    from qemuvm.runtime import supervision as supervisor

    paths = InstancePaths(short_tmp / "vm")
    paths.root.mkdir()
    records.write_launch_spec(paths, records.LaunchSpec(name="vm", argv=["qemu-system-x86_64"]))
    paths.events.write_bytes(b"{}\n" * (supervisor.EVENTS_MAX // 3 + 1))
    watcher = supervisor.Supervisor(paths)
    watcher.on_event({"event": "RTC_CHANGE", "data": {"offset": 1}, "timestamp": {"seconds": 1, "microseconds": 0}})
    assert paths.events.with_name("events.jsonl.1").stat().st_size > supervisor.EVENTS_MAX
    assert '"RTC_CHANGE"' in paths.events.read_text() and paths.events.stat().st_size < 200


def test_log_lines_quoted_in_a_message_carry_no_control_characters(tmp_path) -> None:
    """A guest (or a corrupt file) writes escape sequences into serial.log and qemu.log; the lines that errors
    quote show them as \\xNN, while `qemuvm logs` (raw) prints the log as it is."""
    from qemuvm.runtime import instance

    log = tmp_path / "qemu.log"
    log.write_bytes(b"boot\n\x1b]0;owned\x07\x1b[2J qemu: error\there\n\x00\x9b\n")
    quoted = instance.tail(log, 5)
    assert quoted == "boot\n\\x1b]0;owned\\x07\\x1b[2J qemu: error\there\n\\x00\ufffd"  # a stray byte: U+FFFD
    assert not any(ord(c) < 32 and c not in "\n\t" for c in quoted)
    assert "\x1b" in instance.tail(log, 5, raw=True)


def test_host_keys_of_the_last_boot_are_forgotten_even_a_second_before_it(short_tmp: Path) -> None:
    """psutil reports a process's start up to a second early (the kernel's boot time is whole seconds; here it
    is 0.9 s early): a known_hosts written in the last second before a restart looked newer than the new boot
    and kept the old key ("REMOTE HOST IDENTIFICATION HAS CHANGED", seen under load). QEMU's pidfile, written
    as it starts, dates the boot instead."""
    from qemuvm.control import ssh

    paths = InstancePaths(short_tmp)
    paths.known_hosts.write_text("[127.0.0.1]:2222 ssh-ed25519 AAAA-old-boot\n")
    now = time.time()
    os.utime(paths.known_hosts, (now - 0.2, now - 0.2))  # the old boot's last connection, 0.2 s before
    paths.pidfile.write_text("4242\n")  # the new QEMU starts now
    state = {"qemu_start_time": now - 0.9}  # what psutil says of it
    ssh.forget_stale_host_keys(paths, state)
    assert not paths.known_hosts.exists()
    # Within one boot the key stays (a key changing under a running guest is what the check is for).
    paths.known_hosts.write_text("[127.0.0.1]:2222 ssh-ed25519 AAAA-this-boot\n")
    ssh.forget_stale_host_keys(paths, state)
    assert paths.known_hosts.exists()
