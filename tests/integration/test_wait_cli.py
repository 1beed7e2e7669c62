"""`qemuvm wait --for ...`: the condition syntax of the workflow issue, through the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import CI_SMOKE, cli, guest_overrides

from qemuvm.testing import vm

pytestmark = pytest.mark.integration


def test_wait_for_conditions(test_guest, qemuvm_home: Path) -> None:
    with vm(CI_SMOKE, wait=False, **guest_overrides(test_guest)) as guest:
        ok = cli("wait", guest.name, "--for", "serial:QEMUVM_GUEST_READY", "--for", "ssh", "--timeout", "120s")
        assert ok.returncode == 0, ok.stderr
        bad = cli("wait", guest.name, "--for", "port:http")
        assert bad.returncode == 2 and "expected serial:REGEX, ssh, port:N" in bad.stderr
        guest.qmp("quit")
        gone = cli("wait", guest.name, "--for", "shutdown", "--timeout", "30s")
        assert gone.returncode == 0, gone.stderr
        late = cli("wait", guest.name, "--for", "serial:NEVER_PRINTED", "--timeout", "60s")
        assert late.returncode == 1 and "Traceback" not in late.stderr
