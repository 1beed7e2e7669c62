"""Segment NICs (`mode: segment`): QEMU's side (a stream socket in the instance folder), the port helper the
supervisor runs for each (runtime/segment.py), and the guest's address on the kernel command line. Pure."""

from __future__ import annotations

from qemuvm.paths import InstancePaths
from qemuvm.profile.model import Profile


def socket(paths: InstancePaths, index: int) -> str:
    # Shorter than supervisor.sock, so the instance folder's socket-length check covers it.
    return str(paths.root / f"segment{index}.sock")


def folder(paths: InstancePaths, name: str) -> str:
    """The segment's folder: one per user's state home (a member socket per VM port in it)."""
    return str(paths.root.parent / ".segments" / name)


def helpers(profile: Profile, paths: InstancePaths, python: str) -> list[dict[str, str | list[str] | None]]:
    """A port per segment NIC (the fields of runtime.records.Helper); `python` runs it (`-S`, as the supervisor)."""
    return [{"name": f"segment{index}", "what": f"network[{index}] (segment {nic.segment})",
             "argv": [python, "-S", "-m", "qemuvm.runtime.segment", socket(paths, index),
                      folder(paths, nic.segment or ""), f"{profile.name}.{index}"],
             "socket": socket(paths, index), "log": str(paths.root / f"segment{index}.log"), "readonly_source": None}
            for index, nic in enumerate(profile.network) if nic.mode == "segment"]


def kernel_params(profile: Profile) -> list[str]:
    """qemuvm.ip=ethN:CIDR for each segment NIC with an address (the test guest's init applies them; NIC N is
    ethN in a guest that names its NICs in order)."""
    return [f"qemuvm.ip=eth{index}:{nic.address}" for index, nic in enumerate(profile.network)
            if nic.mode == "segment" and nic.address]
