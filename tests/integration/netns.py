"""Network namespaces for tests that touch host networking: the host's own network is never changed, and
traffic goes only to addresses inside the namespace. Each namespace is removed on exit (its taps, bridges and
addresses with it); the suite's last check (tests/conftest.py) removes any that a killed run left."""

from __future__ import annotations

import contextlib
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
