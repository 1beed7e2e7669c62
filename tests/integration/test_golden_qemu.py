"""Every valid golden profile's argv is accepted by the real QEMU: start it paused (-S), ask QMP for the
status, quit (paused.py). A golden that QEMU rejects fails here with QEMU's stderr."""

from __future__ import annotations

from pathlib import Path

import pytest
from golden_cases import GOLDEN, PROFILES, Case, facts_for
from paused import start_paused

from qemuvm.profile.validate import load_and_validate

pytestmark = pytest.mark.integration

VALID = [p for p in PROFILES if not p.stem.startswith("err-")]



@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_qemu_accepts_golden(path: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch, test_guest: object,
                             request: pytest.FixtureRequest) -> None:
    # (test_guest: built before, as a direct-kernel golden boots its kernel, whichever worker runs this first)
    monkeypatch.chdir(GOLDEN)
    case = Case.read(path)
    profile = load_and_validate(str(path.relative_to(GOLDEN)))
    if profile.machine.arch == "aarch64" and profile.boot.kernel:
        request.getfixturevalue("test_guest_arm64")
    start_paused(profile, facts_for(profile, case.host), case.ports, short_tmp, monkeypatch)
