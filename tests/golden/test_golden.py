"""Golden tests of load + validate + compile (libvirt's qemuxml2argv, Proxmox's cfg2cmd).

Each `profiles/NAME.yaml` compiles to `expected/NAME.argv` (exactly what `qemuvm render` prints) or
fails with `expected/NAME.error`. `QEMUVM_REGEN_GOLDEN=1 pytest tests/golden`
rewrites the expected files. See README.md here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from golden_cases import EXPECTED, GOLDEN, KINDS, PROFILES, REGEN, Case, paths_for, render

from qemuvm.profile.validate import load_and_validate


@pytest.fixture
def in_golden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(GOLDEN)


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_golden(path: Path, in_golden: None) -> None:
    kind, text = render(Case.read(path))
    expected = EXPECTED / f"{path.stem}.{kind}"
    others = [EXPECTED / f"{path.stem}.{k}" for k in KINDS if k != kind]
    if REGEN:
        expected.write_text(text)
        for other in others:
            other.unlink(missing_ok=True)
    stale = [other.name for other in others if other.exists()]
    assert not stale, f"{path.name} gave {kind}, but {stale} exist (regenerate?)"
    assert expected.exists(), f"no {expected.name}: run QEMUVM_REGEN_GOLDEN=1 pytest tests/golden"
    assert text == expected.read_text()


def test_no_orphan_expected_files() -> None:
    stems = {p.stem for p in PROFILES}
    orphans = [f.name for f in EXPECTED.iterdir() if f.stem not in stems]
    assert not orphans, f"expected files without a profile: {orphans}"


def test_error_cases_are_named_err() -> None:
    """Profiles named err-* must fail and all others must compile, so a golden cannot silently flip."""
    for path in PROFILES:
        has_error = any((EXPECTED / f"{path.stem}.{k}").exists() for k in ("error", "compile-error"))
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
