"""`qemuvm top --once [--json]` against real VMs: two test guests running (TCG), one instance stopped."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from qemuvm import api
from qemuvm.control import wait as waiting
from qemuvm.errors import QemuvmError
from qemuvm.paths import InstancePaths

pytestmark = pytest.mark.integration

PROFILE = """\
machine: {{accel: tcg, memory: 128M, cpus: {cpus}}}
boot:
  kernel: {guest}/vmlinuz
  initrd: {guest}/initrd.gz
  cmdline: console=ttyS0
disks:
  - {{file: {guest}/data.qcow2, ephemeral: true}}
network: [{{mode: user}}]
"""


@pytest.fixture(scope="module")
def home(test_guest) -> Iterator[Path]:
    """One short QEMUVM_HOME for the module (booting guests is the slow part: both tests share them)."""
    path = Path(tempfile.mkdtemp(prefix="qv", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def vms(test_guest, home: Path) -> Iterator[dict[str, int]]:
    """Instances a (2 vCPUs) and b (1 vCPU) running with the guest READY (data disk mounted), c stopped."""
    cpus = {"a": 2, "b": 1, "c": 1}
    started: list[str] = []
    try:
        for name, count in cpus.items():
            profile = home / f".{name}.yaml"  # a dot folder entry is not an instance
            profile.write_text(PROFILE.format(cpus=count, guest=test_guest.outdir))
            api.up(profile, name=name, wait=False, home=home)
            started.append(name)
        api.down("c", force=True, home=home)
        for name in ("a", "b"):
            paths = InstancePaths.for_name(name, home)
            waiting.wait_for(paths, [waiting.serial_condition(paths, "QEMUVM_GUEST_READY", offset=0)], 120)
        yield cpus
    finally:
        for name in started:
            with contextlib.suppress(QemuvmError):
                api.down(name, force=True, home=home)


@pytest.fixture
def top(vms: dict[str, int], home: Path):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "qemuvm", "top", "--once", "--interval", "0.5", *args],
                              capture_output=True, text=True, timeout=60, env={**os.environ, "QEMUVM_HOME": str(home)})

    return run


def test_top_once_json_reports_running_and_stopped_instances(vms: dict[str, int], top) -> None:
    result = top("--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {"a", "b", "c"}
    for name in ("a", "b"):
        row = rows[name]
        assert row["state"] == "running"
        assert isinstance(row["cpu_percent"], float) and row["cpu_percent"] >= 0
        assert row["rss_bytes"] > 0
        assert row["vcpus"] == vms[name]
        assert len(row["vcpu_percent"]) == vms[name]
        assert row["uptime_s"] > 0
        assert row["memory_bytes"] == 128 << 20
        assert row["qmp"] == "ok"
        (disk,) = row["disks"]
        assert disk["rd_bytes"] > 0 and disk["rd_ops"] > 0  # the guest mounted /mnt/data
        assert row["net"] == [{"id": "net0", "mode": "user", "rx_bytes": None, "tx_bytes": None}]
    stopped = rows["c"]
    assert stopped["state"] == "stopped"
    assert stopped["pid"] is None and stopped["cpu_percent"] is None and stopped["rss_bytes"] is None
    assert stopped["disks"] == [] and stopped["vcpu_percent"] == []


def test_top_once_table_names_every_instance(top) -> None:
    result = top()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.split()[:2] == ["a", "running"] for line in lines if line.strip())
    assert any(line.split()[:2] == ["b", "running"] for line in lines if line.strip())
    assert any(line.split()[:2] == ["c", "stopped"] for line in lines if line.strip())
