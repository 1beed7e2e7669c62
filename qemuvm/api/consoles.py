"""The facade's view of an instance's consoles for programs that relay them (`qemuvm web`): where its VNC server
and serial socket are, the VNC password, and the console lock that `qemuvm console` takes too."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemuvm.api.instances import _running_qemu, instance_paths
from qemuvm.errors import OperationError


@dataclass(frozen=True)
class VncAccess:
    endpoint: dict[str, Any]  # {"unix": PATH} or {"listen": ADDRESS, "port": N}
    password: str | None


@dataclass(frozen=True)
class SerialAccess:
    socket: Path
    lock: Path  # hold it (control/console.py exclusive) while attached


def vnc_access(name: str, *, home: Path | None = None) -> VncAccess:
    """The running instance's VNC server and the password it asks for (None without one)."""
    from qemuvm import files
    from qemuvm.runtime import records

    paths = instance_paths(name, home)
    state = _running_qemu(paths)
    if not state.vnc:
        raise OperationError(f"{name} has no VNC display (its profile has no display.vnc)")
    endpoint = dict(state.vnc)
    if "unix" in endpoint and not endpoint["unix"]:
        endpoint["unix"] = str(paths.vnc_socket)
    spec = records.read_launch_spec(paths)
    password = None
    if spec is not None and spec.vnc_password_file:
        lines = files.read_text(spec.vnc_password_file, "the VNC password file", 4096).splitlines()
        password = lines[0] if lines else None
    return VncAccess(endpoint, password)


def serial_access(name: str, *, home: Path | None = None) -> SerialAccess:
    paths = instance_paths(name, home)
    _running_qemu(paths)  # one sentence for an unknown or stopped instance
    return SerialAccess(paths.serial_socket, paths.console_lock)
