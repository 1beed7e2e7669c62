"""qemuvm's NAT network (`qemuvm network create`) and the bridge mode through qemu-bridge-helper carry real
traffic. Everything runs inside network namespaces the test makes: namespace `host` plays the host (its
bridge, nftables table and dnsmasq are the network's), and namespace `world` plays what lies beyond the host's
uplink (a veth pair, 203.0.113.1 <-> 203.0.113.2). Nothing outside those namespaces is touched, and traffic
goes only to addresses inside them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import netns
import pytest
from helpers import alive, guest_profile, poll

from qemuvm import api

pytestmark = [pytest.mark.integration, pytest.mark.skipif(not netns.usable(), reason="needs root and iproute2")]

BANNER = ("import socket, sys\n"
          "with socket.create_connection((sys.argv[1], 22), timeout=20) as s:\n"
          "    s.sendall(b'SSH-2.0-qemuvm-test\\r\\n'); print(s.recv(64).split(b'\\r\\n')[0].decode())\n")
# One TCP connection accepted in `world`: prints the port, then the address the connection came from.
LISTENER = ("import socket\n"
            "with socket.create_server(('203.0.113.2', 0)) as server:\n"
            "    server.settimeout(120); print(server.getsockname()[1], flush=True)\n"
            "    peer, address = server.accept(); print(address[0], peer.recv(16).decode().strip(), flush=True)\n")


def _qemuvm(space: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI inside `space`, so its supervisor, QEMU and dnsmasq live there too."""
    return netns.run(space, sys.executable, "-m", "qemuvm", *args, check=False, timeout=300)


def _nat_vm(home: Path, guest: Any, name: str, network: str) -> Path:
    return guest_profile(home, guest, name, guest_agent=True, ssh={"identity": str(guest.key)},
                         network=[{"mode": "bridge", "network": network}])


def _leased(name: str) -> str | None:
    [nic] = api.status(name)["addresses"]
    return nic["address"]


def _ping(name: str, address: str) -> int:
    return api.exec_(name, ["ping", "-c", "1", "-W", "10", address]).exit_code


def test_two_vms_on_a_nat_network(home: Path, test_guest: Any, short_tmp: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QEMUVM_NETWORKS", str(short_tmp / "networks"))
    with netns.namespace() as host, netns.namespace() as world:
        netns.add_veth(host, "qvup0", "203.0.113.1/24", world, "qvup1", "203.0.113.2/24")
        forwarding = netns.run(host, "cat", "/proc/sys/net/ipv4/ip_forward").stdout
        made = _qemuvm(host, "network", "create", "t", "--json")
        assert made.returncode == 0, made.stderr
        network = json.loads(made.stdout)
        assert (network["subnet"], network["gateway"], network["state"]) == ("192.168.122.0/24", "192.168.122.1",
                                                                            "active")
        # A subnet that overlaps a host route (one through the uplink) is refused, and nothing is made.
        netns.run(host, "ip", "route", "add", "10.99.0.0/16", "via", "203.0.113.2")
        clash = _qemuvm(host, "network", "create", "u", "--subnet", "10.99.1.0/24")
        assert clash.returncode == 2 and "overlaps the host route 10.99.0.0/16" in clash.stderr, clash.stderr
        assert "qvbr-u" not in netns.run(host, "ip", "-o", "link").stdout
        # A VM on a network that is not there: one sentence with the fix, nothing started.
        missing = _qemuvm(host, "up", str(_nat_vm(home, test_guest, "lost", "nope")))
        assert missing.returncode == 2 and "qemuvm network create nope" in missing.stderr, missing.stderr
        assert missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr

        for name in ("nat1", "nat2"):
            up = _qemuvm(host, "up", str(_nat_vm(home, test_guest, name, "t")))
            assert up.returncode == 0, up.stderr
        # Both guests asked dnsmasq for an address at boot: the leases are in `status`.
        first, second = (poll(f"a DHCP lease for {name}", lambda n=name: _leased(n), timeout=120)
                         for name in ("nat1", "nat2"))
        assert first != second and {first.rsplit(".", 1)[0], second.rsplit(".", 1)[0]} == {"192.168.122"}
        shown = json.loads(_qemuvm(host, "network", "status", "t", "--json").stdout)
        assert sorted(lease["address"] for lease in shown["leases"]) == sorted([first, second])
        assert len(shown["attached"]) == 2 and shown["problems"] == []

        # VM to VM and VM to the gateway (the host's bridge address).
        assert _ping("nat1", second) == 0
        assert _ping("nat2", first) == 0
        assert _ping("nat1", "192.168.122.1") == 0
        # The host reaches a guest at its leased address: dropbear's banner.
        inward = netns.run(host, sys.executable, "-c", BANNER, second, check=False, timeout=60)
        assert inward.stdout.startswith("SSH-2.0-dropbear"), inward.stderr
        # `qemuvm ssh` needs no forward: it goes to the leased address.
        ssh = _qemuvm(host, "ssh", "nat1", "--", "echo", "over-the-bridge")
        assert ssh.returncode == 0 and ssh.stdout.strip() == "over-the-bridge", ssh.stderr

        # Beyond the bridge, through NAT: `world` sees the connection come from the host's uplink address.
        with subprocess.Popen(["ip", "netns", "exec", world, sys.executable, "-c", LISTENER],
                              stdout=subprocess.PIPE, text=True) as listener:
            assert listener.stdout is not None
            port = listener.stdout.readline().strip()
            sent = api.exec_("nat1", ["sh", "-c", f"echo through-nat | nc -w 10 203.0.113.2 {port}"])
            seen = listener.stdout.readline().split()
            listener.wait(timeout=30)
        assert sent.exit_code == 0, sent.stderr
        assert seen == ["203.0.113.1", "through-nat"]

        # `top` counts the taps' bytes from the guests' side.
        top = json.loads(_qemuvm(host, "top", "--once", "--json").stdout)
        for row in (r for r in top if r["name"] in ("nat1", "nat2")):
            [nic] = row["net"]
            assert nic["mode"] == "tap" and nic["rx_bytes"] > 0 and nic["tx_bytes"] > 0, row["net"]

        # In use: rm refuses; once the VMs are down, rm removes exactly what create made.
        busy = _qemuvm(host, "network", "rm", "t")
        assert busy.returncode == 2 and "in use by 2 VM NIC(s)" in busy.stderr, busy.stderr
        assert _qemuvm(host, "down", "nat1").returncode == 0
        healthy = json.loads(_qemuvm(host, "status", "nat2", "--json").stdout)
        assert (healthy["problem"], healthy["problems"]) == (None, [])
        # Removed by force under a running VM: its status names what it lost (it said nothing was wrong).
        forced = _qemuvm(host, "network", "rm", "t", "--force")
        assert forced.returncode == 0, forced.stderr
        lost = json.loads(_qemuvm(host, "status", "nat2", "--json").stdout)
        assert lost["state"] == "running" and len(lost["problems"]) == 1, lost["problems"]
        assert "network t is gone (removed while the VM ran)" in lost["problem"]
        shown = _qemuvm(host, "status", "nat2")
        assert "problem" in shown.stdout and "network t is gone" in shown.stdout, shown.stdout
        assert _qemuvm(host, "down", "nat2").returncode == 0
        made = _qemuvm(host, "network", "create", "t", "--json")  # made again: the rest checks a plain rm
        assert made.returncode == 0, made.stderr
        network = json.loads(made.stdout)
        links = netns.run(host, "ip", "-o", "link").stdout
        assert "qvt" not in links  # QEMU's taps went with it
        removed = _qemuvm(host, "network", "rm", "t")
        assert removed.returncode == 0, removed.stderr
        assert "qvbr-t" not in netns.run(host, "ip", "-o", "link").stdout
        assert "qemuvm-t" not in netns.run(host, "nft", "list", "tables").stdout
        assert not alive(network["dnsmasq_pid"])
        assert not (short_tmp / "networks" / "t").exists()
        assert netns.run(host, "cat", "/proc/sys/net/ipv4/ip_forward").stdout == forwarding  # as it was


def test_a_bridge_nic_through_qemu_bridge_helper(home: Path, test_guest: Any) -> None:
    profile = guest_profile(home, test_guest, "brvm", guest_agent=True,
                            network=[{"mode": "bridge", "bridge": "qvbr0"}])
    with netns.namespace() as space, netns.bridge_acl(space, ["qvbr0"]):
        netns.add_bridge(space, "qvbr0", "10.78.0.1/24")
        up = _qemuvm(space, "up", str(profile))
        assert up.returncode == 0, up.stderr
        # The helper put QEMU's tap on the bridge.
        assert len(netns.run(space, "ls", "/sys/class/net/qvbr0/brif").stdout.split()) == 1
        configured = api.exec_("brvm", ["sh", "-c", "ip addr add 10.78.0.2/24 dev eth0 && ip link set eth0 up"])
        assert configured.exit_code == 0, configured.stderr
        assert _ping("brvm", "10.78.0.1") == 0
        inward = netns.run(space, sys.executable, "-c", BANNER, "10.78.0.2", check=False, timeout=60)
        assert inward.stdout.startswith("SSH-2.0-dropbear"), inward.stderr
        assert _qemuvm(space, "down", "brvm").returncode == 0
        assert netns.run(space, "ls", "/sys/class/net/qvbr0/brif").stdout.split() == []


def test_forwarding_stays_on_for_a_bridge_that_appeared_since(home: Path, short_tmp: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The last network turns IPv4 forwarding off only when nothing else may rely on it: a bridge that is not
    a qemuvm network's (docker0, virbr0) came up since, so it stays on."""
    monkeypatch.setenv("QEMUVM_NETWORKS", str(short_tmp / "networks"))
    with netns.namespace() as host:
        # A new namespace takes the host's value (net.core.devconf_inherit_init_net=0): start from off.
        netns.run(host, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward")
        assert netns.run(host, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"
        made = _qemuvm(host, "network", "create", "f")
        assert made.returncode == 0, made.stderr
        assert netns.run(host, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
        netns.run(host, "ip", "link", "add", "docker0", "type", "bridge")
        removed = _qemuvm(host, "network", "rm", "f")
        assert removed.returncode == 0, removed.stderr
        assert netns.run(host, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
        netns.run(host, "ip", "link", "del", "docker0")


def test_a_defined_network_comes_back_after_a_reboot_with_its_vm(home: Path, test_guest: Any, short_tmp: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Network records live in /run and the bridge does not outlive a reboot, so the autostart unit's
    `qemuvm start` failed at boot (issue 30). `network create` keeps a definition; the first VM that joins a
    defined network that is not up makes it again, as libvirt's autostarted networks come up before its guests."""
    runtime, defs = short_tmp / "run", short_tmp / "defs"
    monkeypatch.setenv("QEMUVM_NETWORKS", str(runtime))
    monkeypatch.setenv("QEMUVM_NETWORK_DEFS", str(defs))
    monkeypatch.setenv("QEMUVM_SYSTEMD_DIR", str(short_tmp / "units"))
    with netns.namespace() as host:
        made = _qemuvm(host, "network", "create", "p", "--subnet", "10.77.0.0/24", "--json")
        assert made.returncode == 0, made.stderr
        assert json.loads((defs / "p.json").read_text())["subnet"] == "10.77.0.0/24"
        assert (defs / "p.json").stat().st_mode & 0o777 == 0o600 and defs.stat().st_mode & 0o777 == 0o700
        assert _qemuvm(host, "define", str(_nat_vm(home, test_guest, "boots", "p"))).returncode == 0
        enabled = _qemuvm(host, "autostart", "boots")  # (units in a folder of the test's: QEMUVM_SYSTEMD_DIR)
        assert enabled.returncode == 0, enabled.stderr

        # The reboot: /run is empty, the bridge, its nftables table and dnsmasq are gone.
        network = json.loads(made.stdout)
        netns.run(host, "kill", str(network["dnsmasq_pid"]))
        poll("dnsmasq to end", lambda: not alive(network["dnsmasq_pid"]), 30)
        netns.run(host, "ip", "link", "del", network["bridge"])
        netns.run(host, "nft", "delete", "table", "ip", network["nft_table"])
        subprocess.run(["rm", "-rf", str(runtime)], check=True)
        [listed] = json.loads(_qemuvm(host, "network", "ls", "--json").stdout)
        assert (listed["name"], listed["state"], listed["subnet"]) == ("p", "inactive", "10.77.0.0/24")

        started = _qemuvm(host, "start", "boots")  # what the unit runs at boot
        assert started.returncode == 0, started.stderr
        assert poll("a DHCP lease on the network made again", lambda: _leased("boots"), timeout=120) \
            .startswith("10.77.0.")
        [listed] = json.loads(_qemuvm(host, "network", "ls", "--json").stdout)
        assert listed["state"] == "active" and len(listed["attached"]) == 1
        assert _qemuvm(host, "down", "boots").returncode == 0
        assert _qemuvm(host, "rm", "boots").returncode == 0
        assert _qemuvm(host, "network", "rm", "p").returncode == 0
        assert not (defs / "p.json").exists() and json.loads(_qemuvm(host, "network", "ls", "--json").stdout) == []
        # A VM on a network that is neither up nor defined (removed since) cannot be set to start at boot.
        assert _qemuvm(host, "network", "create", "gone").returncode == 0
        assert _qemuvm(host, "define", str(_nat_vm(home, test_guest, "orphan", "gone"))).returncode == 0
        assert _qemuvm(host, "network", "rm", "gone").returncode == 0
        refused = _qemuvm(host, "autostart", "orphan")
        assert refused.returncode == 2 and "neither up nor defined" in refused.stderr, refused.stderr
        assert _qemuvm(host, "rm", "orphan").returncode == 0
