"""A repeat start without the profile: `up` of an instance whose profile and host are as they were at its last
start reuses that start's records (supervisor.json, argv.json, the prepared disks, overlays and seed), so it
imports neither the profile models nor compile -- pydantic and the models are most of a cold `up`.

The last full start writes reuse.json (records.ReuseRecord) beside its records: a key over what they were made
from (qemuvm's version, the profile source, `--set`, `--name`) with the identity (size, mtime, inode) of every
profile file it read (extends included) -- and the same for `up NAME`, which reads the instance's profile.yaml,
the resolved profile this start wrote --, a key over the host facts and the QEMU binary, the files its command
line needs, and `ready` as plain data; and HOME/.reuse/KEY names the instance that invocation started. A
repeat `up` computes both keys and stats the files: anything different -- or a port of the records taken
meanwhile, a saved state, a NAT network or a host folder (their checks need the profile), a first start with
boot.once -- and `up` takes the full path, which writes the records anew. Nothing here is ever an error: the
full path gives every sentence.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemuvm.errors import UsageError
from qemuvm.paths import InstancePaths
from qemuvm.runtime import instance, records
from qemuvm.runtime.restore import disk_print

if TYPE_CHECKING:
    from qemuvm.profile.model import Profile

INDEX = ".reuse"  # HOME/.reuse/KEY -> the instance name an invocation started (hidden: never an instance)


@dataclass
class Reusable:
    """A stopped instance whose last start's records fit this `up` as they are."""

    paths: InstancePaths
    spec: records.LaunchSpec
    ready: Any  # the profile's ready section as attributes (serial, port, ssh, agent, timeout), or None


def invocation_key(source: str | os.PathLike[str], overrides: tuple[str, ...] | list[str], name: str | None) -> str:
    from qemuvm import __version__

    text = str(source)
    where = f"file:{os.path.realpath(text)}" if os.path.isfile(text) else f"instance:{text}"
    blob = json.dumps([__version__, where, list(overrides), name])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def host_key(binary: str) -> str:
    """The host facts compile read and the QEMU binary's identity (probe caches both)."""
    from qemuvm.qemu import probe

    facts, qemu = probe.probe_with_binary(binary)
    blob = json.dumps([dataclasses.asdict(facts), dataclasses.asdict(qemu) if qemu else None], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _needs(profile: Profile, paths: InstancePaths) -> list[str]:
    """Files the command line names that must exist for it to start as it did."""
    files = [profile.boot.kernel, profile.boot.initrd]
    for index, disk in enumerate(profile.disks):
        files.append(disk.file)
        if disk.ephemeral:
            files.append(str(paths.overlay(index)))
    if profile.cloud_init is not None:
        files.append(str(paths.seed_iso))
    if profile.machine.firmware == "uefi":
        files.append(str(paths.uefi_vars))
    return [str(f) for f in files if f]


def remember(paths: InstancePaths, profile: Profile, source: str | os.PathLike[str] | None,
             overrides: tuple[str, ...] | list[str], name: str | None, first_boot: bool) -> None:
    """After a full start's records and files are written: what a repeat `up` needs to reuse them (or, where
    it must not, nothing: the record of an earlier start is removed)."""
    forget(paths)
    if source is None or not profile._sources:
        return
    if (first_boot and profile.boot.once) or profile.shares or any(nic.network for nic in profile.network):
        return
    prints = [disk_print(file) for file in profile._sources]
    saved = disk_print(str(paths.profile))  # written by this start: `up NAME` reads it
    if any(found is None for found in prints) or saved is None:
        return
    ready = profile.ready.model_dump(mode="json") if profile.ready is not None else None
    key = invocation_key(source, overrides, name)
    invocations = {key: [p for p in prints if p is not None], invocation_key(paths.name, (), None): [saved]}
    records.write_reuse(paths, records.ReuseRecord(
        invocations=invocations, host=host_key(profile.qemu.binary), needs=_needs(profile, paths), ready=ready,
        memory_mib=profile.machine.memory))
    if os.path.isfile(str(source)):
        index = paths.root.parent / INDEX
        instance.create_dir(index)
        instance.write_private_atomic(index / key, paths.name + "\n")


def forget(paths: InstancePaths) -> None:
    (paths.root / "reuse.json").unlink(missing_ok=True)


def _instance_paths(source: str, key: str, name: str | None, home: Path | None) -> InstancePaths | None:
    """The folder this invocation starts: the instance named, or the one the index says it started."""
    if not os.path.isfile(source):
        found: str | None = source if name in (None, source) else None
    elif name is not None:
        found = name
    else:
        from qemuvm.paths import state_home

        try:
            found = (Path(home or state_home()) / INDEX / key).read_text(errors="replace").strip()
        except OSError:
            found = None
    if not found:
        return None
    try:
        return InstancePaths.for_name(found, home)  # refuses what cannot be an instance folder
    except UsageError:
        return None


def find(source: str | os.PathLike[str], overrides: tuple[str, ...] | list[str], name: str | None,
         home: Path | None) -> Reusable | None:
    """The stopped instance this `up` would start, when its last start's records fit unchanged; else None."""
    key = invocation_key(source, overrides, name)
    paths = _instance_paths(str(source), key, name, home)
    if paths is None:
        return None
    record = records.read_reuse(paths)
    if record is None or key not in record.invocations or paths.saved_state.exists():
        return None
    if any(disk_print(p.path) != p for p in record.invocations[key]) or not all(map(os.path.exists, record.needs)):
        return None
    try:
        spec = records.read_launch_spec(paths)
    except UsageError:
        return None
    if spec is None or spec.name != paths.name or spec.restore_from or spec.taps or not spec.argv:
        return None
    if spec.vnc_password_file and not os.path.isfile(spec.vnc_password_file):
        return None  # the full path says what is wrong with it
    if paths.too_long_socket() is not None or record.host != host_key(spec.argv[0]):
        return None
    import psutil

    if record.memory_mib > psutil.virtual_memory().total >> 20:
        return None
    ready = types.SimpleNamespace(**record.ready) if record.ready is not None else None
    return Reusable(paths, spec, ready)


def ports_free(spec: records.LaunchSpec, home: Path | None) -> bool:
    """The host ports the records name are neither held by another instance nor bound by anyone (call it under
    the home-wide ports lock, as planning does)."""
    from qemuvm.runtime import ports

    reserved = ports.reserved_ports(home, spec.name)
    wanted = [(f.get("host_address") or "0.0.0.0", int(f["host_port"]), f.get("protocol", "tcp"))
              for f in spec.forwards if f.get("host_port")]
    if spec.vnc and spec.vnc.get("port"):
        wanted.append((spec.vnc.get("listen") or "127.0.0.1", int(spec.vnc["port"]), "tcp"))
    try:
        return all(port not in reserved and ports.bind_check(address, port, protocol)
                   for address, port, protocol in wanted)
    except OSError:
        return False
