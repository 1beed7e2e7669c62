"""Fixtures that build the real test guests (scripts/build-test-guest, scripts/build-debian-image)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import threading
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
    def generic_kernel(self) -> dict[str, str]:
        """`boot` for the image's generic kernel (it has 9p; the default cloud kernel does not)."""
        return {"kernel": str(self.outdir / "vmlinuz-generic"), "initrd": str(self.outdir / "initrd-generic.img"),
                "cmdline": self.cmdline}

    @property
    def cmdline(self) -> str:
        return self.manifest["cmdline"]

    def profile(self, name: str, **sections: Any) -> dict[str, Any]:
        """A profile of this image (TCG, 1 GiB, its own kernel and command line), plus `sections`."""
        arch = {"arch": "aarch64"} if self.manifest.get("arch") == "arm64" else {}
        return {"name": name, "machine": {"accel": "tcg", "memory": "1G", **arch},
                "boot": {"kernel": str(self.vmlinuz), "initrd": str(self.initrd), "cmdline": self.cmdline},
                "disks": [{"file": str(self.disk)}], **sections}


def _build(script: str, env: str, default: str, *options: str, output: Any = None, check: bool = True,
           first: bool = False) -> tuple[Path, dict[str, Any]]:
    """Run scripts/SCRIPT into its folder -- <repo>/build/DEFAULT, cached across runs, unless $ENV names
    another -- and return the folder and its manifest. `first`: ahead of the tests' own processes (root only)."""
    outdir = Path(os.environ.get(env) or REPO / "build" / default)
    outdir.parent.mkdir(parents=True, exist_ok=True)
    ahead = ["nice", "-n", "-5"] if first and os.geteuid() == 0 else []
    # One build at a time: parallel workers (pytest-xdist) each ask for the guest at their start.
    with open(outdir.parent / f".{outdir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = subprocess.run([*ahead, str(REPO / "scripts" / script), *options, str(outdir)], check=check,
                              stdout=output, stderr=subprocess.STDOUT if output is not None else None)
    if done.returncode != 0:  # (the background build: the fixture builds again, and fails where one sees it)
        return outdir, {}
    return outdir, json.loads((outdir / "manifest.json").read_text())


_PREBUILDS: list[threading.Thread] = []
# fixture -> scripts/build-debian-image's (environment variable, default folder, options)
DEBIAN_IMAGES: dict[str, tuple[str, str, str]] = {
    "debian_image": ("QEMUVM_DEBIAN_IMAGE_DIR", "debian", "--arch=amd64"),
    "debian_image_arm64": ("QEMUVM_DEBIAN_IMAGE_ARM64_DIR", "debian-arm64", "--arch=arm64"),
}


def pytest_collection_finish(session: pytest.Session) -> None:
    """The Debian image takes minutes to build on a fresh machine: when a collected test needs it, one worker
    (or the only process) starts that build at once, in the background, instead of a worker idling through it
    when its first such test comes. The fixture then waits on the same build lock and finds it done.

    The builds run ahead of the tests' guests (nice -5): on a loaded machine the arm64 build, every package
    configured under emulation, was the run's critical path (it and then its test ended the run, minutes after
    the other workers had little left)."""
    if os.environ.get("PYTEST_XDIST_WORKER", "gw0") != "gw0":
        return
    wanted = [image for image in DEBIAN_IMAGES
              if any(image in getattr(item, "fixturenames", ()) for item in session.items)]
    if not wanted:
        return
    def build(image: str) -> None:
        log = REPO / "build" / f"{DEBIAN_IMAGES[image][1]}-image-build.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:  # never into a test's captured output
            _build("build-debian-image", *DEBIAN_IMAGES[image], output=out, check=False, first=True)

    # Side by side: the arm64 one runs its second stage under emulation on one core for minutes; after the amd64
    # one it would be the last thing the run waits for.
    for image in wanted:
        thread = threading.Thread(target=build, args=(image,), name=f"{image}-build", daemon=True)
        thread.start()
        _PREBUILDS.append(thread)


def pytest_sessionfinish(session: pytest.Session) -> None:
    for thread in _PREBUILDS:  # never a build left running after the session
        thread.join()


def _guest(out: Path, manifest: dict[str, Any]) -> TestGuest:
    return TestGuest(outdir=out, vmlinuz=out / "vmlinuz", initrd=out / "initrd.gz", key=out / "id_ed25519",
                     pubkey=out / "id_ed25519.pub", data_disk=out / "data.qcow2", iso=out / "guest.iso",
                     manifest=manifest)


@pytest.fixture(scope="session")
def test_guest() -> TestGuest:
    return _guest(*_build("build-test-guest", "QEMUVM_TEST_GUEST_DIR", "guest"))


@pytest.fixture(scope="session")
def test_guest_9p() -> TestGuest:
    """The same guest on Debian's generic kernel, which has 9p (and boots ~6 s slower under TCG)."""
    return _guest(*_build("build-test-guest", "QEMUVM_TEST_GUEST_9P_DIR", "guest-generic", "--kernel", "generic"))


@pytest.fixture(scope="session")
def test_guest_arm64() -> TestGuest:
    """The same guest from Debian's arm64 packages (qemu-system-aarch64, UEFI; no guest.iso)."""
    return _guest(*_build("build-test-guest", "QEMUVM_TEST_GUEST_ARM64_DIR", "guest-arm64", "--arch", "arm64"))


def _debian_image(fixture: str) -> DebianImage:
    out, manifest = _build("build-debian-image", *DEBIAN_IMAGES[fixture])
    return DebianImage(outdir=out, disk=out / "debian.qcow2", vmlinuz=out / "vmlinuz", initrd=out / "initrd.img",
                       manifest=manifest)


@pytest.fixture(scope="session")
def debian_image() -> DebianImage:
    return _debian_image("debian_image")


@pytest.fixture(scope="session")
def debian_image_arm64() -> DebianImage:
    """The same image from Debian's arm64 packages (debootstrap's second stage under qemu-user-static)."""
    return _debian_image("debian_image_arm64")


@pytest.fixture
def home(qemuvm_home: Path) -> Iterator[Path]:
    yield qemuvm_home
    kill_everything(qemuvm_home)
