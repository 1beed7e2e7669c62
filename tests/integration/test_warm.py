"""`up --warm`: the first run boots the profile to ready and saves a template; every later run starts a clone
of it -- its own overlays, sockets and ports, the template's state restored. A clone's writes never reach the
template or the base image; profiles that cannot be saved are refused naming the field."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import CI_SMOKE, cli, guest_overrides, guest_profile, guest_sets

from qemuvm import api
from qemuvm.control import ssh as ssh_
from qemuvm.paths import InstancePaths
from qemuvm.runtime import template
from qemuvm.testing import overrides_to_sets

pytestmark = pytest.mark.integration
pytest_plugins = ["pytester"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _up_warm(name: str, guest: Any, **more: Any) -> dict[str, Any]:
    return api.up(str(CI_SMOKE), name=name, warm=True, overrides=overrides_to_sets({**guest_overrides(guest), **more}))


def _in_guest(name: str, command: str) -> str:
    done = ssh_.run(name, command, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_clones_are_pristine_and_never_write_the_template_or_the_base(home: Path, test_guest: Any) -> None:
    base = _sha256(test_guest.data_disk)
    first = _up_warm("warm-a", test_guest)
    made = first["template"]
    assert made["built"] is True and first["ready"] is True and made["cold_ready_after_s"] > 0
    folder = Path(made["folder"])
    frozen = {name: _sha256(folder / name) for name in ("disk0.qcow2", "saved.state")}
    assert all(f.stat().st_mode & 0o777 == (0o600 if f.name == template.HITS else 0o400) for f in folder.iterdir())
    _in_guest("warm-a", "echo a > /mnt/data/a.txt && echo a > /tmp/a.txt && sync")

    second = _up_warm("warm-b", test_guest)
    assert second["template"]["built"] is False and second["template"]["fingerprint"] == made["fingerprint"]
    assert second["ready"] is True and second["qemu_pid"] != first["qemu_pid"]
    assert second["forwards"][0]["host_port"] != first["forwards"][0]["host_port"]  # its own ports
    seen = _in_guest("warm-b", "ls /mnt/data /tmp; cat /mnt/data/marker.txt")
    assert "a.txt" not in seen and "QEMUVM_DATA_MARKER" in seen  # the template's disk, not a's writes
    _in_guest("warm-b", "echo b > /mnt/data/b.txt && sync")
    assert "b.txt" not in _in_guest("warm-a", "ls /mnt/data")
    paths_b = InstancePaths.for_name("warm-b")
    assert "QEMUVM_GUEST_READY" in paths_b.serial_log.read_text()  # its console history starts with the boot
    status = api.status("warm-b")
    assert status["template"] == made["fingerprint"] and status["clock_behind_s"] >= 0

    listed = api.templates()
    assert [t["fingerprint"] for t in listed] == [made["fingerprint"]]
    assert set(listed[0]["clones"]) == {"warm-a", "warm-b"} and listed[0]["source"] == str(CI_SMOKE)
    refused = cli("template", "rm", made["fingerprint"])
    assert refused.returncode == 2 and "warm-a" in refused.stderr and "Traceback" not in refused.stderr

    # A clone stays a clone: stopped and started again, it boots afresh from its own overlay.
    assert api.down("warm-b", force=True)["state"] == "stopped"
    again = api.start("warm-b")
    assert again["ready"] is True and "template" not in again
    assert _in_guest("warm-b", "cat /mnt/data/b.txt") == "b\n"
    assert api.status("warm-b")["template"] == made["fingerprint"]

    for name in ("warm-a", "warm-b"):
        api.down(name, force=True)
        api.rm(name)
    assert _sha256(test_guest.data_disk) == base
    assert {name: _sha256(folder / name) for name in frozen} == frozen
    removed = cli("template", "rm", made["fingerprint"])
    assert removed.returncode == 0, removed.stderr
    assert not folder.exists() and api.templates() == []
    assert not (folder.parent / f".{made['fingerprint']}.lock").exists()  # its lock goes with it


def test_what_cannot_be_saved_is_refused_naming_the_field(home: Path, test_guest: Any, tmp_path: Path) -> None:
    cases = {
        "shares": (["--set", f"shares=[{{source: {tmp_path}, tag: host}}]"], "shares: a guest with a host folder"),
        "disk": (["--set", "disks.0.ephemeral=false"], "disks[0]: clones share the template's disks"),
        "vfio": (["--set", "qemu.extra_args=[-device, 'vfio-pci,host=01:00.0']"], "qemu.extra_args: a host device"),
    }
    for label, (sets, expected) in cases.items():
        done = cli("up", str(CI_SMOKE), "--warm", "--name", f"no-{label}", *guest_sets(test_guest), *sets)
        assert done.returncode == 2, (label, done.stderr)
        assert expected in done.stderr and "start it without --warm" in done.stderr
        assert "Traceback" not in done.stderr
        assert not (home / f"no-{label}").exists()
    assert api.templates() == []


def test_a_template_that_never_gets_ready_leaves_nothing(home: Path, test_guest: Any, tmp_path: Path) -> None:
    profile = guest_profile(tmp_path, test_guest, "never", ready={"serial": "NEVER_PRINTED", "timeout": 3})
    done = cli("up", str(profile), "--warm")
    assert done.returncode != 0 and "NEVER_PRINTED" in done.stderr and "Traceback" not in done.stderr
    assert not (home / "never").exists()
    assert api.templates() == []
    assert not [p for p in template.templates_dir(home).iterdir() if not p.name.endswith(".lock")]


def test_an_existing_instance_is_never_replaced_by_a_clone(home: Path, test_guest: Any) -> None:
    api.up(str(CI_SMOKE), name="here", wait=False, overrides=overrides_to_sets(guest_overrides(test_guest)))
    done = cli("up", str(CI_SMOKE), "--warm", "--name", "here", *guest_sets(test_guest))
    assert done.returncode == 2 and "instance here exists" in done.stderr
    assert api.status("here")["state"] == "running"
    api.down("here", force=True)


def test_a_warm_plugin_suite_boots_once(pytester: pytest.Pytester, home: Path, test_guest: Any) -> None:
    """Five tests, each with a pristine clone: one template is made, and no test sees another's writes."""
    pytester.makepyfile(test_inner=textwrap.dedent(f"""
        import pytest

        PROFILE = {str(CI_SMOKE)!r}
        OVERRIDES = {guest_overrides(test_guest)!r}

        @pytest.mark.parametrize("number", range(5))
        def test_pristine(qemuvm_vm, number):
            guest = qemuvm_vm(PROFILE, warm=True, **OVERRIDES)
            listing = guest.ssh("ls /mnt/data", check=True).stdout.split()
            assert "marker.txt" in listing and not [f for f in listing if f.startswith("test-")]
            guest.ssh(f"echo {{number}} > /mnt/data/test-{{number}}.txt && sync", check=True)
    """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=900)
    result.assert_outcomes(passed=5)
    listed = api.templates()
    assert len(listed) == 1 and listed[0]["clones"] == []  # every clone was removed with its test
    assert api.ls() == []


def test_smoke_warm_runs_pass_from_one_template(home: Path, test_guest: Any) -> None:
    for run in range(2):
        done = cli("smoke", str(CI_SMOKE), "--warm", "--json", *guest_sets(test_guest))
        assert done.returncode == 0, (run, done.stderr)
        assert {case["status"] for case in json.loads(done.stdout)["cases"]} == {"passed"}
    assert len(api.templates()) == 1 and api.ls() == []


def test_a_damaged_template_is_one_sentence_and_no_clone_is_left(home: Path, test_guest: Any) -> None:
    made = _up_warm("dmg-a", test_guest)["template"]
    api.down("dmg-a", force=True)
    state = Path(made["folder"]) / "saved.state"
    state.chmod(0o600)
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2])  # truncated: caught by its recorded size, before QEMU starts
    done = cli("up", str(CI_SMOKE), "--warm", "--name", "dmg-b", *guest_sets(test_guest))
    assert done.returncode == 2 and f"template {made['fingerprint']} is damaged" in done.stderr
    assert f"qemuvm template rm {made['fingerprint']}" in done.stderr and not (home / "dmg-b").exists()
    state.write_bytes(data[:4096] + bytes(len(data) - 4096))  # the right size, nonsense after the header
    done = cli("up", str(CI_SMOKE), "--warm", "--name", "dmg-c", *guest_sets(test_guest))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"while loading the state of template {made['fingerprint']}" in done.stderr
    assert not (home / "dmg-c").exists()
    assert cli("template", "rm", made["fingerprint"], "--force").returncode == 0


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ssh_on(port: int, key: Path, command: str) -> str:
    """SSH to 127.0.0.1:PORT itself (not through qemuvm's lookup): proves which guest that port reaches."""
    import subprocess

    done = subprocess.run(["ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
                           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o",
                           "LogLevel=ERROR", "root@127.0.0.1", command], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_clones_with_their_own_forward_ports_share_one_template(home: Path, test_guest: Any) -> None:
    """A forward's host port is the host's: three clones, a port each (as parallel CI jobs have), one template,
    and each port reaches its own clone."""
    clones = {name: _free_port() for name in ("fw-a", "fw-b", "fw-c")}
    keys = set()
    for name, port in clones.items():
        started = _up_warm(name, test_guest, network=[{"mode": "user", "forwards": [f"tcp:127.0.0.1:{port}-:22"]}])
        keys.add(started["template"]["fingerprint"])
        assert started["template"]["built"] is (name == "fw-a"), started["template"]
        assert [f["host_port"] for f in started["forwards"]] == [port]
    assert len(keys) == 1
    for name, port in clones.items():  # pristine clones: each port's guest has only its own file
        assert _ssh_on(port, test_guest.key, f"ls /tmp; echo {name} > /tmp/who").split() == []
    for name, port in clones.items():
        assert _ssh_on(port, test_guest.key, "cat /tmp/who").strip() == name
    listed = api.templates()
    assert [t["hits"] for t in listed] == [3] and set(listed[0]["clones"]) == set(clones)
    shown = cli("template", "ls")
    assert shown.returncode == 0 and "hits" in shown.stdout
    for name in clones:
        api.down(name, force=True)
        api.rm(name)
