"""Templates for warm clones (`up --warm`): a VM booted to ready once and saved, its disks frozen as read-only
backing files; every later start of the same profile is a clone that restores that state onto new overlays.

A template is the folder HOME/.templates/FINGERPRINT/: saved.state, the frozen overlays (diskN.qcow2, backed
by the profile's own images, which are never written), copies of the files the guest was booted with (the
cloud-init seed, UEFI variables, the instance key and known_hosts, the boot's serial.log) and template.json,
written last; the folder is built under a temporary name and renamed when complete. Everything in it is 0400
but `hits`, the count of clones it served (0600: `up --warm` adds one under the template's lock).

The fingerprint covers only what the guest can observe, so that a restore is the same machine: the QEMU
command line compiled from the profile's guest view (`guest_view`: devices, memory, CPU, machine type,
firmware, the accelerator as this host resolves it), that view itself, and the identity (size, mtime, inode) of
every file the guest started from: base images, kernel, initrd, firmware, cloud-init files, the QEMU binary. A
change there gives a new template, never a wrong restore. What only the host side owns -- the instance name,
forward host ports and addresses, the VNC server and its password, serial logging, socket and log paths, the
SSH settings, timeouts, the restart and shutdown policies, the smoke checks -- is left out: each clone's own
command line carries it (user-mode forwards are host-side sockets that no saved state holds, so the restoring
QEMU's own `hostfwd` options apply), and parallel CI jobs with a port each share one template.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from qemuvm.errors import UsageError
from qemuvm.paths import InstancePaths
from qemuvm.runtime import instance, records
from qemuvm.runtime.restore import disk_print

if TYPE_CHECKING:
    from qemuvm.profile.model import Profile
    from qemuvm.qemu.facts import HostFacts

TEMPLATES = ".templates"  # hidden: never taken for an instance folder
_PLACEHOLDER = "template"
_PASSTHROUGH = ("vfio", "usb-host", "pci-assign")  # host devices: their state is in the hardware
# Left out of the dumped guest view: what only the host side uses (how long to wait, when to restart, the checks).
_HOST_SIDE = {"description": True, "restart": True, "shutdown": True, "smoke": True, "ready": {"timeout"},
              "ssh": True, "serial": True}
HITS = "hits"  # beside template.json: how many clones the template has served (`template ls`)
# Files a clone gets a copy of; serial.log so that a clone's console history starts with its boot.
CLONED_FILES = ("seed.iso", "OVMF_VARS.fd", "id_ed25519", "id_ed25519.pub", "known_hosts", "serial.log")


def templates_dir(home_dir: Path) -> Path:
    return home_dir / TEMPLATES


def warm_problem(profile: Profile) -> str | None:
    """Why this profile cannot be started warm (naming the field), or None."""
    if profile.ready is None:
        return "ready: a template is saved once the guest is ready, and this profile has no ready block"
    if profile.shares:
        return "shares: a guest with a host folder mounted (virtiofs or 9p) cannot be saved (QEMU blocks it)"
    for index, disk in enumerate(profile.disks):
        if not (disk.ephemeral or disk.readonly or disk.is_cdrom):
            return (f"disks[{index}]: clones share the template's disks as read-only backing files, so every "
                    "writable disk must be ephemeral: true")
    for index, nic in enumerate(profile.network):
        if nic.mode == "passt":
            return (f"network[{index}].mode passt: passt keeps the guest's addresses and connections in its own "
                    "process, which no save holds; use mode user for warm starts")
        if nic.mode != "user":
            return (f"network[{index}].mode {nic.mode}: every clone of a template keeps its MAC address, which "
                    f"breaks networking for two clones on one {nic.mode} network")
    for arg in profile.qemu.extra_args:
        if "vhost-user" in arg:
            return "qemu.extra_args: a vhost-user device keeps its state in another process, which no save holds"
        if any(word in arg for word in _PASSTHROUGH):
            return f"qemu.extra_args: a host device passed through ({arg}) cannot be saved"
    return None


def guest_view(profile: Profile) -> Profile:
    """`profile` as its guest can tell it: a placeholder name, no forwards (host-side listeners), no VNC server
    (the display device it implies stays), default serial logging and SSH settings. Two profiles with the same
    guest view restore each other's saved state."""
    from qemuvm.profile.model import Serial, Ssh

    display = profile.display
    if display is not None and display.vnc is not None:
        # VNC needs a console: compile adds a standard VGA for `vga: none` with VNC, and so does the view.
        display = display.model_copy(update={"vnc": None, "vga": "std" if display.vga == "none" else display.vga})
    return profile.model_copy(update={
        "name": _PLACEHOLDER, "display": display, "serial": Serial(), "ssh": Ssh(),
        "network": [nic.model_copy(update={"forwards": []}) for nic in profile.network]})


def _input_files(profile: Profile, host: HostFacts) -> list[str]:
    files = [profile.boot.kernel, profile.boot.initrd, *(disk.file for disk in profile.disks)]
    spec = profile.cloud_init  # what the guest applied at its first boot, saved into the template
    if spec is not None:
        files += [value for value in (spec.user_data, spec.meta_data, spec.network_config) if isinstance(value, str)]
    if profile.machine.firmware == "uefi":
        files += [host.ovmf_code, host.ovmf_vars]
    files.append(shutil.which(profile.qemu.binary) or profile.qemu.binary)
    return [os.path.realpath(f) for f in files if f]


def fingerprint(profile: Profile, host: HostFacts) -> tuple[str, list[records.DiskPrint]]:
    """The template key of `profile` on this host, and the prints of the files it starts from."""
    from qemuvm.qemu.compile import compile_argv

    placeholder = guest_view(profile)
    argv = compile_argv(placeholder, InstancePaths(Path("/qemuvm") / _PLACEHOLDER), host)
    files = _input_files(profile, host)
    inputs = [found for found in map(disk_print, files) if found is not None]
    machine = placeholder.model_dump(mode="json", exclude=_HOST_SIDE)
    blob = json.dumps({"argv": argv, "profile": machine, "files": files,
                       "prints": [dataclasses.asdict(p) for p in inputs]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20], inputs


def build_lock(home_dir: Path, key: str, timeout: float):  # -> context manager
    """Held while a template is looked up, built or removed: two `up --warm` of one profile build it once."""
    folder = templates_dir(home_dir)
    instance.create_dir(folder)
    return instance.locked(folder / f".{key}.lock", timeout=timeout)


def find(home_dir: Path, key: str) -> tuple[Path, records.TemplateRecord] | None:
    """The complete template with this fingerprint (folder, record), or None. Call it under build_lock: a
    build that died (its `up` killed) left a temporary folder, removed here."""
    folder = templates_dir(home_dir) / key
    for stale in folder.parent.glob(f".build-{key}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    record = records.read_template(folder / "template.json")
    if record is None or record.fingerprint != key:
        return None
    remedy = f"`qemuvm template rm {key}` removes it, and the next --warm run makes a new one"
    missing = [name for name in ("saved.state", *record.disks.values()) if not (folder / name).is_file()]
    if missing:
        raise UsageError(f"template {key} lacks {', '.join(missing)}; {remedy}")
    size = (folder / "saved.state").stat().st_size
    if size != record.state_size:
        raise UsageError(f"template {key} is damaged: its saved.state has {size} bytes, {record.state_size} were "
                         f"saved; {remedy}")
    return folder, record


def freeze(paths: InstancePaths, profile: Profile, key: str, inputs: list[records.DiskPrint],
           ready_after: float | None, source: str | None = None) -> tuple[Path, records.TemplateRecord]:
    """Turn a just-saved instance into template `key`: its state and overlays move into the template folder,
    read-only; the instance keeps everything else (a clone's start gives it new overlays)."""
    from qemuvm.qemu.options import derive_mac

    saved = records.read_saved_state(paths)
    assert saved is not None, "freeze follows a completed save"
    final = templates_dir(paths.root.parent) / key
    build = final.with_name(f".build-{key}-{os.getpid()}")
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(mode=0o700)
    try:
        disks: dict[str, str] = {}
        for index, disk in enumerate(profile.disks):
            if disk.ephemeral:
                disks[str(index)] = f"disk{index}.qcow2"
                os.replace(paths.overlay(index), build / disks[str(index)])
        os.replace(paths.saved_state, build / "saved.state")
        paths.saved_info.unlink(missing_ok=True)
        for name in CLONED_FILES:
            if (paths.root / name).is_file():
                shutil.copyfile(paths.root / name, build / name)
        if paths.tpm_state_file.is_file():  # machine.tpm: every clone starts from this TPM (its identity)
            shutil.copyfile(paths.tpm_state_file, build / paths.tpm_state_file.name)
        for file in build.iterdir():
            os.chmod(file, 0o400)
        macs = [derive_mac(profile.name, i) if nic.mac == "auto" else nic.mac for i, nic in enumerate(profile.network)]
        record = records.TemplateRecord(
            fingerprint=key, profile_name=profile.name, created_at=time.time(), saved_at=saved.saved_at,
            state_size=saved.size, disks=disks, inputs=inputs,
            macs=macs, source=source,
            ready_after_s=None if ready_after is None else round(ready_after, 2))
        records.write_template(build / "template.json", record)
        os.chmod(build / "template.json", 0o400)
        shutil.rmtree(final, ignore_errors=True)  # an incomplete one (find refused it)
        os.replace(build, final)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return final, record


def clone_profile(profile: Profile, record: records.TemplateRecord) -> Profile:
    """The profile a clone runs: the template's MAC addresses, which its restored guest already uses."""
    nics = [nic.model_copy(update={"mac": mac}) for nic, mac in zip(profile.network, record.macs, strict=True)]
    return profile.model_copy(update={"network": nics})


def count_hit(folder: Path) -> int:
    """One more clone served by the template in `folder` (call it under build_lock); returns the new count."""
    hits = hits_of(folder) + 1
    instance.write_private_atomic(folder / HITS, f"{hits}\n".encode())
    return hits


def hits_of(folder: Path) -> int:
    try:
        return int((folder / HITS).read_text(errors="replace").strip() or 0)
    except (OSError, ValueError):
        return 0


def clones_of(home_dir: Path, key: str) -> list[str]:
    """Instances whose disks back onto template `key` (they need it for every later start)."""
    names = []
    for paths in instance.list_instances(home_dir):
        try:
            spec = records.read_launch_spec(paths)
        except UsageError:
            continue
        if spec is not None and spec.template == key:
            names.append(paths.name)
    return names


def list_templates(home_dir: Path) -> list[dict[str, object]]:
    """Every template (as `template ls` shows it), oldest first."""
    found = []
    folder = templates_dir(home_dir)
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        try:
            record = records.read_template(entry / "template.json")
        except UsageError:
            record = None
        size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
        found.append({"fingerprint": entry.name, "made_from": record.profile_name if record else None,
                      "source": record.source if record else None,
                      "created_at": record.created_at if record else None, "bytes": size,
                      "ready_after_s": record.ready_after_s if record else None, "hits": hits_of(entry),
                      "clones": clones_of(home_dir, entry.name), "complete": record is not None})
    return sorted(found, key=lambda t: t["created_at"] or 0)


def remove(home_dir: Path, key: str, force: bool = False) -> dict[str, object]:
    """Delete template `key`; refused while instances are clones of it (their disks need it) unless force."""
    folder = templates_dir(home_dir) / key
    if not key or "/" in key or key.startswith(".") or not folder.is_dir():
        raise UsageError(f"no template {key!r} (see `qemuvm template ls`)")
    with build_lock(home_dir, key, timeout=60):
        clones = clones_of(home_dir, key)
        if clones and not force:
            raise UsageError(f"template {key} is the base of {', '.join(clones)}, whose disks back onto it: "
                             "`qemuvm rm` them first, or template rm --force (they will no longer start)")
        shutil.rmtree(folder)  # its files are 0400, its folder 0700: removable
        # Its lock goes too, while held (instance.locked: a waiter then locks the path anew, never the old file).
        (templates_dir(home_dir) / f".{key}.lock").unlink(missing_ok=True)
    return {"fingerprint": key, "removed": str(folder), "clones": clones}
