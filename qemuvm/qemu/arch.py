"""What a guest architecture changes in the command line and on the host, as one table (pure data).

The profile's `machine.arch` picks a row; compile, the host probe and doctor read it. The profile-level defaults
(binary, machine type, firmware, accelerator) live beside the model (profile.model.ARCH_DEFAULTS).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    name: str  # machine.arch: QEMU's name for it
    binary: str
    qemu_package: str  # the apt package that provides `binary`
    firmware_package: str  # ... and its UEFI firmware
    uefi_pairs: tuple[tuple[str, str], ...]  # (code, variables template) candidates, best first
    panic_device: str  # gives QEMU's GUEST_PANICKED event
    vga: dict[str, str]  # display.vga -> the display device
    tcg_cpu: str  # -cpu under TCG when the profile names none
    tpm_device: str  # machine.tpm's device: CRB on the PC, the TIS sysbus device on virt


ARCHES: dict[str, Arch] = {
    "x86_64": Arch(
        "x86_64", "qemu-system-x86_64", "qemu-system-x86", "ovmf",
        (("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
         ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
         ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd")),
        "pvpanic", {"std": "VGA", "virtio": "virtio-vga"}, "max", "tpm-crb"),
    # Arm's virt machine: no ISA bus (pvpanic-pci), no legacy VGA that AAVMF drives (ramfb: a plain framebuffer
    # the firmware and Linux's efifb show; virtio-gpu-pci), no CRB TPM interface (tpm-tis-device).
    # max,pauth-impdef=on: QEMU's own pointer-authentication algorithm, far cheaper under TCG than the
    # architected QARMA (a TCG boot of the test guest to READY ~1.5x faster, QEMU-FACTS.md / scripts/bench).
    "aarch64": Arch(
        "aarch64", "qemu-system-aarch64", "qemu-system-arm", "qemu-efi-aarch64",
        (("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
         ("/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw", "/usr/share/edk2/aarch64/vars-template-pflash.raw")),
        "pvpanic-pci", {"std": "ramfb", "virtio": "virtio-gpu-pci"}, "max,pauth-impdef=on", "tpm-tis-device"),
}


def arch_of_binary(binary: str) -> Arch | None:
    """The row whose QEMU `binary` is (by name: qemu-system-aarch64 -> aarch64); None for another."""
    name = binary.rsplit("/", 1)[-1]
    return next((arch for arch in ARCHES.values() if arch.binary == name), None)
