"""Profile + instance paths + host facts -> the QEMU argv. Pure: no I/O, no subprocess, no clock.

(Interface stub: the implementation lands with issue 2.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qemuvm.profile.model import Profile
from qemuvm.qemu.host import HostFacts
from qemuvm.runtime.paths import InstancePaths


@dataclass(frozen=True)
class PortPlan:
    """Host ports chosen at launch time (prepare), so compile stays pure.

    Absent (the default), compile emits what the profile says: `port: auto` VNC and `host: 0`
    forwards are left for QEMU/launch to settle.
    """

    vnc_port: int | None = None  # TCP port for `display.vnc.port: auto`
    forwards: dict[tuple[int, int], int] = field(default_factory=dict)  # (nic, forward) -> host port for host: 0
    ssh_host_port: int | None = None  # an extra loopback forward to ssh.port when no forward covers it


@dataclass(frozen=True)
class Option:
    """One QEMU option (e.g. ("-m", "512")) and the profile fields that produced it (for --explain)."""

    args: tuple[str, ...]
    fields: tuple[str, ...] = ()


def compile_options(
    profile: Profile, paths: InstancePaths, host: HostFacts, ports: PortPlan | None = None
) -> list[Option]:
    raise NotImplementedError


def compile_argv(
    profile: Profile, paths: InstancePaths, host: HostFacts, ports: PortPlan | None = None
) -> list[str]:
    """The full command line: the QEMU binary, then every option in order."""
    argv = [profile.qemu.binary]
    for option in compile_options(profile, paths, host, ports):
        argv.extend(option.args)
    return argv
