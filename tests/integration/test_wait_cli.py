"""`qemuvm wait --for ...`: the condition syntax of the workflow issue, through the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qemuvm.testing import vm

pytestmark = pytest.mark.integration
CI_SMOKE = Path(__file__).resolve().parents[2] / "profiles" / "ci-smoke.yaml"


def qemuvm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qemuvm", *args], capture_output=True, text=True, timeout=180,
                          check=False)


def test_wait_for_conditions(test_guest, qemuvm_home: Path) -> None:
    overrides = {"boot.kernel": str(test_guest.vmlinuz), "boot.initrd": str(test_guest.initrd),
                 "disks.0.file": str(test_guest.data_disk), "ssh.identity": str(test_guest.key)}
    with vm(CI_SMOKE, wait=False, **overrides) as guest:
        ok = qemuvm("wait", guest.name, "--for", "serial:QEMUVM_GUEST_READY", "--for", "ssh", "--timeout", "120s")
        assert ok.returncode == 0, ok.stderr
        bad = qemuvm("wait", guest.name, "--for", "port:http")
        assert bad.returncode == 2 and "expected serial:REGEX, ssh, port:N" in bad.stderr
        guest.qmp("quit")
        gone = qemuvm("wait", guest.name, "--for", "shutdown", "--timeout", "30s")
        assert gone.returncode == 0, gone.stderr
        late = qemuvm("wait", guest.name, "--for", "serial:NEVER_PRINTED", "--timeout", "60s")
        assert late.returncode == 1 and "Traceback" not in late.stderr
