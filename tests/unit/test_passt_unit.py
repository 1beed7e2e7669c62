"""passt's command line from a profile (pure): its socket and pidfile in the instance folder, forwards as
passt specs on their addresses, the SSH forward on loopback through the first forwarding NIC, --runas for root."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from qemuvm.paths import InstancePaths
from qemuvm.profile.model import Profile
from qemuvm.qemu import passt
from qemuvm.qemu.facts import HostFacts

PATHS = InstancePaths(Path("/run/qemuvm-test/vm"))


def _profile(*nics: dict) -> Profile:
    return Profile(name="vm", network=list(nics))


def test_passt_helpers_carry_forwards_and_the_ssh_forward() -> None:
    profile = _profile({"mode": "passt", "forwards": ["tcp:127.0.0.1:8080-:80", {"host": 0, "guest": 53,
                                                                              "protocol": "udp"}]},
                       {"mode": "passt"})
    first, second = passt.helpers(profile, PATHS, HostFacts(), {(0, 1): 40001}, ssh_host_port=2222)
    assert first["name"] == "passt0" and first["what"] == "network[0] (passt)"
    assert first["argv"] == ["/usr/bin/passt", "--foreground", "--quiet", "--socket", "/run/qemuvm-test/vm/passt0.sock",
                             "--pid", "/run/qemuvm-test/vm/passt0.pid", "--runas", "0",
                             "-t", "127.0.0.1/8080:80", "-u", "127.0.0.1/40001:53", "-t", "127.0.0.1/2222:22"]
    assert "-t" not in second["argv"]  # the SSH forward goes through the first forwarding NIC only
    assert len(Path(first["socket"]).name) <= len(PATHS.supervisor_socket.name)  # the length check covers it


def test_a_user_nic_first_takes_the_ssh_forward_and_non_root_has_no_runas() -> None:
    profile = _profile({"mode": "user"}, {"mode": "passt", "forwards": [{"host": 9000, "guest": 90, "address": ""}]})
    [helper] = passt.helpers(profile, PATHS, replace(HostFacts(), root=False), {}, ssh_host_port=2222)
    assert helper["argv"][-2:] == ["-t", "9000:90"]  # no address: every host address, as the profile says
    assert "--runas" not in helper["argv"]
