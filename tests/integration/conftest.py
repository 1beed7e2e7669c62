"""Fixtures that build the real test guests (scripts/build-test-guest, scripts/build-debian-image)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from qemuvm.runtime import instance

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `import rawqemu`


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


def poll(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Call `probe` every 100 ms until it returns something truthy; fail with `what` at the deadline.

    For conditions with no event to wait on (a pid gone, a file's content); the interval is a poll, not a
    synchronisation."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def alive(pid: int | None) -> bool:
    return instance.process_if_alive(pid, None) is not None


def kill_everything(home: Path) -> None:
    """Teardown: SIGKILL every supervisor, then every proven QEMU, of every instance below `home`."""
    for paths in instance.list_instances(home):
        supervisor = instance.live_supervisor(instance.read_state(paths))
        if supervisor is not None:
            supervisor.kill()
            poll("the supervisor to die", lambda s=supervisor: not alive(s.pid), 10)
        qemu = instance.proven_qemu(instance.read_state(paths))
        if qemu is not None:
            qemu.kill()
            poll("QEMU to die", lambda q=qemu: not alive(q.pid), 10)


@pytest.fixture
def home(qemuvm_home: Path) -> Iterator[Path]:
    yield qemuvm_home
    kill_everything(qemuvm_home)
