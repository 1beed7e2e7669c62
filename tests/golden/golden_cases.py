"""The golden cases: each `profiles/NAME.yaml` with its pinned host facts and ports, and how one renders.
Shared by test_golden.py (expected files) and tests/integration/test_golden_qemu.py (real QEMU)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from qemuvm.errors import UsageError
from qemuvm.paths import InstancePaths
from qemuvm.profile.model import Profile
from qemuvm.profile.validate import load_and_validate
from qemuvm.qemu.compile import PortPlan, compile_options
from qemuvm.qemu.facts import HostFacts
from qemuvm.qemu.render import format_command

GOLDEN = Path(__file__).resolve().parent
PROFILES = sorted((GOLDEN / "profiles").glob("*.yaml"))
EXPECTED = GOLDEN / "expected"
INSTANCE_HOME = Path("/run/qemuvm-golden")
REGEN = os.environ.get("QEMUVM_REGEN_GOLDEN") == "1"

# Pinned host facts, so the goldens do not depend on the machine running the tests.
HARDWARE_KVM = HostFacts(
    kvm_usable=True,
    kvm_hardware=True,
    ovmf_code="/usr/share/OVMF/OVMF_CODE_4M.fd",
    ovmf_vars="/usr/share/OVMF/OVMF_VARS_4M.fd",
    bridge_helper="/usr/lib/qemu/qemu-bridge-helper",
    machines=("pc", "pc-i440fx-7.2", "q35", "pc-q35-7.2", "microvm", "isapc", "none"),
)
HOSTS = {
    "hardware-kvm": HARDWARE_KVM,
    "software-kvm": replace(HARDWARE_KVM, kvm_hardware=False),  # kvm_pvm, as on the CI machines
    "no-kvm": replace(HARDWARE_KVM, kvm_usable=False, kvm_hardware=False),
    "no-ovmf": replace(HARDWARE_KVM, ovmf_code=None, ovmf_vars=None),
    "no-bridge-helper": replace(HARDWARE_KVM, bridge_helper=None),
    "no-virtiofsd": replace(HARDWARE_KVM, virtiofsd=None),
    "not-root": replace(HARDWARE_KVM, root=False),
    "no-swtpm": replace(HARDWARE_KVM, swtpm=None),
}

# What the probe reads from qemu-system-aarch64 instead (qemuvm/qemu/probe.py: facts are per binary): its machine
# types and the aarch64 UEFI firmware, on the same (x86_64) host.
AARCH64_BINARY = {"ovmf_code": "/usr/share/AAVMF/AAVMF_CODE.fd", "ovmf_vars": "/usr/share/AAVMF/AAVMF_VARS.fd",
                  "machines": ("virt", "virt-7.2", "sbsa-ref", "none")}


def facts_for(profile: Profile, host: HostFacts) -> HostFacts:
    """`host` as probed through the profile's binary."""
    return replace(host, **AARCH64_BINARY) if profile.machine.arch == "aarch64" else host


@dataclass(frozen=True)
class Case:
    """A golden profile and the directives in its leading comments (`# golden-host: NAME`,
    `# golden-ports: {"vnc_port": N, "ssh_host_port": N, "forwards": [[nic, forward, port]]}`)."""

    path: Path
    host: HostFacts
    ports: PortPlan | None

    @classmethod
    def read(cls, path: Path) -> Case:
        directives = {}
        for line in path.read_text().splitlines():
            if line.startswith("# golden-"):
                key, _, value = line[len("# golden-"):].partition(":")
                directives[key.strip()] = value.strip()
        ports = None
        if "ports" in directives:
            data = json.loads(directives["ports"])
            forwards = {(nic, fwd): port for nic, fwd, port in data.get("forwards", [])}
            ports = PortPlan(data.get("vnc_port"), forwards, data.get("ssh_host_port"))
        return cls(path, HOSTS[directives.get("host", "hardware-kvm")], ports)


def paths_for(profile: Profile) -> InstancePaths:
    return InstancePaths(INSTANCE_HOME / profile.name)


def render(case: Case) -> tuple[str, str]:
    """("argv" | "error" (load/validate) | "compile-error", text), with the golden folder shown as @GOLDEN@.

    Must run with the golden folder as the working folder: error messages show files relative to it."""
    try:
        profile = load_and_validate(str(case.path.relative_to(GOLDEN)))
    except UsageError as exc:  # load and validation (ProfileError is a UsageError): FILE:LINE: field: message
        return "error", f"{exc}\n".replace(str(GOLDEN), "@GOLDEN@")
    try:
        options = compile_options(profile, paths_for(profile), facts_for(profile, case.host), case.ports)
    except UsageError as exc:  # a valid profile this host cannot run (no OVMF, no bridge helper, ...)
        return "compile-error", f"{exc}\n".replace(str(GOLDEN), "@GOLDEN@")
    return "argv", (format_command(profile.qemu.binary, options) + "\n").replace(str(GOLDEN), "@GOLDEN@")


KINDS = ("argv", "error", "compile-error")
