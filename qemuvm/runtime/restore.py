"""`start` of a saved instance: check that its saved state still fits (same profile, disks untouched, enough
free memory) and give the supervisor the LaunchSpec it was saved with, plus the state file to load.

A restore onto a disk that changed since the save would give the guest a RAM view of blocks that are no
longer there (filesystem corruption): such a start is refused with one sentence and the state file is kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import TYPE_CHECKING

from qemuvm.errors import UsageError
from qemuvm.paths import InstancePaths
from qemuvm.runtime import records

if TYPE_CHECKING:
    from qemuvm.profile.model import Profile


def disk_print(path: str) -> records.DiskPrint | None:
    """The identity of an image file now (None when it is not a regular file)."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return records.DiskPrint(path=path, size=info.st_size, mtime_ns=info.st_mtime_ns, inode=info.st_ino)


def profile_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def launch_spec(paths: InstancePaths, profile: Profile, remove_on_down: bool) -> records.LaunchSpec:
    """The LaunchSpec that restores `paths.saved_state`; UsageError when the state no longer fits."""
    from qemuvm.runtime.prepare import profile_text

    how_to_boot = f"`qemuvm start {paths.name} --discard-saved` boots afresh (the saved state is kept until then)"
    saved = records.read_saved_state(paths)
    spec = records.read_launch_spec(paths)
    if saved is None or spec is None:
        raise UsageError(f"{paths.saved_state} has no complete record beside it ({paths.saved_info.name}, "
                         f"{paths.supervisor_config.name}); {how_to_boot}")
    if profile_sha256(profile_text(profile)) != saved.profile_sha256:
        raise UsageError(f"the profile of {paths.name} changed since it was saved, and a saved state loads only "
                         f"into the same devices; {how_to_boot}")
    for disk in saved.disks:
        now = disk_print(disk.path)
        if now != disk:
            what = "is gone" if now is None else "was written or replaced"
            raise UsageError(f"the disk {disk.path} {what} since {paths.name} was saved; restoring would corrupt "
                             f"it; {how_to_boot}")
    check_memory(paths, profile, how_to_boot)
    return dataclasses.replace(spec, restore_from=str(paths.saved_state), restore_saved_at=saved.saved_at,
                               remove_on_down=remove_on_down or spec.remove_on_down)


def check_memory(paths: InstancePaths, profile: Profile, remedy: str) -> None:
    """A restore allocates all of the guest's memory at once: refuse it before QEMU starts when the host
    has less available (UsageError naming `remedy`)."""
    import psutil

    free_mib = psutil.virtual_memory().available >> 20
    if profile.machine.memory > free_mib:
        raise UsageError(f"restoring {paths.name} needs {profile.machine.memory} MiB of memory and this host has "
                         f"{free_mib} MiB available; free some, or {remedy}")
