"""Facts about the host that compile needs (QEMU version, KVM, firmware), probed once and cached."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class HostFacts:
    """What compile may depend on. Tests pin these; `probe()` reads them from the machine."""

    qemu_version: tuple[int, int, int] = (7, 2, 0)
    kvm_usable: bool = True  # /dev/kvm exists and we can open it read-write
    kvm_hardware: bool = True  # kvm_intel/kvm_amd loaded (not a software KVM such as kvm_pvm)
    ovmf_code: str | None = "/usr/share/OVMF/OVMF_CODE_4M.fd"
    ovmf_vars: str | None = "/usr/share/OVMF/OVMF_VARS_4M.fd"
    bridge_helper: str | None = "/usr/lib/qemu/qemu-bridge-helper"
    machines: tuple[str, ...] = field(default=("pc", "q35", "microvm"))
