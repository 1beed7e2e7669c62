"""`qemuvm up a.yaml b.yaml` and `up --count N`: several VMs from one process, each with its own result; every
profile is validated before any VM starts, and one VM that fails leaves the others running."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import cli, guest_profile

from qemuvm import api

pytestmark = pytest.mark.integration


def test_a_count_and_a_second_profile_start_together_and_each_is_ready(home: Path, test_guest: Any,
                                                                        tmp_path: Path) -> None:
    web = guest_profile(tmp_path, test_guest, "web")
    db = guest_profile(tmp_path, test_guest, "db", machine={"accel": "tcg", "memory": "192M"})
    done = cli("up", str(web), "--count", "2", "--json")
    assert done.returncode == 0, done.stderr
    started = json.loads(done.stdout)
    assert [r["name"] for r in started] == ["web-1", "web-2"]
    assert all(r["ready"] is True and r["state"] == "running" for r in started)
    assert len({r["qemu_pid"] for r in started}) == 2
    done = cli("up", str(db), str(tmp_path / "web.yaml"), "--name", "x")
    assert done.returncode == 2 and "give one profile with --name" in done.stderr
    done = cli("up", str(db))
    assert done.returncode == 0 and "db is running" in done.stdout
    listed = {row["name"]: row["state"] for row in api.ls()}
    assert listed == {"web-1": "running", "web-2": "running", "db": "running"}
    for name in listed:
        api.down(name, force=True)


def test_one_invalid_profile_starts_nothing(home: Path, test_guest: Any, tmp_path: Path) -> None:
    good = guest_profile(tmp_path, test_guest, "good")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmachine: {cpus: many}\n")
    done = cli("up", str(good), str(bad), "--no-wait")
    assert done.returncode == 2 and "bad.yaml:2" in done.stderr and "Traceback" not in done.stderr
    assert api.ls() == [] and not (home / "good").exists()


def test_a_vm_that_fails_to_start_leaves_the_others_running(home: Path, test_guest: Any, tmp_path: Path) -> None:
    good = guest_profile(tmp_path, test_guest, "fine")
    broken = guest_profile(tmp_path, test_guest, "broken", qemu={"extra_args": ["-device", "no-such-device"]})
    done = cli("up", str(good), str(broken), "--no-wait", "--json")
    assert done.returncode == 1, done.stderr
    results = {r["name"]: r for r in json.loads(done.stdout)}
    assert results["fine"]["state"] == "running"
    assert "broken failed to start" in results["broken"]["error"] and results["broken"]["exit_code"] == 1
    assert "qemuvm: broken failed to start" in done.stderr and "Traceback" not in done.stderr
    assert [row["name"] for row in api.ls()] == ["fine"]  # the failed first start left nothing
    api.down("fine", force=True)


def test_count_names_that_would_be_invalid_are_refused(home: Path, test_guest: Any, tmp_path: Path) -> None:
    long = guest_profile(tmp_path, test_guest, "n" * 62)
    done = cli("up", str(long), "--count", "12", "--no-wait")
    assert done.returncode == 2 and "give a shorter --name" in done.stderr
    done = cli("up", str(long), "--count", "101", "--no-wait")
    assert done.returncode == 2 and "allowed is 1 to 100" in done.stderr
    assert api.ls() == []


def test_a_long_lived_caller_collects_no_zombie_supervisors(home: Path, test_guest: Any, tmp_path: Path) -> None:
    """The pytest plugin and other in-process users start many VMs: each supervisor is reaped when it exits."""
    import psutil
    from helpers import poll

    profile = guest_profile(tmp_path, test_guest, "reaped")
    supervisor = api.up(str(profile), wait=False)["supervisor_pid"]
    api.down("reaped", force=True)

    def gone() -> bool:  # a zombie is still a process: only a reaped one is gone
        try:
            psutil.Process(supervisor).status()
        except psutil.NoSuchProcess:
            return True
        return False

    poll(f"supervisor {supervisor} reaped", gone, timeout=30)
