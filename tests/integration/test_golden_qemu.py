"""Every valid golden profile's argv is accepted by the real QEMU: start it paused (-S), ask QMP for the
status, quit (paused.py). A golden that QEMU rejects fails here with QEMU's stderr."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from golden_cases import GOLDEN, PROFILES, Case
from paused import start_paused

from qemuvm.profile.validate import load_and_validate

pytestmark = pytest.mark.integration

VALID = [p for p in PROFILES if not p.stem.startswith("err-")]


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="qg", dir="/tmp"))  # short: socket paths max 107 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_qemu_accepts_golden(path: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(GOLDEN)
    case = Case.read(path)
    profile = load_and_validate(str(path.relative_to(GOLDEN)))
    start_paused(profile, case.host, case.ports, scratch, monkeypatch)
