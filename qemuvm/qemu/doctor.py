"""`qemuvm doctor`: what this host has, what is missing, and how to fix it."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from qemuvm.paths import MAX_SOCKET_PATH, InstancePaths, state_home
from qemuvm.qemu import probe as host
from qemuvm.qemu.arch import ARCHES, arch_of_binary

Status = Literal["ok", "warn", "missing", "info"]


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None
    required: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def memory_checks() -> list[Check]:
    """KSM, transparent huge pages and huge pages: the memory tuning of the classic KVM how-to."""
    from qemuvm.qemu.memory import memory_tuning

    tuning = memory_tuning()
    checks = []
    ksm = tuning["ksm"]
    if ksm["available"]:
        state = {0: "off", 1: "on", 2: "unmerging"}.get(ksm["run"], str(ksm["run"]))
        checks.append(Check("KSM", "info", f"{state}, {ksm['pages_sharing'] or 0} pages shared",
                            None if ksm["run"] == 1 else "echo 1 > /sys/kernel/mm/ksm/run (machine.mem_merge)"))
    if tuning["transparent_hugepage"]:
        checks.append(Check("transparent huge pages", "info", tuning["transparent_hugepage"]))
    pages = tuning["hugepages"]
    checks.append(Check("huge pages", "info", f"{pages['free']} free of {pages['total']} ({pages['size_kib']} KiB)",
                        None if pages["free"] else "sysctl vm.nr_hugepages=N (for machine.hugepages)"))
    return checks


def qemu_checks(binary: str) -> list[Check]:
    """The QEMU of each architecture (machine.arch) and its UEFI firmware, with the package that provides each.
    `binary` (the x86_64 one unless told) is required; another arch's is information: that arch is unavailable."""
    checks: list[Check] = []
    rows = [(arch, arch.binary) for arch in ARCHES.values() if arch.binary != binary]
    rows.insert(0, (arch_of_binary(binary) or ARCHES["x86_64"], binary))
    for index, (arch, path) in enumerate(rows):
        required = index == 0
        label = "QEMU" if required else f"QEMU {arch.name}"
        qemu = host.probe_binary(path)
        if qemu is None:
            checks.append(Check(label, "missing" if required else "info", f"{path} not on PATH"
                                + ("" if required else f": machine.arch {arch.name} is unavailable"),
                                f"apt-get install {arch.qemu_package}", required=required))
            continue
        version = ".".join(map(str, qemu.version))
        checks.append(Check(label, "ok", f"{qemu.path} {version}", required=required))
        if required:
            checks.append(Check("accelerators", "ok", ", ".join(qemu.accelerators)))
        families = ("q35", "pc", "microvm") if arch.name == "x86_64" else ("virt",)
        checks.append(Check("machine types" if required else f"machine types {arch.name}", "info",
                            f"{len(qemu.machines)} ({', '.join(families)}: "
                            f"{'yes' if set(families) <= set(qemu.machines) else 'not all'})"))
        code, _vars = host.find_ovmf(arch.name)
        firmware = "OVMF (UEFI)" if arch.name == "x86_64" else f"AAVMF ({arch.name} UEFI)"
        why = "firmware uefi unavailable" if arch.name == "x86_64" else f"machine.arch {arch.name} cannot boot"
        checks.append(Check(firmware, "ok", code) if code
                      else Check(firmware, "warn", f"not found: {why}", f"apt-get install {arch.firmware_package}"))
    return checks


def tpm_and_secure_boot_checks() -> list[Check]:
    """machine.tpm (swtpm, swtpm_setup) and machine.secure_boot (OVMF's Secure Boot build and its variables)."""
    swtpm, setup = shutil.which("swtpm"), shutil.which("swtpm_setup")
    checks = [Check("swtpm (TPM)", "ok", f"{swtpm}, {setup}") if swtpm and setup else
              Check("swtpm (TPM)", "info", "absent: machine.tpm is unavailable", "apt-get install swtpm swtpm-tools")]
    code, _vars = host.find_secboot()
    checks.append(Check("OVMF Secure Boot", "ok", code) if code else Check(
        "OVMF Secure Boot", "info", "absent: machine.secure_boot is unavailable", "apt-get install ovmf"))
    return checks


def run_checks(binary: str = "qemu-system-x86_64") -> list[Check]:
    checks = qemu_checks(binary)
    checks.extend(tpm_and_secure_boot_checks())
    img = shutil.which("qemu-img")
    checks.append(Check("qemu-img", "ok", img, required=True) if img
                  else Check("qemu-img", "missing", "not on PATH", "apt-get install qemu-utils", required=True))
    module = host.kvm_module()
    if not os.path.exists("/dev/kvm"):
        checks.append(Check("/dev/kvm", "warn", "absent: only accel tcg (slow) works",
                            "enable virtualization in the firmware, modprobe kvm_intel or kvm_amd"))
    elif not host.kvm_usable():
        checks.append(Check("/dev/kvm", "warn", "present but not read-write for this user",
                            "add yourself to the kvm group: usermod -aG kvm $USER"))
    else:
        checks.append(Check("/dev/kvm", "ok", "read-write"))
    if module:
        hardware = host.kvm_hardware()
        checks.append(Check("KVM backend", "ok" if hardware else "warn",
                            f"{module} ({'hardware-assisted' if hardware else 'software: accel auto picks tcg'})"))
    helper = next((h for h in host.BRIDGE_HELPERS if os.path.exists(h)), None)
    checks.append(Check("bridge helper", "ok" if helper else "info", helper or "absent: network mode bridge "
                        "unavailable", None if helper else "apt-get install qemu-system-common"))
    ssh = shutil.which("ssh")
    checks.append(Check("ssh client", "ok", ssh) if ssh
                  else Check("ssh client", "warn", "absent: qemuvm ssh unavailable", "apt-get install openssh-client"))
    checks.append(_state_folder_check())
    checks.extend(memory_checks())
    return checks


def _state_folder_check() -> Check:
    home = state_home()
    # The longest socket name an instance can have, with the longest instance name (63).
    longest = InstancePaths.for_name("x" * 63, home).supervisor_socket
    length = len(os.fsencode(longest))
    probe_dir = home if home.exists() else next((p for p in home.parents if p.exists()), Path("/"))
    if not os.access(probe_dir, os.W_OK):
        return Check("state folder", "missing", f"{home} is not writable", "set QEMUVM_HOME to a writable folder",
                     required=True)
    if length > MAX_SOCKET_PATH:
        room = MAX_SOCKET_PATH - len(os.fsencode(InstancePaths.for_name("", home).supervisor_socket))
        return Check("state folder", "warn", f"{home}: socket paths allow instance names up to {max(room, 0)} "
                     f"characters", "set QEMUVM_HOME to a shorter folder")
    return Check("state folder", "ok", f"{home} (socket paths fit: {length} <= {MAX_SOCKET_PATH} bytes)")
