"""Proof, not a guess, of what a VM listens on: before the guest runs, the supervisor lists the sockets QEMU and
its helpers have bound (psutil) and refuses any beyond loopback that the profile did not ask for.

The argv check of `qemu.extra_args` (profile/validate.py) stays as the early, friendly message; but QEMU has
many spellings for a listener (`hostfwd=::PORT-:22`, `-netdev socket,listen=`, `-netdev stream,server=on`,
`-readconfig`, `-set`), so what counts is what the process really bound. Allowed beyond loopback: the forwards
and the VNC server the profile names with such an address (`up` records them in the LaunchSpec), or anything
when `qemu.allow_unsafe_args` is set. Imported by the supervisor: stdlib, psutil and runtime only.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Any

import psutil


def _loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def _wildcard(address: str) -> bool:
    return address in ("", "0.0.0.0", "::")


def stray(bound: Iterable[tuple[str, int, str]], allowed: Sequence[Sequence[Any]] | None) -> list[str]:
    """The sockets in `bound` ((address, port, protocol) listening or bound without a peer) that are beyond
    loopback and not allowed, as `ADDRESS:PORT/PROTOCOL`; `allowed` None allows all. Pure (table-tested)."""
    if allowed is None:
        return []
    permitted = {(str(address), int(port)) for address, port in allowed}
    found = []
    for address, port, protocol in bound:
        if _loopback(address):
            continue
        # A forward the profile bound to every address (0.0.0.0) covers the same port on ::, and vice versa.
        if (address, port) in permitted or (_wildcard(address) and any(
                _wildcard(a) and p == port for a, p in permitted)):
            continue
        shown = f"[{address}]" if ":" in address else address
        found.append(f"{shown}:{port}/{protocol}")
    return sorted(set(found))


def bound_by(pids: Iterable[int]) -> list[tuple[str, int, str]]:
    """What these processes listen on (TCP LISTEN) or have bound without a peer (UDP), as (address, port,
    protocol); a process that is gone adds nothing."""
    found = []
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        for conn in connections:
            if not conn.laddr:
                continue
            tcp = conn.type == socket.SOCK_STREAM
            if (tcp and conn.status == psutil.CONN_LISTEN) or (not tcp and not conn.raddr):
                found.append((conn.laddr.ip, conn.laddr.port, "tcp" if tcp else "udp"))
    return found


def refusal(pids: Iterable[int], allowed: Sequence[Sequence[Any]] | None) -> str | None:
    """The sentence that stops a start whose processes listen beyond loopback unasked, or None."""
    found = stray(bound_by(pids), allowed)
    if not found:
        return None
    return (f"QEMU or a helper listens on {', '.join(found)}, beyond loopback, and the profile asks for no such "
            "listener (a forward's or the VNC server's address does; qemu.allow_unsafe_args allows any); "
            "it was stopped before the guest ran")
