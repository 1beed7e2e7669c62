"""Side effects compile must not have: disks, overlays, the cloud-init seed, UEFI variables, keys.

Idempotent across restarts of one instance: existing disks, overlays and UEFI variables are kept
(never resized or overwritten); the seed ISO is rebuilt each time. Every file is created under a
temporary name and renamed, so an error never leaves half a file that a later start would trust.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import string
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from qemuvm.errors import OperationError, UsageError
from qemuvm.paths import InstancePaths
from qemuvm.profile.model import Disk, Profile
from qemuvm.qemu import img, memory
from qemuvm.qemu.facts import HostFacts
from qemuvm.runtime import cloudinit, instance, records


def profile_text(profile: Profile) -> str:
    """profile.yaml as a start saves it: the resolved profile (a save records its hash)."""
    import yaml

    dumped = yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False)
    return f"# The resolved profile of instance {profile.name}, as launched.\n" + dumped


def write_launch_files(paths: InstancePaths, profile: Profile, argv: list[str], paused_argv: list[str],
                       forwards: list[dict[str, Any]], vnc: dict[str, Any] | None, remove_on_down: bool,
                       template: str | None = None, helpers: list[records.Helper] | None = None,
                       taps: list[records.Tap] | None = None) -> None:
    """The start's records: profile.yaml (the resolved profile), argv.json and run.sh (QEMU without qemuvm),
    and the LaunchSpec the supervisor runs from (`template`: the instance is a clone of it)."""
    instance.write_private_atomic(paths.profile, profile_text(profile))
    instance.write_json_atomic(paths.argv, argv)
    lines = " \\\n    ".join(shlex.quote(arg) for arg in argv)
    instance.write_private_atomic(paths.run_sh, f"#!/bin/sh\n# Instance {profile.name} without qemuvm: the exact "
                                  f"QEMU command line (argv.json).\nexec {lines}\n", mode=0o700)
    records.write_launch_spec(paths, records.LaunchSpec(
        name=profile.name, argv=paused_argv,
        restart=records.Restart(profile.restart.policy, profile.restart.max_retries, profile.restart.backoff),
        shutdown_timeout=profile.shutdown.timeout, forwards=forwards, vnc=vnc,
        vnc_password_file=vnc_password_file(profile, paths), ssh={"user": profile.ssh.user, "port": profile.ssh.port},
        remove_on_down=remove_on_down, serial_log_max=profile.serial.log_max, template=template,
        helpers=helpers or [], taps=taps or [], listeners_allowed=listeners_allowed(profile, forwards, vnc),
        shares=[{"index": index, "tag": share.tag, "source": share.source}
                for index, share in enumerate(profile.shares)]))


def listeners_allowed(profile: Profile, forwards: list[dict[str, Any]],
                      vnc: dict[str, Any] | None) -> list[list[Any]] | None:
    """What this start may listen on beyond loopback: the forwards and the VNC server as planned (their
    addresses are the profile's own words), or anything with qemu.allow_unsafe_args."""
    if profile.qemu.allow_unsafe_args:
        return None
    allowed = [[f["host_address"], int(f["host_port"])] for f in forwards if f.get("host_port")]
    if vnc and vnc.get("port"):
        allowed.append([vnc.get("listen") or "127.0.0.1", int(vnc["port"])])
    return allowed


def prepare(profile: Profile, paths: InstancePaths, host: HostFacts) -> None:
    """Make every file the compiled argv refers to exist. Idempotent across restarts of one instance."""
    if profile.machine.hugepages:
        memory.check_hugepages(profile.machine.memory)
    for index, disk in enumerate(profile.disks):
        _prepare_disk(index, disk, paths)
    if profile.cloud_init is not None:
        cloudinit.write_seed(profile, paths)
    if profile.machine.firmware == "uefi":
        _prepare_uefi_vars(profile, paths, host)
    if profile.machine.tpm:
        _prepare_tpm(paths)
    _vnc_password(profile, paths)


def _vnc_password(profile: Profile, paths: InstancePaths) -> None:
    vnc = profile.display.vnc if profile.display else None
    if vnc is not None and vnc.needs_password and not vnc.password_file and not paths.vnc_password.exists():
        # One per instance, kept across its restarts; the supervisor applies it over QMP before `cont`.
        alphabet = string.ascii_letters + string.digits
        instance.write_private_atomic(paths.vnc_password, "".join(secrets.choice(alphabet) for _ in range(8)) + "\n")


def prepare_clone(profile: Profile, paths: InstancePaths, template: Path, disks: dict[str, str],
                  cloned_files: tuple[str, ...]) -> None:
    """A clone's files instead of `prepare`'s: a new overlay on each frozen disk of the template and a private
    copy of the files its guest was booted with (seed, UEFI variables, key, known_hosts, boot log)."""
    if profile.machine.hugepages:
        memory.check_hugepages(profile.machine.memory)
    for index, frozen in disks.items():
        overlay = paths.overlay(int(index))
        overlay.unlink(missing_ok=True)  # a clone's disks start from the template, never from an earlier run
        _create_atomically(overlay, lambda tmp, base=template / frozen: img.create(
            tmp, None, "qcow2", backing=base, backing_format="qcow2"))
        os.chmod(overlay, 0o600)
    for name in cloned_files:
        source, target = template / name, paths.root / name
        if source.is_file() and not (name == "serial.log" and target.exists()):
            _create_atomically(target, lambda tmp, source=source: shutil.copyfile(source, tmp))
            os.chmod(target, 0o600)
    tpm_state = template / paths.tpm_state_file.name  # machine.tpm: the template's TPM, a copy per clone
    if profile.machine.tpm and tpm_state.is_file():
        paths.tpm_state.mkdir(mode=0o700, exist_ok=True)
        paths.tpm_state_file.unlink(missing_ok=True)  # a clone's TPM starts from the template's, like its disks
        _create_atomically(paths.tpm_state_file, lambda tmp: shutil.copyfile(tpm_state, tmp))
        os.chmod(paths.tpm_state_file, 0o600)
    _vnc_password(profile, paths)


def vnc_password_file(profile: Profile, paths: InstancePaths) -> str | None:
    """The file whose first line is this instance's VNC password, or None (no password)."""
    vnc = profile.display.vnc if profile.display else None
    if vnc is None or not vnc.needs_password:
        return None
    return vnc.password_file or str(paths.vnc_password)


def _create_atomically(target: Path, create) -> None:
    """`create(path)` makes the file at a path in a private folder made beside `target` (mkdtemp: 0700, a new
    name, the same file system), then it is renamed into place. No name is ever freed and reused: next to a
    disk in a shared folder such as /tmp, nobody else can put a file or a link where the new one is written."""
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        partial = folder / target.name
        create(partial)
        os.replace(partial, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _prepare_disk(index: int, disk: Disk, paths: InstancePaths) -> None:
    path = Path(disk.path)
    if disk.ephemeral:
        if not path.exists():
            raise UsageError(f"disks[{index}].file: {path} does not exist (an ephemeral disk overlays an existing "
                             "image)")
        overlay = paths.overlay(index)
        if not overlay.exists():
            # The base is opened read-only by the overlay: guest writes land in the instance folder.
            base_format = disk.format or img.info(path).format
            _create_atomically(overlay, lambda tmp: img.create(tmp, None, "qcow2", backing=path,
                                                               backing_format=base_format))
            os.chmod(overlay, 0o600)
        return
    if path.exists():
        return  # never resize or overwrite an existing image
    if disk.is_cdrom:
        raise UsageError(f"disks[{index}].file: {path} does not exist (the cdrom image must exist)")
    if disk.size is None:
        raise UsageError(f"disks[{index}].file: {path} does not exist (set size to create it)")
    if not path.parent.is_dir():
        raise UsageError(f"disks[{index}].file: folder {path.parent} does not exist")
    _create_atomically(path, lambda tmp: img.create(tmp, disk.size, disk.image_format))


def _prepare_uefi_vars(profile: Profile, paths: InstancePaths, host: HostFacts) -> None:
    """A private copy of the UEFI variables store, kept across restarts (boot entries, Secure Boot keys): from
    machine.uefi_vars, else OVMF's template (the one with Microsoft's keys enrolled under secure_boot)."""
    if paths.uefi_vars.exists():
        return
    template = profile.machine.uefi_vars or (host.ovmf_ms_vars if profile.machine.secure_boot else host.ovmf_vars)
    if profile.machine.uefi_vars:
        if not Path(template).is_file():
            raise UsageError(f"machine.uefi_vars: {template} is not a file")
    elif not template or not Path(template).exists():
        raise UsageError("machine.firmware: uefi needs OVMF (its variables template is missing); install it with: "
                         "apt-get install ovmf")
    _create_atomically(paths.uefi_vars, lambda tmp: shutil.copyfile(template, tmp))
    os.chmod(paths.uefi_vars, 0o600)


def _prepare_tpm(paths: InstancePaths) -> None:
    """swtpm's state folder, manufactured once as libvirt does (swtpm_setup: an EK with its certificate, a
    platform certificate, the PCR banks); later starts keep it, so the guest's sealed secrets stay sealed.
    (compile has already refused a host without swtpm.)"""
    if paths.tpm_state_file.exists():
        return
    setup = shutil.which("swtpm_setup")
    if setup is None:
        raise UsageError("machine.tpm needs swtpm_setup (apt-get install swtpm-tools)")
    paths.tpm_state.mkdir(mode=0o700, exist_ok=True)
    os.chmod(paths.tpm_state, 0o700)
    if os.geteuid() != 0:  # a user's own swtpm_setup.conf and local CA (~/.config), made once, as libvirt does
        subprocess.run([setup, "--create-config-files", "skip-if-exist"], capture_output=True, check=False)
    argv = [setup, "--tpm2", "--tpmstate", str(paths.tpm_state), "--create-ek-cert", "--create-platform-cert",
            "--lock-nvram", "--not-overwrite", "--vmid", paths.name, "--logfile", str(paths.root / "swtpm.log")]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, preexec_fn=lambda: os.umask(0o077))
    if done.returncode != 0 or not paths.tpm_state_file.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["see swtpm.log in the instance folder"]
        raise OperationError(f"machine.tpm: swtpm_setup could not make the TPM's state: {tail[0]}")
    for file in paths.tpm_state.iterdir():
        os.chmod(file, 0o600)


def remove_ephemeral(paths: InstancePaths) -> list[Path]:
    """Delete the overlays of ephemeral disks (`up --rm` at `down`); the base images stay as they were.

    Removing the whole instance folder (`rm`) removes them too; this is for keeping the folder.
    """
    removed = sorted(paths.root.glob(paths.overlay(0).name.replace("0", "*", 1)))
    for overlay in removed:
        overlay.unlink(missing_ok=True)
    return removed
