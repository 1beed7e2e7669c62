"""Fixtures that build the real test guests (scripts/build-test-guest, scripts/build-debian-image)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, kill_everything


@dataclass(frozen=True)
class TestGuest:
    """Paths of a built busybox test guest (see scripts/guest/README.md)."""

    __test__ = False  # not a test class, despite the name

    outdir: Path
    vmlinuz: Path
    initrd: Path
    key: Path
    pubkey: Path
    data_disk: Path
    iso: Path
    manifest: dict[str, Any]

    @property
    def kernel_version(self) -> str:
        return self.manifest["kernel_version"]


@dataclass(frozen=True)
class DebianImage:
    outdir: Path
    disk: Path
    vmlinuz: Path
    initrd: Path
    manifest: dict[str, Any]

    @property
    def cmdline(self) -> str:
        return self.manifest["cmdline"]


def _outdir(env: str, default: str) -> Path:
    # Reuse <repo>/build/... (cached across runs) unless the environment names another folder.
    value = os.environ.get(env)
    return Path(value) if value else REPO / "build" / default


@pytest.fixture(scope="session")
def test_guest() -> TestGuest:
    outdir = _outdir("QEMUVM_TEST_GUEST_DIR", "guest")
    subprocess.run([str(REPO / "scripts" / "build-test-guest"), str(outdir)], check=True)
    manifest = json.loads((outdir / "manifest.json").read_text())
    return TestGuest(
        outdir=outdir,
        vmlinuz=outdir / "vmlinuz",
        initrd=outdir / "initrd.gz",
        key=outdir / "id_ed25519",
        pubkey=outdir / "id_ed25519.pub",
        data_disk=outdir / "data.qcow2",
        iso=outdir / "guest.iso",
        manifest=manifest,
    )


@pytest.fixture(scope="session")
def debian_image() -> DebianImage:
    outdir = _outdir("QEMUVM_DEBIAN_IMAGE_DIR", "debian")
    subprocess.run([str(REPO / "scripts" / "build-debian-image"), str(outdir)], check=True)
    manifest = json.loads((outdir / "manifest.json").read_text())
    return DebianImage(
        outdir=outdir,
        disk=outdir / "debian.qcow2",
        vmlinuz=outdir / "vmlinuz",
        initrd=outdir / "initrd.img",
        manifest=manifest,
    )


@pytest.fixture
def home(qemuvm_home: Path) -> Iterator[Path]:
    yield qemuvm_home
    kill_everything(qemuvm_home)
