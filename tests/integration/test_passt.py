"""passt NICs on the test guest: passt runs as a supervised helper (socket, pidfile, log in the instance folder),
the guest gets its addresses from it (IPv4 and IPv6), SSH and a TCP forward go through it; passt killed under a
running guest is named by `status`, and adoption after a supervisor crash covers it; nothing is left behind."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
from helpers import alive, guest_profile, helper_pids, poll

from qemuvm import api
from qemuvm.paths import InstancePaths

pytestmark = [pytest.mark.integration, pytest.mark.skipif(shutil.which("passt") is None,
                                                          reason="needs passt (scripts/setup installs it)")]


def _profile(home: Path, guest: Any, name: str) -> Path:
    return guest_profile(home, guest, name, ssh={"identity": str(guest.key)},
                         network=[{"mode": "passt", "forwards": [{"host": 0, "guest": 8000}]}],
                         ready={"ssh": True, "timeout": "180s"}, shutdown={"timeout": "5s"})


def test_a_passt_nic_carries_ssh_and_forwards(home: Path, test_guest: Any) -> None:
    profile = _profile(home, test_guest, "pst")
    status = api.up(str(profile))
    assert status["ready"] is True  # ready: ssh, through passt's SSH forward
    folder = InstancePaths.for_name("pst").root
    assert stat.S_IMODE((folder / "passt0.sock").stat().st_mode) == 0o600 and (folder / "passt0.pid").exists()
    [helper] = api.status("pst")["helpers"]
    assert helper["running"] and helper["what"] == "network[0] (passt)"
    # The guest's addresses come from passt (DHCP and NDP): IPv4 and IPv6 on eth0.
    shown = api.ssh("pst", "ip -o addr show dev eth0").stdout
    assert " inet " in shown and " inet6 " in shown, shown
    # A TCP forward: a second dropbear listens on guest port 8000; the host connects to the planned port on
    # loopback and gets its banner.
    forward = next(f for f in status["forwards"] if f["guest_port"] == 8000)
    assert forward["host_address"] == "127.0.0.1"
    assert api.ssh("pst", "dropbear -R -s -p 8000").returncode == 0

    def greeting() -> bytes | None:
        try:
            with socket.create_connection(("127.0.0.1", forward["host_port"]), timeout=10) as conn:
                # passt reaches out to the guest once the client has sent something (its listening sockets
                # defer the accept): speak first, as an SSH client does.
                conn.sendall(b"SSH-2.0-qemuvm-test\r\n")
                return conn.recv(64) or None
        except OSError:
            return None
    assert poll("the forwarded guest port to answer", greeting, 60).startswith(b"SSH-2.0-dropbear")

    # passt killed under the running guest: status names the NIC at once; down still works.
    os.kill(helper["pid"], signal.SIGKILL)
    poll("passt to die", lambda: not alive(helper["pid"]), 10)
    [gone] = api.status("pst")["helpers"]
    assert "network[0] (passt) is gone" in gone["gone"]
    assert api.down("pst")["state"] == "stopped"
    assert helper_pids(home, "passt") == []


def test_adoption_covers_passt(home: Path, test_guest: Any) -> None:
    profile = _profile(home, test_guest, "pstadopt")
    first = api.up(str(profile))
    [helper] = api.status("pstadopt")["helpers"]
    os.kill(first["supervisor_pid"], signal.SIGKILL)
    poll("the supervisor to die", lambda: not alive(first["supervisor_pid"]), 10)
    adopted = api.supervise("pstadopt")
    [again] = adopted["helpers"]
    assert again["pid"] == helper["pid"] and again["running"]
    assert api.ssh("pstadopt", "echo still").stdout == "still\n"  # the network through it goes on
    assert api.down("pstadopt", force=True)["state"] == "stopped"
    assert helper_pids(home, "passt") == []  # stopped by the adopting supervisor after QEMU
