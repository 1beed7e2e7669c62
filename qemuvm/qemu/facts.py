"""Facts about the host that compile may depend on, as plain data: no import here touches the system, so
compile stays pure (tests pin these; `qemuvm.qemu.probe` reads them from the machine)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class HostFacts:
    """What compile may depend on. The QEMU version is not among them: nothing compile emits depends on it
    yet (7.2 is the floor, QEMU-FACTS.md); add it back with the first version-dependent option."""

    arch: str = "x86_64"  # the host's CPU (qemu/arch.py's names): KVM runs only guests of this architecture
    kvm_usable: bool = True  # /dev/kvm exists and we can open it read-write
    kvm_hardware: bool = True  # kvm_intel/kvm_amd (or an arm64 host's KVM) loaded, not a software KVM (kvm_pvm)
    # The UEFI firmware of the probed binary's architecture: OVMF for x86_64, AAVMF for aarch64.
    ovmf_code: str | None = "/usr/share/OVMF/OVMF_CODE_4M.fd"
    ovmf_vars: str | None = "/usr/share/OVMF/OVMF_VARS_4M.fd"
    # machine.secure_boot (x86_64): OVMF's Secure Boot build (SMM) and the variables with Microsoft's keys.
    ovmf_secboot_code: str | None = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
    ovmf_ms_vars: str | None = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
    swtpm: str | None = "/usr/bin/swtpm"  # machine.tpm (Debian: swtpm), else None
    bridge_helper: str | None = "/usr/lib/qemu/qemu-bridge-helper"
    machines: tuple[str, ...] = field(default=("pc", "q35", "microvm"))
    virtiofsd: str | None = "/usr/lib/qemu/virtiofsd"  # installed (Debian: qemu-system-common), else None
    root: bool = True  # we run as root: Debian 12's C virtiofsd runs as root only
    passt: str | None = "/usr/bin/passt"  # installed (Debian: passt), else None
