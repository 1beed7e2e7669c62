"""VM-to-VM without root: three test guests on one segment (`mode: segment`, addresses from the profile) ping each
other and reach each other's SSH; a fourth on another segment sees none of them. Frames travel only through unix
sockets in the user's state folder (runtime/segment.py)."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from helpers import guest_profile

from qemuvm import api

pytestmark = pytest.mark.integration


def _on_segment(home: Path, guest: Any, name: str, segment: str, address: str) -> Path:
    return guest_profile(home, guest, name, ssh={"identity": str(guest.key)},
                         network=[{"mode": "user"}, {"mode": "segment", "segment": segment, "address": address}])


def _ping(name: str, address: str) -> int:
    return api.ssh(name, f"ping -c 2 -W 10 {address} >/dev/null", timeout=120).returncode


def test_three_vms_on_a_segment_reach_each_other_and_no_one_else(home: Path, test_guest: Any) -> None:
    members = {"seg1": "10.10.0.1", "seg2": "10.10.0.2", "seg3": "10.10.0.3"}
    for name, address in members.items():
        api.up(str(_on_segment(home, test_guest, name, "lab", f"{address}/24")))
    api.up(str(_on_segment(home, test_guest, "loner", "elsewhere", "10.10.0.9/24")))
    folder = home / ".segments" / "lab"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert sorted(p.name for p in folder.iterdir()) == ["seg1.1.sock", "seg2.1.sock", "seg3.1.sock"]

    for name in members:
        for other, address in members.items():
            if other != name:
                assert _ping(name, address) == 0, f"{name} cannot reach {other} at {address}"
    # An SSH connection across the segment: seg1 gets seg3's dropbear banner.
    banner = api.ssh("seg1", "echo | nc 10.10.0.3 22 | head -c 16", timeout=120).stdout
    assert banner.startswith("SSH-2.0-dropbear"), banner
    # Another segment's VM sees nothing, and nobody sees it.
    assert _ping("loner", "10.10.0.1") != 0
    assert _ping("seg2", "10.10.0.9") != 0

    for name in (*members, "loner"):
        api.down(name, force=True)
    assert list(folder.iterdir()) == []  # each port left the segment with its VM
