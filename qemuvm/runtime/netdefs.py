"""NAT network definitions that outlive a reboot (virsh net-define with net-autostart).

A network's live parts -- its bridge, nftables table, dnsmasq and their record under /run -- are gone after a
reboot, as libvirt's are. Its definition (name and subnet, records.NetworkDefinition) is kept in
`$QEMUVM_NETWORK_DEFS` (default /var/lib/qemuvm/networks, 0700; tests point it elsewhere): `network create`
writes it, `network rm` removes it, and a VM that joins a defined network that is not up -- the first `start`
after a reboot, an autostart unit's -- makes it again first, the way libvirt's autostarted networks come up
before its guests.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from qemuvm.errors import UsageError
from qemuvm.runtime import instance, networks, records


def defs_dir() -> Path:
    return Path(os.environ.get("QEMUVM_NETWORK_DEFS") or "/var/lib/qemuvm/networks")


def _path(name: str) -> Path:
    networks.check_name(name)
    return defs_dir() / f"{name}.json"


def definition(name: str) -> records.NetworkDefinition | None:
    return records.read_network_definition(_path(name))


def define(name: str, subnet: str) -> None:
    instance.create_dir(defs_dir())
    records.write_network_definition(_path(name), records.NetworkDefinition(name, subnet, time.time()))


def undefine(name: str) -> bool:
    """Forget the definition; whether there was one."""
    try:
        _path(name).unlink()
    except FileNotFoundError:
        return False
    return True


def inactive() -> list[tuple[str, records.NetworkDefinition | UsageError]]:
    """The defined networks that are not up (no live record), by name: after a reboot, every one; a definition
    that cannot be read is listed with why (never hidden, never the whole listing's end)."""
    if not defs_dir().is_dir():
        return []
    found: list[tuple[str, records.NetworkDefinition | UsageError]] = []
    for path in sorted(defs_dir().glob("*.json")):
        try:
            defined = records.read_network_definition(path)
            if defined is not None and networks.read(defined.name) is None:
                found.append((defined.name, defined))
        except UsageError as exc:
            found.append((path.stem, exc))
    return found


def activate(name: str) -> bool:
    """Bring defined network `name` up when it is not (no record, or a record whose bridge is gone: the host
    rebooted); whether it was made. A network that was never defined is left to `up`'s own sentence."""
    defined = definition(name)
    if defined is None:
        return False
    record = networks.read(name)
    if record is not None and networks.link_exists(record.bridge):
        return False
    if record is not None:  # a stale record (its bridge gone): clear what is left of it first
        networks.remove(name, force=True)
    networks.create(name, defined.subnet)
    return True
