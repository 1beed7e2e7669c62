"""Before anything is created: which profile `up` starts, and whether this host can run it.

Every check here fails with one sentence (UsageError, exit 2) and leaves nothing behind; `api.up` calls
`load_profile`, then `check_host`, before it takes the instance lock. One thing `check_host` makes: a defined
NAT network the VM joins that is not up (the host rebooted) is made again from its definition (netdefs.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from qemuvm import files
from qemuvm.errors import UsageError
from qemuvm.paths import InstancePaths

if TYPE_CHECKING:
    from qemuvm.profile.model import Profile
    from qemuvm.qemu.facts import HostFacts


def load_profile(source: str | os.PathLike[str], overrides: tuple[str, ...] | list[str], name: str | None,
                 home: Path | None, progress: Callable[[str], None] = lambda _: None,
                 download: Callable[[int, int | None], None] | None = None) -> Profile:
    """The profile to start: a file, or the saved profile.yaml of the instance named `source`. Its url and
    catalog image disks are pulled into the image cache now (`download` shows the bytes arriving), before any
    lock is taken: a start then only ever names files."""
    from qemuvm.profile.validate import load_and_validate

    text = str(source)
    if Path(text).is_file():
        profile = load_and_validate(text, overrides, name)
    elif "/" not in text and not text.endswith((".yaml", ".yml")):
        saved = InstancePaths.for_name(text, home).profile
        if not saved.is_file():
            raise UsageError(f"no profile file or instance named {text}")
        if name not in (None, text):
            raise UsageError("--name cannot rename an existing instance")
        profile = load_and_validate(str(saved), overrides, text)
    else:
        raise UsageError(f"profile file {text} does not exist")
    return resolve_shares(resolve_images(profile, progress=download, note=progress))


def resolve_images(profile: Profile, *, pull: bool = True, progress: Callable[[int, int | None], None] | None = None,
                   note: Callable[[str], None] = lambda _: None) -> Profile:
    """Its url and catalog image disks as the files they are in the image cache (imagecache.resolve_disks);
    urllib and hashlib load only for a profile that has such a disk."""
    if all(disk.file is not None for disk in profile.disks):
        return profile
    from qemuvm.runtime import imagecache

    return imagecache.resolve_disks(profile, pull=pull, progress=progress, note=note)


def resolve_shares(profile: Profile) -> Profile:
    """Each share's source as the real folder, resolved once here, so virtiofsd and QEMU's 9p server (which
    would each treat a link their own way) are handed the same folder, and a later change of the link does not
    move a running VM's share. A source that is itself a link to outside the folder holding it is refused
    unless the share says `follow_link: true` (a link to /etc would hand the guest the host's /etc)."""
    shares = []
    for index, share in enumerate(profile.shares):
        real = os.path.realpath(share.source)
        if os.path.islink(share.source) and not share.follow_link:
            holder = os.path.realpath(os.path.dirname(os.path.abspath(share.source)))
            if os.path.commonpath([holder, real]) != holder:
                raise UsageError(f"shares[{index}].source: {share.source} is a symbolic link to {real}, outside "
                                 f"{holder}; name {real} itself, or set shares[{index}].follow_link: true to share it")
        shares.append(share if real == share.source else share.model_copy(update={"source": real}))
    return profile.model_copy(update={"shares": shares}) if profile.shares else profile


MAX_COUNT = 100  # `up --count`: a typo of 1000 must not start a thousand QEMUs


def series(base: str, count: int) -> list[str]:
    """The instance names `up --count COUNT` starts: the name itself for one, else NAME-1 .. NAME-COUNT."""
    import re

    from qemuvm.profile.types import NAME_PATTERN

    if not 1 <= count <= MAX_COUNT:
        raise UsageError(f"--count: {count} VMs; allowed is 1 to {MAX_COUNT}")
    names = [base] if count == 1 else [f"{base}-{index}" for index in range(1, count + 1)]
    if not re.fullmatch(NAME_PATTERN, names[-1]):
        raise UsageError(f"--count: {names[-1]} is not a valid instance name (at most 63 letters, digits, _ . -); "
                         "give a shorter --name")
    return names


def read_vnc_password(password_file: str | os.PathLike[str]) -> str:
    """The first line of the file (a trailing newline is not part of the password)."""
    text = files.read_text(password_file, "display.vnc.password_file", 4096)
    lines = text.splitlines()
    password = lines[0] if lines else ""
    if not password:
        raise UsageError(f"display.vnc.password_file: {password_file} is empty")
    return password


def check_host(profile: Profile, paths: InstancePaths) -> tuple[HostFacts, str | None]:
    """The host's facts for compiling, and a notice to show (e.g. accel fallback); UsageError when the profile
    cannot run here: socket path too long, no QEMU binary, more memory than the host has, no KVM, an
    unreadable VNC password file."""
    import psutil

    from qemuvm.qemu import probe
    from qemuvm.qemu.compile import accel_notice, kvm_problem

    too_long = paths.too_long_socket()
    if too_long is not None:
        raise UsageError(f"the socket path {too_long} is longer than 107 bytes; set QEMUVM_HOME to a shorter "
                         "folder")
    if shutil.which(profile.qemu.binary) is None:
        from qemuvm.qemu.arch import arch_of_binary

        arch = arch_of_binary(profile.qemu.binary)
        package = arch.qemu_package if arch else "qemu-system-x86"
        raise UsageError(f"qemu.binary: {profile.qemu.binary} is not an executable QEMU on PATH; install it "
                         f"(Debian: apt-get install {package}) or name the right binary")
    total_mib = psutil.virtual_memory().total >> 20
    if profile.machine.memory > total_mib:
        raise UsageError(f"machine.memory: {profile.machine.memory} MiB is more than this host has "
                         f"({total_mib} MiB)")
    host = probe.probe(profile.qemu.binary)
    problem = kvm_problem(profile, host)
    if problem:
        raise UsageError(problem)
    vnc = profile.display.vnc if profile.display else None
    if vnc is not None and vnc.password_file:
        read_vnc_password(vnc.password_file)  # unreadable or empty: exit 2 now, not a stuck VM later
    if any(nic.network for nic in profile.network):
        from qemuvm.runtime import netdefs, nics

        for nic in profile.network:  # a defined network that is not up (the host rebooted) comes up first
            if nic.network is not None and os.geteuid() == 0:
                netdefs.activate(nic.network)
        nics.check_nics(profile)
    for index, disk in enumerate(profile.disks):
        if disk.path.startswith("/dev/"):
            problem = device_problem(disk.path, writable=not (disk.readonly or disk.is_cdrom or disk.ephemeral))
            if problem:
                raise UsageError(f"disks[{index}].file: {disk.file} {problem}")
    for index, share in enumerate(profile.shares):
        problem = share_problem(share.source)
        if problem:
            raise UsageError(f"shares[{index}].source: {share.source} {problem}")
    return host, accel_notice(profile, host)


def device_problem(device: str, writable: bool) -> str | None:
    """Why a block device cannot be a disk here, or None: it must be one, this user must be able to open it,
    and it must not be mounted on the host (the guest and the host writing one file system corrupt it)."""
    import stat

    try:
        info = os.stat(device)
    except OSError as exc:
        return f"cannot be opened ({exc.strerror})"
    if not stat.S_ISBLK(info.st_mode):
        return "is not a block device (a disk under /dev is opened as one: name an image file instead)"
    if not os.access(device, os.R_OK | (os.W_OK if writable else 0)):
        return f"is not {'readable and writable' if writable else 'readable'} by this user"
    real = os.path.realpath(device)
    mounted = []
    with contextlib.suppress(OSError), open("/proc/self/mounts") as mounts:
        for fields in map(str.split, mounts):
            if len(fields) > 1 and os.path.realpath(fields[0]) == real:
                mounted.append(fields[1])
    if mounted:
        return (f"is mounted on the host at {mounted[0]}; unmount it first (the guest and the host writing one file "
                "system corrupt it)")
    return None


def share_problem(source: str) -> str | None:
    """Why a host folder cannot be shared, or None. A comma is refused rather than escaped: QEMU's 9p and
    virtiofsd option parsers disagree on escaping it."""
    if "," in source:
        return "has a comma in its path, which QEMU's share options cannot carry; rename or link the folder"
    if not os.path.exists(source):
        return "does not exist"
    if not os.path.isdir(source):
        return "is not a folder"
    return None
