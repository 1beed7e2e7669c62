"""`qemuvm define` (virsh define): a stopped instance, prepared (its disk created) with no QEMU; `ls` shows it
never started; a second define of the name is refused; `dumpprofile` prints what the start will run; `start`
boots it; `rm` undefines it (issue 17)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import cli, guest_profile

from qemuvm import api
from qemuvm.paths import InstancePaths
from qemuvm.runtime import instance

pytestmark = pytest.mark.integration


def test_define_then_start_then_rm(home: Path, test_guest: Any) -> None:
    profile = guest_profile(home, test_guest, "defvm", disks=[{"file": str(home / "data.qcow2"), "size": "64M"}])
    defined = cli("define", str(profile), "--json")
    assert defined.returncode == 0, defined.stderr
    assert json.loads(defined.stdout)["state"] == "stopped"
    paths = InstancePaths.for_name("defvm")
    assert (home / "data.qcow2").exists() and paths.profile.exists()  # prepared ...
    assert not paths.state.exists() and instance.scan_for_qemu(paths) is None  # ... and not started
    [row] = [r for r in json.loads(cli("ls", "--json").stdout) if r["name"] == "defvm"]
    assert row["state"] == "stopped" and row["started"] is False
    assert "defined, never started" in cli("ls").stdout

    again = cli("define", str(profile))
    assert again.returncode == 2 and "an instance named defvm exists" in again.stderr, again.stderr
    assert yaml.safe_load(cli("dumpprofile", "defvm").stdout)["name"] == "defvm"

    started = cli("start", "defvm", "--json")
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout)["ready"] is True
    assert [r["started"] for r in api.ls() if r["name"] == "defvm"] == [True]
    api.down("defvm", force=True)
    assert cli("rm", "defvm").returncode == 0
    assert not paths.root.exists()


def test_define_refuses_bad_input_and_leaves_nothing(home: Path, test_guest: Any) -> None:
    missing = cli("define", str(home / "nope.yaml"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    bad = guest_profile(home, test_guest, "badvm", machine={"accel": "tcg", "memory": "lots"})
    refused = cli("define", str(bad))
    assert refused.returncode == 2 and "machine.memory" in refused.stderr and "Traceback" not in refused.stderr
    assert not InstancePaths.for_name("badvm").root.exists()
    nodisk = guest_profile(home, test_guest, "nodisk", disks=[{"file": str(home / "absent.qcow2")}])
    failed = cli("define", str(nodisk))
    assert failed.returncode != 0 and "Traceback" not in failed.stderr, failed.stderr
    assert not InstancePaths.for_name("nodisk").root.exists()  # nothing half-created
