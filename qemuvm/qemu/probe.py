"""Probing the host for the facts compile needs (machine types, KVM, firmware), probed once and cached.

The probe runs the QEMU binary a few times (~100 ms); the result is cached in
`~/.cache/qemuvm/host-<hash>.json`, keyed by the binary's path, size and mtime, so `render` and `up`
stay fast. KVM access is re-checked every time: it is a cheap `os.access` and can change.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from qemuvm.qemu.arch import ARCHES, arch_of_binary
from qemuvm.qemu.facts import HostFacts

OVMF_CANDIDATES = ARCHES["x86_64"].uefi_pairs
# OVMF's Secure Boot build (with SMM) and the variables template with Microsoft's keys enrolled.
SECBOOT_CANDIDATES = (("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"),
                      ("/usr/share/OVMF/OVMF_CODE.secboot.fd", "/usr/share/OVMF/OVMF_VARS.ms.fd"),
                      ("/usr/share/edk2/ovmf/OVMF_CODE.secboot.fd", "/usr/share/edk2/ovmf/OVMF_VARS.secboot.fd"))
BRIDGE_HELPERS = ("/usr/lib/qemu/qemu-bridge-helper", "/usr/libexec/qemu-bridge-helper")
VIRTIOFSD = ("/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd")


@dataclass(frozen=True)
class QemuBinary:
    """What the QEMU binary itself reports (the cached part of the probe)."""

    path: str
    version: tuple[int, int, int]
    machines: tuple[str, ...]
    accelerators: tuple[str, ...]


def parse_version(text: str) -> tuple[int, int, int]:
    """`qemu-system-x86_64 --version` -> (7, 2, 22); (0, 0, 0) when it says no version."""
    match = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", text)
    return (int(match[1]), int(match[2]), int(match[3] or 0)) if match else (0, 0, 0)


def parse_machines(text: str) -> tuple[str, ...]:
    """`-machine help`: a header line, then `NAME  description` lines."""
    return tuple(line.split()[0] for line in text.splitlines()[1:] if line.strip())


def parse_accelerators(text: str) -> tuple[str, ...]:
    """`-accel help`: a header line, then one accelerator per line."""
    return tuple(line.strip() for line in text.splitlines()[1:] if line.strip())


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qemuvm"


def _run(argv: list[str]) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    return result.stdout


def probe_binary(binary: str = "qemu-system-x86_64") -> QemuBinary | None:
    """Version, machine types and accelerators of `binary`; None when it is not installed."""
    path = shutil.which(binary)
    if path is None:
        return None
    stat = os.stat(path)
    key = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = _cache_dir() / f"host-{key}.json"
    try:
        data = json.loads(cache.read_text())
        return QemuBinary(data["path"], tuple(data["version"]), tuple(data["machines"]), tuple(data["accelerators"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    found = QemuBinary(path, parse_version(_run([path, "--version"])), parse_machines(_run([path, "-machine", "help"])),
                       parse_accelerators(_run([path, "-accel", "help"])))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.{os.urandom(6).hex()}.tmp")  # unique: threads of one `up` too
        tmp.write_text(json.dumps(asdict(found)))
        tmp.replace(cache)
    except OSError:
        pass  # a read-only home only costs the cache
    return found


# platform.machine() spellings of the architectures machine.arch names.
_HOST_ARCH_NAMES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


def host_arch() -> str:
    """This host's CPU architecture as machine.arch names it (KVM runs only guests of this one)."""
    machine = platform.machine().lower()
    return _HOST_ARCH_NAMES.get(machine, machine)


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def kvm_hardware() -> bool:
    """True when the host's KVM is hardware-assisted; a software KVM (kvm_pvm) runs guests far too slowly."""
    if host_arch() == "aarch64":  # an arm64 host's KVM is built on the CPU's virtualisation extensions
        return Path("/sys/module/kvm").exists()
    return any(Path("/sys/module", module).exists() for module in ("kvm_intel", "kvm_amd"))


def kvm_module() -> str | None:
    """The loaded KVM backend module, for `doctor`."""
    for module in ("kvm_intel", "kvm_amd", "kvm_pvm"):
        if Path("/sys/module", module).exists():
            return module
    return "kvm" if Path("/sys/module/kvm").exists() else None


def find_secboot() -> tuple[str | None, str | None]:
    """OVMF's Secure Boot build and the variables template with Microsoft's keys, as a pair (x86_64)."""
    for code, variables in SECBOOT_CANDIDATES:
        if os.path.exists(code) and os.path.exists(variables):
            return code, variables
    return None, None


def _program(name: str) -> str | None:
    """An installed helper program: on PATH, or in /usr/bin when PATH is a user's narrow one."""
    return shutil.which(name) or next((p for p in (f"/usr/bin/{name}",) if os.access(p, os.X_OK)), None)


def find_ovmf(arch: str = "x86_64") -> tuple[str | None, str | None]:
    """The UEFI firmware (code, variables template) of `arch`: OVMF on x86_64, AAVMF on aarch64."""
    for code, variables in ARCHES[arch].uefi_pairs:
        if os.path.exists(code) and os.path.exists(variables):
            return code, variables
    return None, None


def probe(binary: str = "qemu-system-x86_64") -> HostFacts:
    """The facts compile needs, from this machine. Missing QEMU keeps the defaults for its version."""
    return probe_with_binary(binary)[0]


def probe_with_binary(binary: str = "qemu-system-x86_64") -> tuple[HostFacts, QemuBinary | None]:
    """`probe`'s facts and the binary they were read from (None: not installed), looked up once."""
    qemu = probe_binary(binary)
    arch = arch_of_binary(binary)
    code, variables = find_ovmf(arch.name if arch else "x86_64")
    secboot_code, ms_vars = find_secboot()
    return HostFacts(
        arch=host_arch(),
        kvm_usable=kvm_usable(),
        kvm_hardware=kvm_hardware(),
        ovmf_code=code,
        ovmf_vars=variables,
        bridge_helper=next((h for h in BRIDGE_HELPERS if os.path.exists(h)), None),
        machines=qemu.machines if qemu else HostFacts().machines,
        virtiofsd=next((path for path in VIRTIOFSD if os.access(path, os.X_OK)), None),
        root=os.geteuid() == 0,
        ovmf_secboot_code=secboot_code,
        ovmf_ms_vars=ms_vars,
        swtpm=_program("swtpm"),
        passt=_program("passt"),
    ), qemu
