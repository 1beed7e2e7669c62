"""Network namespaces for tests that touch host networking: the host's own network is never changed, and
traffic goes only to addresses inside the namespace. Each namespace is removed on exit (its taps, bridges and
addresses with it); the suite's last check (tests/conftest.py) removes any that a killed run left."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator


def prefix() -> str:
    """Every namespace this test session makes starts with this (another session's are never touched)."""
    return "qvn" + hashlib.sha256(os.environ.get("QEMUVM_TEST_SESSION", "").encode()).hexdigest()[:4]


def usable() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def run(namespace: str, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """argv inside `namespace`."""
    return subprocess.run(["ip", "netns", "exec", namespace, *argv], capture_output=True, text=True,
                          timeout=timeout, check=check)


@contextlib.contextmanager
def namespace() -> Iterator[str]:
    name = f"{prefix()}{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        run(name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def add_tap(namespace: str, name: str, address: str | None = None) -> None:
    """A tap device in `namespace` (up), with `address` on the host side of it."""
    run(namespace, "ip", "tuntap", "add", "dev", name, "mode", "tap")
    if address:
        run(namespace, "ip", "addr", "add", address, "dev", name)
    run(namespace, "ip", "link", "set", name, "up")


def add_veth(namespace: str, name: str, address: str, peer_namespace: str, peer: str, peer_address: str) -> None:
    """A veth pair between two namespaces, both ends addressed and up (a link from one to the other)."""
    run(namespace, "ip", "link", "add", name, "type", "veth", "peer", "name", peer, "netns", peer_namespace)
    for space, ifname, cidr in ((namespace, name, address), (peer_namespace, peer, peer_address)):
        run(space, "ip", "addr", "add", cidr, "dev", ifname)
        run(space, "ip", "link", "set", ifname, "up")


def add_bridge(namespace: str, name: str, address: str | None = None) -> None:
    run(namespace, "ip", "link", "add", name, "type", "bridge")
    if address:
        run(namespace, "ip", "addr", "add", address, "dev", name)
    run(namespace, "ip", "link", "set", name, "up")


@contextlib.contextmanager
def bridge_acl(namespace: str, bridges: list[str]) -> Iterator[None]:
    """qemu-bridge-helper's ACL (`allow BR` in /etc/qemu/bridge.conf) for processes in `namespace` only:
    `ip netns exec` bind-mounts /etc/netns/NAMESPACE/qemu over /etc/qemu, so the host's own file is never
    written. The mount needs /etc/qemu to exist; Debian does not ship it, so an empty one is made and removed."""
    # One at a time across parallel test workers: each may make /etc/qemu and remove it again.
    with open("/tmp/.qemuvm-test-bridge-acl.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        made_etc_qemu = not os.path.isdir("/etc/qemu")
        if made_etc_qemu:
            os.mkdir("/etc/qemu", 0o755)
        folder = f"/etc/netns/{namespace}"
        try:
            os.makedirs(f"{folder}/qemu", mode=0o755)
            with open(f"{folder}/qemu/bridge.conf", "w") as conf:
                conf.writelines(f"allow {bridge}\n" for bridge in bridges)
            yield
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.rmdir("/etc/netns")  # only when no other namespace has files there
            if made_etc_qemu:
                with contextlib.suppress(OSError):
                    os.rmdir("/etc/qemu")
