"""A repeat `up` of an unchanged profile reuses the last start's records (runtime/reuse.py): no profile models
are loaded, and the VM is the one the full path would start. Any change -- the profile file, `--set`, a port
taken meanwhile, a file the command line needs -- takes the full path again, with its checks and sentences."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import guest_profile

from qemuvm import api
from qemuvm.paths import InstancePaths

pytestmark = pytest.mark.integration

# `qemuvm ARGS` in a fresh interpreter that reports, after the command, whether the profile models were loaded.
_PROBE = """
import json, sys
from qemuvm.cli import main
sys.argv = ["qemuvm", *json.loads(sys.argv[1])]
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
loaded = sys.modules
print(json.dumps({"code": code, "models": "qemuvm.profile.model" in loaded, "pydantic": "pydantic" in loaded}))
"""


def _up(*args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(["up", *args, "--no-wait"])],
                          capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["stderr"] = done.stderr
    return report


def _argv(name: str) -> list[str]:
    return json.loads(InstancePaths.for_name(name).argv.read_text())


def test_a_repeat_up_loads_no_profile_and_starts_the_same_vm(home: Path, test_guest: Any, tmp_path: Path) -> None:
    profile = guest_profile(tmp_path, test_guest, "again")
    first = _up(str(profile))
    assert first["code"] == 0 and first["models"], first["stderr"]  # the full path, once
    before = api.status("again")
    api.down("again", force=True)
    again = _up(str(profile))
    assert again["code"] == 0, again["stderr"]
    assert again["models"] is False and again["pydantic"] is False
    after = api.status("again")
    assert after["state"] == "running" and after["qemu_pid"] != before["qemu_pid"]
    assert after["forwards"] == before["forwards"]  # the same records: the same ssh port
    api.down("again", force=True)
    by_name = _up("again")  # `up NAME` (= start NAME) of the stopped instance: reused too
    assert by_name["code"] == 0 and by_name["models"] is False, by_name["stderr"]
    api.down("again", force=True)


def test_a_changed_profile_or_set_takes_the_full_path(home: Path, test_guest: Any, tmp_path: Path) -> None:
    profile = guest_profile(tmp_path, test_guest, "changed")
    assert _up(str(profile))["code"] == 0
    api.down("changed", force=True)
    data = yaml.safe_load(profile.read_text())
    data["machine"]["memory"] = "320M"
    profile.write_text(yaml.safe_dump(data))
    edited = _up(str(profile))
    assert edited["code"] == 0 and edited["models"] is True, edited["stderr"]
    assert "320M" in _argv("changed")
    api.down("changed", force=True)
    overridden = _up(str(profile), "--set", "machine.memory=288M")
    assert overridden["code"] == 0 and overridden["models"] is True and "288M" in _argv("changed")
    api.down("changed", force=True)
    plain = _up(str(profile))  # without the --set again: another invocation, the full path
    assert plain["code"] == 0 and plain["models"] is True and "320M" in _argv("changed")
    api.down("changed", force=True)


def test_a_port_taken_meanwhile_gets_a_new_one(home: Path, test_guest: Any, tmp_path: Path) -> None:
    profile = guest_profile(tmp_path, test_guest, "porty", network=[{"mode": "user"}])
    assert _up(str(profile))["code"] == 0
    ssh_port = api.status("porty")["forwards"][0]["host_port"]
    api.down("porty", force=True)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ssh_port))
        squatter.listen()
        moved = _up(str(profile))
        assert moved["code"] == 0 and moved["models"] is True, moved["stderr"]
        assert api.status("porty")["forwards"][0]["host_port"] != ssh_port
    api.down("porty", force=True)


def test_a_missing_disk_gets_the_full_path_and_its_sentence(home: Path, test_guest: Any, tmp_path: Path) -> None:
    disk = tmp_path / "data.qcow2"
    disk.write_bytes(test_guest.data_disk.read_bytes())
    profile = guest_profile(tmp_path, test_guest, "diskless", disks=[{"file": str(disk), "ephemeral": True}])
    assert _up(str(profile))["code"] == 0
    api.down("diskless", force=True)
    disk.unlink()
    gone = _up(str(profile))
    assert gone["code"] == 2 and gone["models"] is True
    assert f"disks[0].file: {disk} does not exist" in gone["stderr"] and "Traceback" not in gone["stderr"]


def test_boot_once_is_never_reused_from_its_first_start(home: Path, test_guest: Any, tmp_path: Path) -> None:
    profile = guest_profile(tmp_path, test_guest, "oncer", boot={
        "kernel": str(test_guest.vmlinuz), "initrd": str(test_guest.initrd), "cmdline": "console=ttyS0",
        "once": "cdrom"}, disks=[{"file": str(test_guest.outdir / "guest.iso"), "media": "cdrom"}])
    assert _up(str(profile))["code"] == 0
    assert not (home / "oncer" / "reuse.json").exists()  # its argv boots the cdrom: only for the first start
    api.down("oncer", force=True)
    second = _up(str(profile))
    assert second["code"] == 0 and second["models"] is True  # the full path, without boot.once
    api.down("oncer", force=True)
    third = _up(str(profile))
    assert third["code"] == 0 and third["models"] is False  # from here on, reused
    api.down("oncer", force=True)
