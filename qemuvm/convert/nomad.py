"""A profile -> a HashiCorp Nomad job (HCL) for Nomad's `qemu` task driver (`qemuvm export nomad`).

The driver starts `qemu-system-x86_64 -machine type=pc,accel=A -name N -m MEM -drive file=IMAGE,if=IFACE
-nographic` itself (plus a monitor for graceful_shutdown, the guest-agent channel, `-netdev user` with one
hostfwd per port_map entry and protocol, and `-enable-kvm -cpu host` under kvm), then appends `args`.
So the boot disk becomes image_path, the forwards of the first user NIC port_map, and `args` carries the
rest of the argv qemuvm compiles, minus what the driver manages and what only a qemuvm supervisor uses
(its monitors, pidfile, serial socket). QEMU merges repeated -machine options, so qemuvm's own -machine in
args sets the machine type. tests/integration/test_export_nomad_qemu.py starts that whole command line in
the real QEMU.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from qemuvm.convert.targets import Mapping, common_drops, user_forwards
from qemuvm.errors import UsageError
from qemuvm.profile.model import Profile

TARGET = "Nomad's qemu driver"
DRIVE_INTERFACES = ("ide", "scsi", "sd", "mtd", "floppy", "pflash", "virtio", "none")  # the driver's own list
# Compiled options whose fields say the driver does this, or only a qemuvm supervisor needs it.
_DRIVER_FIELDS = ("name", "machine.accel", "machine.memory", "serial", "display", "guest_agent", "network",
                  "cloud_init", "shares", "disks[0]")
_KEPT_INTERNALS = ("(qemuvm: seccomp sandbox)",)


def export(profile: Profile, compile_options: Callable[[Profile], Sequence[Any]], *,
           lossy: bool = False) -> tuple[str, Mapping]:
    """compile_options(profile): qemuvm's compiled options of a profile; called on the profile as the driver
    runs it (what is dropped left out, disks plain: -snapshot stands for ephemeral)."""
    mapping = Mapping(TARGET)
    machine = profile.machine
    if machine.arch != "x86_64":  # not something --lossy can leave out: the guest would not run at all
        raise UsageError(f"machine.arch: {machine.arch}: {TARGET} runs only qemu-system-x86_64")
    common_drops(profile, mapping, mem_merge=False)  # -machine mem-merge=off goes into args
    accelerator = "tcg" if machine.accel == "tcg" else "kvm"
    if machine.accel == "auto":
        mapping.note("machine.accel", "auto becomes kvm (the driver has no fallback)")
    if accelerator == "kvm" and machine.cpu not in (None, "host"):
        mapping.drop("machine.cpu", f"{machine.cpu}: under kvm the driver passes -cpu host after args")
    pc_family = machine.type in ("pc", "q35") or machine.type.startswith("pc-")
    if not pc_family:
        mapping.drop("machine.type", f"{machine.type}: the driver adds PCI devices (its NIC, the agent channel), "
                     "so the machine is pc or q35")
    if machine.firmware == "uefi":
        mapping.drop("machine.firmware", "uefi: its variables file would live in a qemuvm instance folder")
    if machine.tpm:
        mapping.drop("machine.tpm", "the driver runs no swtpm beside QEMU")
    if machine.secure_boot:
        mapping.drop("machine.secure_boot", "Secure Boot needs the UEFI firmware the driver does not run")
    if profile.cloud_init is not None:
        mapping.drop("cloud_init", "the driver builds no seed (a prestart task with cloud-localds can)")
    disks = [disk for disk in profile.disks if disk.media == "disk"]
    if not disks:
        mapping.drop("disks", "the driver needs an image_path (a disk)")
    boot = disks[0] if disks else None
    if boot is not None and boot is not profile.disks[0]:
        mapping.drop("disks[0]", "the boot image must be the first disk")
    interface = boot.interface if boot is not None else "virtio"
    if interface not in DRIVE_INTERFACES:
        mapping.drop("disks[0].interface", f"{interface}: the driver's drive interfaces are "
                     f"{', '.join(DRIVE_INTERFACES)}")
        interface = "virtio"
    ephemeral = {disk.ephemeral for disk in profile.disks if disk.media == "disk"}
    if ephemeral == {True, False}:
        mapping.drop("disks[].ephemeral", "QEMU's -snapshot makes every disk ephemeral or none")
    if machine.memory < 128:
        mapping.drop("machine.memory", f"{machine.memory}M: the driver starts VMs of 128 MiB or more")
    ports = _ports(profile, mapping)
    display = profile.display
    if display is not None and display.vnc is not None:
        mapping.drop("display.vnc", "the driver starts QEMU with -nographic and sets no VNC password")
    elif display is not None:
        mapping.note("display", "no display device: the driver starts QEMU with -nographic")
    args = _args(profile, compile_options(_as_run(profile, pc_family)))
    if ephemeral == {True}:
        args.insert(0, "-snapshot")
    config: dict[str, Any] = {
        "image_path": boot.file if boot is not None else "",
        "drive_interface": interface,
        "accelerator": accelerator,
        "graceful_shutdown": True,
        "guest_agent": profile.guest_agent,
    }
    if ports:
        config["port_map"] = {label: guest for label, _, guest in ports}
    config["args"] = args
    mapping.check(lossy)
    return _job(profile, config, ports), mapping


def _ports(profile: Profile, mapping: Mapping) -> list[tuple[str, int, int]]:
    """(label, host port or 0, guest port) of the forwards the driver makes (of the first user NIC)."""
    for index, nic in enumerate(profile.network):
        if index > 0 or nic.mode not in ("user", "passt"):
            mapping.drop(f"network[{index}]", f"a {nic.mode} NIC: the driver makes one user-mode NIC")
        elif nic.model != "virtio" or nic.mac != "auto":
            mapping.drop(f"network[{index}].model", "the driver's NIC is a virtio-net with QEMU's MAC")
    ports = []
    for n, f, forward in user_forwards(profile):
        if n != 0:
            continue
        if forward.address:
            mapping.drop(f"network[0].forwards[{f}]", f"bound to {forward.address}: the driver forwards on every "
                         "address of the client")
        label = "ssh" if forward.guest == profile.ssh.port else f"port{forward.guest}"
        ports.append((label, forward.host, forward.guest))
    return ports


def _as_run(profile: Profile, pc_family: bool) -> Profile:
    """The profile without what the driver cannot run (the drops) and with plain disks."""
    machine = profile.machine.model_copy(update={"firmware": "bios", "tpm": False, "secure_boot": False,
                                                  "uefi_vars": None, **({} if pc_family else {"type": "pc"})})
    display = profile.display.model_copy(update={"vnc": None}) if profile.display else None
    return profile.model_copy(update={
        "machine": machine, "display": display, "cloud_init": None, "shares": [],
        "boot": profile.boot.model_copy(update={"once": None}),
        "disks": [disk.model_copy(update={"ephemeral": False}) for disk in profile.disks],
        "qemu": profile.qemu.model_copy(update={"extra_args": []})})


def _args(profile: Profile, options: Sequence[Any]) -> list[str]:
    args: list[str] = []
    for option in options:
        fields = option.fields
        internal = any(f.startswith("(qemuvm:") for f in fields) and not any(f in _KEPT_INTERNALS for f in fields)
        if internal or any(f == d or f.startswith((d + ".", d + "[")) for f in fields for d in _DRIVER_FIELDS):
            continue
        if option.args[0] == "-cpu" and profile.machine.accel != "tcg":
            continue  # the driver passes -cpu host under kvm
        args.extend(option.args)
    return args


def _hcl(value: Any) -> str:
    """A value in HCL: JSON's strings, numbers, bools and lists are HCL's, once ${ and %{ are escaped."""
    if isinstance(value, str):
        return json.dumps(value).replace("${", "$${").replace("%{", "%%{")
    if isinstance(value, list):
        return "[" + ", ".join(_hcl(item) for item in value) + "]"
    return json.dumps(value)


def _job(profile: Profile, config: dict[str, Any], ports: list[tuple[str, int, int]]) -> str:
    """restart.policy always -> a service job (restarted whatever the exit); on-failure -> a batch job
    (restarted after a failing exit, done after a clean power-off); never -> batch without restarts."""
    name, restart = profile.name, profile.restart
    kind = "service" if restart.policy == "always" else "batch"
    attempts = 0 if restart.policy == "never" else restart.max_retries
    lines = [f"job {_hcl(name)} {{", '  datacenters = ["dc1"]', f'  type        = "{kind}"', "",
             '  group "vm" {', "    restart {", f"      attempts = {attempts}",
             f'      delay    = "{max(1, math.ceil(restart.backoff))}s"', '      mode     = "fail"', "    }"]
    if ports:
        lines.append("    network {")
        for label, host, _guest in ports:
            static = f" static = {host} " if host else ""
            lines.append(f"      port {_hcl(label)} {{{static}}}")
        lines.append("    }")
    lines += ["", f"    task {_hcl(name)} {{", '      driver       = "qemu"',
              f'      kill_timeout = "{math.ceil(profile.shutdown.timeout)}s"', "", "      config {"]
    for key, value in config.items():
        if key == "port_map":
            lines += ["        port_map {", *(f"          {label} = {guest}" for label, guest in value.items()),
                      "        }"]
        else:
            lines.append(f"        {key} = {_hcl(value)}")
    lines += ["      }", "", "      resources {", f"        cores  = {profile.machine.cpus}",
              f"        memory = {profile.machine.memory}", "      }", "    }", "  }", "}"]
    return "\n".join(lines) + "\n"
