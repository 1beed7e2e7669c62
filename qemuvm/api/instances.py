"""Finding a facade verb's instance: its folder, its running QEMU (re-adopted first when its supervisor died), its
monitor. Shared by the verbs of api/__init__.py and api/guest.py."""

from __future__ import annotations

from pathlib import Path

from qemuvm.errors import NoSuchInstance, OperationError
from qemuvm.paths import InstancePaths
from qemuvm.runtime import instance, launch
from qemuvm.runtime.records import StateView


def instance_paths(name: str, home: Path | None = None) -> InstancePaths:
    """The folder of an existing instance, or a UsageError naming `ls`."""
    paths = InstancePaths.for_name(name, home)
    if not (paths.state.exists() or paths.profile.exists()):
        raise NoSuchInstance(f"no instance named {name} (see `qemuvm ls`)")
    return paths


def _running_qemu(paths: InstancePaths) -> StateView:
    """state.json of an instance whose QEMU runs (re-adopting it first when its supervisor died)."""
    state = launch.ensure_supervised(paths)
    if instance.proven_qemu(state) is None:
        raise OperationError(f"{paths.name} is not running (state {instance.effective_state(state).state})")
    assert state is not None
    return state


def monitor_socket(name: str, home: Path | None = None) -> Path:
    """The client QMP socket of a running instance (for screenshot, snapshot, ...); errors name the state."""
    paths = instance_paths(name, home)
    _running_qemu(paths)
    return paths.qmp_socket


def _monitor(paths: InstancePaths, timeout: float = 10.0, busy_timeout: float = 10.0):  # -> Monitor
    from qemuvm.control.client import Monitor

    return Monitor(paths.qmp_socket, timeout=timeout, busy_timeout=busy_timeout)
