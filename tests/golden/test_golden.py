"""Golden tests of load + validate + compile (libvirt's qemuxml2argv, Proxmox's cfg2cmd).

Each `profiles/NAME.yaml` compiles to `expected/NAME.argv` (exactly what `qemuvm render` prints) or
fails with `expected/NAME.error`. `QEMUVM_REGEN_GOLDEN=1 pytest tests/golden`
rewrites the expected files. See README.md here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from qemuvm.errors import UsageError
from qemuvm.profile.model import Profile
from qemuvm.profile.validate import load_and_validate
from qemuvm.qemu.compile import PortPlan, compile_options
from qemuvm.qemu.facts import HostFacts
from qemuvm.qemu.render import format_command
from qemuvm.runtime.paths import InstancePaths

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
}


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
    """("argv", text) or ("error", text), with the golden folder shown as @GOLDEN@.

    Must run with the golden folder as the working folder: error messages show files relative to it."""
    try:
        profile = load_and_validate(str(case.path.relative_to(GOLDEN)))
        options = compile_options(profile, paths_for(profile), case.host, case.ports)
        text = format_command(profile.qemu.binary, options) + "\n"
        kind = "argv"
    except UsageError as exc:
        kind, text = "error", f"{exc}\n"
    return kind, text.replace(str(GOLDEN), "@GOLDEN@")


@pytest.fixture
def in_golden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(GOLDEN)


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_golden(path: Path, in_golden: None) -> None:
    kind, text = render(Case.read(path))
    expected = EXPECTED / f"{path.stem}.{kind}"
    other = EXPECTED / f"{path.stem}.{'error' if kind == 'argv' else 'argv'}"
    if REGEN:
        expected.write_text(text)
        other.unlink(missing_ok=True)
    assert not other.exists(), f"{path.name} gave {kind}, but {other.name} exists (regenerate?)"
    assert expected.exists(), f"no {expected.name}: run QEMUVM_REGEN_GOLDEN=1 pytest tests/golden"
    assert text == expected.read_text()


def test_no_orphan_expected_files() -> None:
    stems = {p.stem for p in PROFILES}
    orphans = [f.name for f in EXPECTED.iterdir() if f.stem not in stems]
    assert not orphans, f"expected files without a profile: {orphans}"


def test_error_cases_are_named_err() -> None:
    """Profiles named err-* must fail and all others must compile, so a golden cannot silently flip."""
    for path in PROFILES:
        has_error = (EXPECTED / f"{path.stem}.error").exists()
        assert has_error == path.stem.startswith("err-"), path.name


def test_enough_cases() -> None:
    assert len(PROFILES) >= 40


def test_the_launched_argv_differs_only_as_documented(in_golden: None) -> None:
    """What the supervisor runs: the golden argv plus -S (paused until its monitor listens); and a later
    boot of the same instance drops boot.once (virt-install's first-boot-only install media)."""
    from qemuvm.qemu.compile import compile_argv

    case = Case.read(GOLDEN / "profiles" / "boot-once-install.yaml")
    profile = load_and_validate(str(case.path.relative_to(GOLDEN)))
    first = compile_argv(profile, paths_for(profile), case.host, case.ports)
    paused = compile_argv(profile, paths_for(profile), case.host, case.ports, start_paused=True)
    later = compile_argv(profile, paths_for(profile), case.host, case.ports, first_boot=False)
    assert [a for a in paused if a != "-S"] == first and paused.count("-S") == 1
    boot_first = first[first.index("-boot") + 1]
    boot_later = later[later.index("-boot") + 1]
    assert "once=" in boot_first and "once=" not in boot_later
    assert [a for a in later if a != boot_later] == [a for a in first if a != boot_first]


@pytest.mark.parametrize("path", [p for p in PROFILES if not p.name.startswith("err-")][:60],
                         ids=lambda p: p.stem)
def test_the_saved_profile_round_trips(path: Path, in_golden: None, tmp_path: Path) -> None:
    """profile.yaml as `up` saves it loads back to the same profile (so `start` runs what `up` ran)."""
    import yaml

    profile = load_and_validate(str(path.relative_to(GOLDEN)))
    saved = tmp_path / "profile.yaml"
    saved.write_text(yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False))
    assert load_and_validate(str(saved), (), profile.name) == profile
