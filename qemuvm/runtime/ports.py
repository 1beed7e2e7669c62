"""Host ports for a start: free ones for `host: 0` forwards and VNC `auto`, an SSH forward when none targets
ssh.port, fixed ones checked free -- and the ports other instances hold or are about to bind, so parallel
`up`s never pick the same one (they are recorded in each LaunchSpec under a home-wide lock)."""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Container, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemuvm.errors import OperationError, UsageError
from qemuvm.runtime import instance, records

if TYPE_CHECKING:
    from qemuvm.profile.model import Profile
    from qemuvm.qemu.compile import PortPlan

VNC_BASE = 5900


def bind_check(address: str, port: int, protocol: str = "tcp") -> bool:
    """True when `port` can be bound on `address` now (SO_REUSEADDR, as QEMU binds)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_port(address: str, protocol: str = "tcp", reserved: Container[int] = frozenset()) -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    while True:
        with socket.socket(family, kind) as sock:
            sock.bind((address or "0.0.0.0", 0))
            port = sock.getsockname()[1]
        if port not in reserved:
            return port


# A start whose supervisor.json is younger than this still holds its ports, even before QEMU binds them.
_RESERVATION_S = 120.0


def reserved_ports(home: Path | None, excluding: str) -> dict[int, str]:
    """Host ports other instances hold or are about to bind, each with the instance's name: those of every
    active instance, and of every start still under way (its supervisor.json is fresh). Lets parallel `up`s
    plan ports without waiting for each other's QEMU to bind them."""
    ports: dict[int, str] = {}
    now = time.time()
    for other in instance.list_instances(home):
        if other.name == excluding:
            continue
        try:
            fresh = now - other.supervisor_config.stat().st_mtime < _RESERVATION_S
        except OSError:
            continue
        if not fresh and not instance.is_active(instance.read_state(other)):
            continue
        try:
            spec = records.read_launch_spec(other)
        except UsageError:
            continue  # its own commands say what is wrong with it; it holds no port we can know of
        if spec is None:
            continue
        ports.update((int(f["host_port"]), other.name) for f in spec.forwards if f.get("host_port"))
        if (spec.vnc or {}).get("port"):
            ports[int(spec.vnc["port"])] = other.name
    return ports


def _held(port: int, reserved: Mapping[int, str]) -> str:
    """Why a fixed port cannot be had: the instance holding it (and the fix), or that something else binds it."""
    holder = reserved.get(port)
    if holder is None:
        return "is already in use"
    return (f"is held by instance {holder} (running, or started in the last {_RESERVATION_S:g} s); stop or "
            f"`qemuvm rm {holder}`, or choose another port")


def plan_ports(profile: Profile, reserved: Mapping[int, str] | None = None
               ) -> tuple[PortPlan, list[dict[str, Any]], dict[str, Any] | None]:
    """Host ports for this start: free ones for `host: 0` and VNC auto, an SSH forward when none targets
    ssh.port; fixed ports must be free. Returns the PortPlan, the forwards and VNC as state.json shows them."""
    from qemuvm.qemu.compile import PortPlan

    reserved = reserved or {}  # port -> the instance holding it (reserved_ports)

    planned: dict[tuple[int, int], int] = {}
    forwards: list[dict[str, Any]] = []
    ssh_covered = False
    user_nics = [i for i, nic in enumerate(profile.network) if nic.mode in ("user", "passt")]  # they forward
    for nic_index in user_nics:
        for number, fwd in enumerate(profile.network[nic_index].forwards):
            port = fwd.host
            if port == 0:
                port = planned[(nic_index, number)] = free_port(fwd.address, fwd.protocol, reserved)
            elif port in reserved or not bind_check(fwd.address, port, fwd.protocol):
                raise OperationError(f"host port {port} (network[{nic_index}].forwards[{number}]) "
                                     f"{_held(port, reserved)}")
            is_ssh = fwd.protocol == "tcp" and fwd.guest == profile.ssh.port
            ssh_covered = ssh_covered or is_ssh
            forwards.append({"nic": nic_index, "protocol": fwd.protocol, "host_address": fwd.address or "0.0.0.0",
                             "host_port": port, "guest_port": fwd.guest, "ssh": is_ssh})
    ssh_port = None
    if user_nics and not ssh_covered:
        ssh_port = free_port("127.0.0.1", reserved=reserved)
        forwards.append({"nic": user_nics[0], "protocol": "tcp", "host_address": "127.0.0.1", "host_port": ssh_port,
                         "guest_port": profile.ssh.port, "ssh": True})
    vnc_port, vnc = None, None
    if profile.display is not None and profile.display.vnc is not None:
        spec = profile.display.vnc
        if spec.port == "unix":
            vnc = {"unix": None}  # filled in by the caller, who knows the instance folder
        elif spec.port == "auto":
            vnc_port = next((p for p in range(VNC_BASE, VNC_BASE + 100)
                             if p not in reserved and bind_check(spec.listen, p)), None)
            if vnc_port is None:
                raise OperationError(f"no free VNC port from {VNC_BASE} to {VNC_BASE + 99} on {spec.listen}")
            vnc = {"listen": spec.listen, "port": vnc_port, "display": vnc_port - VNC_BASE}
        else:
            if int(spec.port) in reserved or not bind_check(spec.listen, int(spec.port)):
                raise OperationError(f"VNC port {spec.port} (display.vnc.port) "
                                     f"{_held(int(spec.port), reserved)}")
            vnc = {"listen": spec.listen, "port": int(spec.port), "display": int(spec.port) - VNC_BASE}
    return PortPlan(vnc_port=vnc_port, forwards=planned, ssh_host_port=ssh_port), forwards, vnc


def forward_address(forwards: Sequence[dict[str, Any]], guest_port: int) -> tuple[str, int] | None:
    """(host address, host port) of the first TCP forward to `guest_port`. Pure.

    Accepts the state.json spelling (`host_port`/`guest_port`/`host_address`) and the profile's
    (`host`/`guest`/`address`). An empty or wildcard bind address is reached through loopback: 127.0.0.1
    for 0.0.0.0 or empty, ::1 for :: (right whether or not the socket also takes IPv4).
    """
    for fwd in forwards:
        guest = fwd.get("guest_port", fwd.get("guest"))
        host = fwd.get("host_port", fwd.get("host"))
        if fwd.get("protocol", "tcp") != "tcp" or guest != guest_port or not host:
            continue
        address = fwd.get("host_address", fwd.get("address")) or "127.0.0.1"
        address = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address, address)
        return address, int(host)
    return None
