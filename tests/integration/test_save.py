"""`qemuvm save` and `start` of a saved instance (virsh managedsave): the guest continues where it was --
its processes and tmpfs -- and a restore that would be wrong (a changed disk, a damaged state file) is refused
with one sentence, the saved state kept."""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import CI_SMOKE, alive, cli, guest_overrides

from qemuvm import api
from qemuvm.control import ssh as ssh_
from qemuvm.errors import OperationError
from qemuvm.paths import InstancePaths
from qemuvm.testing import overrides_to_sets

pytestmark = pytest.mark.integration


def _up(name: str, guest: Any, **more: Any) -> dict[str, Any]:
    return api.up(str(CI_SMOKE), name=name, overrides=overrides_to_sets({**guest_overrides(guest), **more}))


def _in_guest(name: str, command: str) -> str:
    done = ssh_.run(name, command, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_save_then_start_continues_the_guest(home: Path, test_guest: Any) -> None:
    first = _up("keep", test_guest)
    sleeper = _in_guest("keep", "sleep 100000 >/dev/null 2>&1 & echo $!").strip()
    _in_guest("keep", "echo kept-in-ram > /tmp/marker")  # the test guest's / is its initramfs: RAM only
    saved = api.save("keep")
    paths = InstancePaths.for_name("keep")
    assert saved["state"] == "saved" and saved["bytes"] == paths.saved_state.stat().st_size > 50 << 20
    assert stat.S_IMODE(paths.saved_state.stat().st_mode) == 0o600
    assert not alive(first["qemu_pid"])  # QEMU exited
    listed = {row["name"]: row for row in api.ls()}["keep"]
    assert listed["state"] == "saved" and listed["qemu_pid"] is None
    assert api.status("keep")["saved_state"]["file"] == str(paths.saved_state)

    restored = api.start("keep")
    assert restored["state"] == "running" and restored["qemu_pid"] != first["qemu_pid"]
    assert restored["ready"] is True  # ssh answered (the serial line of its boot was printed before the save)
    assert _in_guest("keep", f"kill -0 {sleeper} && echo alive") == "alive\n"  # the same process, still there
    assert _in_guest("keep", "cat /tmp/marker") == "kept-in-ram\n"
    assert not paths.saved_state.exists() and not paths.saved_info.exists()  # loaded once, never again
    status = api.status("keep")
    assert status["clock_behind_s"] is not None and status["clock_behind_s"] >= 0 and "saved_state" not in status
    assert api.down("keep")["state"] == "stopped"


def test_a_changed_disk_or_profile_refuses_the_restore(home: Path, test_guest: Any) -> None:
    disk = home / "data.qcow2"
    shutil.copy(test_guest.data_disk, disk)
    _up("moved", test_guest, **{"disks.0.file": str(disk), "disks.0.ephemeral": False})
    api.save("moved")
    paths = InstancePaths.for_name("moved")
    os.utime(disk)  # written since the save, as far as anyone can tell
    refused = cli("start", "moved")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"the disk {disk} was written or replaced since moved was saved" in refused.stderr
    assert "--discard-saved" in refused.stderr and paths.saved_state.exists()
    assert api.status("moved")["state"] == "saved"
    fresh = cli("start", "moved", "--discard-saved", "--no-wait")
    assert fresh.returncode == 0, fresh.stderr
    assert not paths.saved_state.exists() and api.status("moved")["state"] == "running"
    assert api.down("moved", force=True)["state"] == "stopped"


def test_a_damaged_state_file_is_one_sentence_and_kept(home: Path, test_guest: Any) -> None:
    _up("torn", test_guest)
    api.save("torn")
    paths = InstancePaths.for_name("torn")
    size = paths.saved_state.stat().st_size
    os.truncate(paths.saved_state, size // 3)  # a copy cut short, a disk error
    failed = cli("start", "torn")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert f"while loading {paths.saved_state}; the saved state is kept" in failed.stderr
    assert paths.saved_state.exists() and paths.saved_state.stat().st_size == size // 3
    listed = {row["name"]: row for row in api.ls()}["torn"]
    assert listed["state"] == "saved" and listed["qemu_pid"] is None and listed["supervised"] is False
    assert api.start("torn", discard_saved=True, wait=False)["state"] == "running"
    assert api.down("torn", force=True)["state"] == "stopped"


def test_qemu_killed_during_a_save_is_a_crash_never_a_saved_state(home: Path, test_guest: Any) -> None:
    """Whenever QEMU dies during `save`, the result is either a complete save or a crash on record (the
    policy's to restart) -- never `saved` with a state file missing or cut short."""
    import threading

    first = _up("cut", test_guest)
    paths = InstancePaths.for_name("cut")
    temporary = paths.root / ".saved.state.tmp"
    outcome: dict[str, Any] = {}

    def saving() -> None:
        try:
            outcome["saved"] = api.save("cut")
        except Exception as exc:  # the sentence is checked below
            outcome["error"] = exc

    worker = threading.Thread(target=saving)
    worker.start()
    deadline = time.monotonic() + 30
    while not temporary.exists() and worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.001)  # the moment the stream begins: a race on purpose, each outcome is checked
    os.kill(first["qemu_pid"], 9)
    worker.join(120)
    final = api.status("cut")
    print("outcome:", sorted(outcome))
    if "saved" in outcome:  # the save won the race
        assert final["state"] == "saved" and paths.saved_state.stat().st_size == outcome["saved"]["bytes"]
    else:
        assert "Traceback" not in str(outcome["error"]) and "\n" not in str(outcome["error"]).strip()
        assert final["state"] == "crashed" and final["last_exit"]["reason"] == "signal"
        assert not paths.saved_state.exists() and not temporary.exists()


def test_qemu_killed_after_the_stream_before_the_intent(home: Path, test_guest: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The latest moment a crash can still come: the stream is complete but the exit is not yet intended.
    `save` says nothing was saved, removes the stream, and status already shows the crash."""
    from qemuvm.control import save as saving

    first = _up("late", test_guest)

    def killed_first(*_args: Any, **_kwargs: Any) -> None:
        os.kill(first["qemu_pid"], 9)

    monkeypatch.setattr(saving.intent, "request", killed_first)
    with pytest.raises(OperationError, match=r"late's QEMU ended before the save was complete \(signal\); nothing"):
        api.save("late")
    paths = InstancePaths.for_name("late")
    assert not paths.saved_state.exists() and not (paths.root / ".saved.state.tmp").exists()
    final = api.status("late")
    assert final["state"] == "crashed" and final["last_exit"]["reason"] == "signal"


def test_a_save_and_a_down_never_overlap(home: Path, test_guest: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `down` during a `save` read the save's quit as its ACPI power-off and the save froze a guest powering off,
    both reporting success (issue 30). Held at its first step, the save keeps the down out: the down refuses in
    one sentence naming the save, the guest runs on untouched, and a down after the save says it was saved; a
    save while a down holds the instance is refused the same way."""
    import threading

    from qemuvm.control import save as saving
    from qemuvm.control import stop as stopping
    from qemuvm.runtime import intent

    monkeypatch.setattr(intent, "OPERATION_WAIT", 1.0)
    first = _up("racy", test_guest)
    entered, release = threading.Event(), threading.Event()
    real_migrate = saving._migrate_to

    async def held_migrate(*args: Any) -> Any:
        entered.set()
        assert release.wait(60)
        return await real_migrate(*args)

    monkeypatch.setattr(saving, "_migrate_to", held_migrate)
    results: dict[str, Any] = {}
    saver = threading.Thread(target=lambda: results.update(saved=api.save("racy")))
    saver.start()
    try:
        assert entered.wait(60)  # the save holds the instance, its stream not begun
        with pytest.raises(OperationError, match=r"racy: a save \(pid \d+\) is under way .* down again once"):
            api.down("racy")
        assert alive(first["qemu_pid"]) and api.status("racy")["state"] == "running"
    finally:
        release.set()
        saver.join(120)
    assert results["saved"]["state"] == "saved"
    after = api.down("racy")
    assert after["already_stopped"] and after["state"] == "saved"
    events = (home / "racy" / "events.jsonl").read_text()
    assert "guest-shutdown" not in events and "host-qmp-system-reset" not in events  # no power-off reached it

    # The other way round: a down holding the instance keeps a save out.
    started = api.start("racy", discard_saved=True)
    in_down, finish = threading.Event(), threading.Event()
    real_stop = stopping.stop

    def held_stop(*args: Any) -> Any:
        in_down.set()
        assert finish.wait(60)
        return real_stop(*args)

    monkeypatch.setattr(stopping, "stop", held_stop)
    downer = threading.Thread(target=lambda: results.update(down=api.down("racy", force=True)))
    downer.start()
    try:
        assert in_down.wait(60)
        with pytest.raises(OperationError, match=r"racy: a down \(pid \d+\) is under way .* save again once"):
            api.save("racy")
        assert alive(started["qemu_pid"])
    finally:
        finish.set()
        downer.join(120)
    assert results["down"]["state"] == "stopped" and not (home / "racy" / "saved.state").exists()
