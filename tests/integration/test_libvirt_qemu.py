"""Every libvirt domain of the corpus (tests/golden/libvirt/domains), imported, starts in the real QEMU:
the profile `qemuvm import libvirt` writes is compiled and started paused, with stand-in files for the
images and folders the domain names (paused.py). What import could not carry over is in its golden."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from golden_cases import HARDWARE_KVM, facts_for
from libvirt_cases import DOMAINS, imported_profile
from paused import start_paused

from qemuvm.qemu.compile import PortPlan

pytestmark = pytest.mark.integration



@pytest.mark.parametrize("path", DOMAINS, ids=[p.stem for p in DOMAINS])
def test_imported_domain_starts_in_qemu(path: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch,
                                        test_guest: object, request: pytest.FixtureRequest) -> None:
    # (test_guest: built before, as a direct-kernel domain boots its kernel, whichever worker runs this first)
    profile = imported_profile(path)
    # passt binds the host ports itself and takes no 0 (the supervisor plans them): give it free ones.
    plan = PortPlan(forwards={(nic_index, index): free_port() for nic_index, nic in enumerate(profile.network)
                              if nic.mode == "passt" for index in range(len(nic.forwards))})
    if profile.machine.arch == "aarch64" and profile.boot.kernel:
        request.getfixturevalue("test_guest_arm64")
    start_paused(profile, facts_for(profile, HARDWARE_KVM), plan, short_tmp, monkeypatch)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
