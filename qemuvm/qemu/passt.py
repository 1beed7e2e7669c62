"""passt NICs (`mode: passt`): passt's command line, one helper per NIC that the supervisor runs before QEMU
(its socket, pidfile and log in the instance folder). Pure, like compile.

passt is user-mode networking in a separate, sandboxed process: the guest gets the host's addresses (IPv4 and
IPv6) by DHCP/NDP, and forwards are passt's `-t`/`-u` specs. QEMU 7.2 reaches it through `-netdev stream` on a
unix socket.
"""

from __future__ import annotations

from qemuvm.paths import InstancePaths
from qemuvm.profile.model import Nic, Profile
from qemuvm.qemu.facts import HostFacts


def socket(paths: InstancePaths, index: int) -> str:
    # Shorter than supervisor.sock, so the instance folder's socket-length check covers it.
    return str(paths.root / f"passt{index}.sock")


def _spec(address: str, host_port: int, guest_port: int) -> str:
    """passt's forward spec: [ADDRESS/]HOST_PORT:GUEST_PORT (no address: every host address)."""
    return f"{address}/{host_port}:{guest_port}" if address else f"{host_port}:{guest_port}"


def argv(nic: Nic, index: int, paths: InstancePaths, host: HostFacts, host_ports: dict[int, int],
         ssh: tuple[int, int] | None) -> list[str]:
    """passt in the foreground; `host_ports` are the planned host ports of forwards asking for 0; `ssh` is
    (host port, guest port) when the instance's SSH forward goes through this NIC."""
    assert host.passt is not None
    args = [host.passt, "--foreground", "--quiet", "--socket", socket(paths, index),
            "--pid", str(paths.root / f"passt{index}.pid")]
    if host.root:
        # As root, passt switches to nobody, who cannot enter the 0700 instance folder where its socket is.
        args += ["--runas", "0"]  # UID only: passt would rewrite a "0:0" in its argv (strtok), unproven then
    for number, fwd in enumerate(nic.forwards):
        port = host_ports.get(number, fwd.host) if fwd.host == 0 else fwd.host
        args += ["-t" if fwd.protocol == "tcp" else "-u", _spec(fwd.address, port, fwd.guest)]
    if ssh is not None:
        args += ["-t", _spec("127.0.0.1", *ssh)]
    return args


def helpers(profile: Profile, paths: InstancePaths, host: HostFacts, forwards: dict[tuple[int, int], int],
            ssh_host_port: int | None) -> list[dict[str, str | list[str] | None]]:
    """A passt per passt NIC (the fields of runtime.records.Helper). The SSH forward goes through the first
    NIC that forwards (user or passt), as compile decides."""
    first = next((i for i, nic in enumerate(profile.network) if nic.mode in ("user", "passt")), None)
    out: list[dict[str, str | list[str] | None]] = []
    for index, nic in enumerate(profile.network):
        if nic.mode != "passt":
            continue
        ssh = (ssh_host_port, profile.ssh.port) if ssh_host_port is not None and index == first else None
        ports = {number: port for (nic_index, number), port in forwards.items() if nic_index == index}
        out.append({"name": f"passt{index}", "what": f"network[{index}] (passt)",
                    "argv": argv(nic, index, paths, host, ports, ssh), "socket": socket(paths, index),
                    "log": str(paths.root / f"passt{index}.log"), "readonly_source": None})
    return out
