"""Segment NICs: the pure parts (QEMU's socket, the port's argv, the guest's address on the command line) and the
port itself, two of them on stand-in QEMU connections: a frame from one reaches the other, not itself; a member
whose port died is removed by the next sender; a port leaves the segment when its QEMU goes away."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from qemuvm.paths import InstancePaths
from qemuvm.profile.model import Profile
from qemuvm.qemu import segment


def test_segment_helpers_and_addresses() -> None:
    paths = InstancePaths(Path("/run/qv/vm"))
    profile = Profile(name="vm", network=[{"mode": "user"}, {"mode": "segment", "segment": "lab",
                                                             "address": "10.10.0.2/24"}])
    [port] = segment.helpers(profile, paths, "/usr/bin/python3")
    assert port["argv"] == ["/usr/bin/python3", "-S", "-m", "qemuvm.runtime.segment", "/run/qv/vm/segment1.sock",
                            "/run/qv/.segments/lab", "vm.1"]
    assert port["what"] == "network[1] (segment lab)"
    assert segment.kernel_params(profile) == ["qemuvm.ip=eth1:10.10.0.2/24"]


def _port(tmp_path: Path, member: str) -> tuple[subprocess.Popen[bytes], socket.socket]:
    listen = tmp_path / f"{member}.qemu.sock"
    proc = subprocess.Popen([sys.executable, "-m", "qemuvm.runtime.segment", str(listen), str(tmp_path / "seg"),
                             member])
    deadline = time.monotonic() + 10
    while not listen.exists():  # the port is up once it listens (as helpers.start waits)
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    qemu = socket.socket(socket.AF_UNIX)
    qemu.connect(str(listen))
    qemu.settimeout(10)
    return proc, qemu


def _frame(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def test_two_ports_carry_frames_and_clean_up(tmp_path: Path) -> None:
    first, qemu_a = _port(tmp_path, "a.1")
    second, qemu_b = _port(tmp_path, "b.1")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(tmp_path / "seg" / "dead.1.sock"))
    stale.close()  # a member whose port died without removing its socket
    try:
        qemu_a.sendall(_frame(b"\xff" * 6 + b"hello from a"))
        header = qemu_b.recv(4)
        assert qemu_b.recv(struct.unpack(">I", header)[0]) == b"\xff" * 6 + b"hello from a"
        assert not (tmp_path / "seg" / "dead.1.sock").exists()  # the sender removed it
        qemu_a.settimeout(0.3)
        try:
            echoed = qemu_a.recv(4)
        except TimeoutError:
            echoed = b""
        assert echoed == b""  # a port never sends a frame back to its own VM
    finally:
        qemu_a.close()
        first.wait(10)
        qemu_b.close()
        second.wait(10)
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == []
