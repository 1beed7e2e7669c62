"""`qemuvm doctor` on this machine, and the host checks `up` makes before anything starts."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from helpers import cli

from qemuvm.qemu.memory import meminfo

pytestmark = pytest.mark.integration


def test_doctor_reports_the_host(qemuvm_home: Path) -> None:
    result = cli("doctor", "--json")
    assert result.returncode == 0, result.stderr
    checks = {check["name"]: check for check in json.loads(result.stdout)}
    assert checks["QEMU"]["status"] == "ok" and re.search(r"\b\d+\.\d+", checks["QEMU"]["detail"])
    assert checks["qemu-img"]["status"] == "ok"
    assert checks["state folder"]["status"] == "ok" and str(qemuvm_home) in checks["state folder"]["detail"]
    # The classic how-to's memory tuning is reported: KSM, transparent huge pages, huge pages.
    assert {"KSM", "transparent huge pages", "huge pages"} <= set(checks)
    if Path("/sys/module/kvm_pvm").exists():  # this machine's software KVM: auto must not pick it
        assert checks["KVM backend"]["status"] == "warn" and "software" in checks["KVM backend"]["detail"]


def test_doctor_without_qemu_exits_1_and_says_how_to_fix(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path), XDG_CACHE_HOME=str(tmp_path))
    result = cli("doctor", env=env)
    assert result.returncode == 1
    assert "apt-get install qemu-system-x86" in result.stdout and "apt-get install qemu-utils" in result.stdout
    assert "apt-get install qemu-system-arm" in result.stdout  # machine.arch aarch64's QEMU: information only


@pytest.mark.skipif(meminfo().get("HugePages_Free", 0) > 0, reason="this host has free huge pages")
def test_hugepages_without_free_pages_is_a_clear_error(qemuvm_home: Path, short_tmp: Path) -> None:
    profile = short_tmp / "huge.yaml"
    profile.write_text("machine: {accel: tcg, memory: 64M, hugepages: true}\nnetwork: []\n")
    result = cli("up", str(profile))
    assert result.returncode == 2
    assert "machine.hugepages: no free huge pages" in result.stderr and "sysctl vm.nr_hugepages=32" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (qemuvm_home / "huge").exists()  # nothing half-created
