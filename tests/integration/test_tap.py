"""A `tap` NIC moves real packets: the VM runs inside a network namespace the test makes, on a tap device there
with the host side at 10.77.0.1/24; the guest (address set through its agent: no DHCP on this link) and the
namespace reach each other -- an SSH connection crosses the tap both ways. Nothing outside the namespace is
touched."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import netns
import pytest
from helpers import guest_profile

from qemuvm import api

pytestmark = [pytest.mark.integration, pytest.mark.skipif(not netns.usable(), reason="needs root and iproute2")]

BANNER = ("import socket, sys\n"
          "with socket.create_connection((sys.argv[1], 22), timeout=20) as s:\n"
          "    s.sendall(b'SSH-2.0-qemuvm-test\\r\\n'); print(s.recv(64).split(b'\\r\\n')[0].decode())\n")


def test_a_tap_nic_carries_traffic_inside_a_namespace(home: Path, test_guest: Any) -> None:
    profile = guest_profile(home, test_guest, "tapvm", guest_agent=True,
                            network=[{"mode": "tap", "ifname": "qvtap0"}], ready={"agent": True, "timeout": "180s"})
    with netns.namespace() as space:
        netns.add_tap(space, "qvtap0", "10.77.0.1/24")
        # qemuvm itself runs in the namespace, so its supervisor and QEMU do: the tap is theirs to open.
        up = netns.run(space, sys.executable, "-m", "qemuvm", "up", str(profile), check=False, timeout=300)
        assert up.returncode == 0, up.stderr
        configured = api.exec_("tapvm", ["sh", "-c", "ip addr add 10.77.0.2/24 dev eth0 && ip link set eth0 up"])
        assert configured.exit_code == 0, configured.stderr
        # Namespace -> guest: dropbear's banner over the tap.
        inward = netns.run(space, sys.executable, "-c", BANNER, "10.77.0.2", check=False, timeout=60)
        assert inward.stdout.startswith("SSH-2.0-dropbear"), inward.stderr
        # Guest -> namespace: the guest's ping reaches the host side of the tap.
        assert api.exec_("tapvm", ["ping", "-c", "1", "-W", "10", "10.77.0.1"]).exit_code == 0
        counters = netns.run(space, "cat", "/sys/class/net/qvtap0/statistics/rx_packets").stdout
        assert int(counters) > 0
        # `top` (in the namespace, where the tap is) shows the NIC's bytes, counted from the guest's side.
        shown = netns.run(space, sys.executable, "-m", "qemuvm", "top", "--once", "--json", timeout=120)
        [row] = [r for r in json.loads(shown.stdout) if r["name"] == "tapvm"]
        [nic] = row["net"]
        assert nic["id"] == "qvtap0" and nic["rx_bytes"] > 0 and nic["tx_bytes"] > 0, row["net"]
        api.down("tapvm", force=True)
    assert not Path("/sys/class/net/qvtap0").exists()  # it never existed outside the namespace
