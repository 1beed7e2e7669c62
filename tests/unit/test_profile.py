"""Loading and validation: positions, extends, --set, relative paths, error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qemuvm.errors import ProfileError, UsageError
from qemuvm.profile.load import load_profile, parse_override
from qemuvm.profile.model import json_schema
from qemuvm.profile.types import parse_duration, parse_size
from qemuvm.profile.validate import load_and_validate

REPO = Path(__file__).resolve().parents[2]


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def problems(path: Path, *overrides: str) -> list[str]:
    with pytest.raises(ProfileError) as caught:
        load_and_validate(str(path), overrides)
    return caught.value.problems


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_defaults_and_name_from_file_stem(tmp_path: Path) -> None:
    profile = load_and_validate(str(write(tmp_path, "web1.yaml", "{}\n")))
    assert profile.name == "web1"
    assert profile.machine.memory == 512 and profile.machine.cpus == 1 and profile.machine.accel == "kvm"
    assert [nic.mode for nic in profile.network] == ["user"]
    assert profile.display is None and profile.ready is None


def test_error_has_file_line_path_and_allowed_values(tmp_path: Path) -> None:
    path = write(tmp_path, "web.yaml", "machine:\n  cpus: 2\n\n\n\n  memory: 1Q\n")
    assert problems(path) == ["web.yaml:6: machine.memory: '1Q' is not a size such as 512M or 2G"]


def test_all_errors_at_once_in_file_order(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "machine:\n  accel: kvmm\n  memroy: 1G\nnetwork:\n  - mode: tap\n")
    assert problems(path) == [
        "p.yaml:2: machine.accel: 'kvmm' is not one of 'kvm', 'tcg' or 'auto'",
        "p.yaml:3: machine.memroy: unknown field; did you mean 'memory'?",
        "p.yaml:5: network[0]: mode tap needs ifname, the existing tap device",
    ]


def test_unknown_top_level_key_suggests(tmp_path: Path) -> None:
    assert problems(write(tmp_path, "p.yaml", "disk: []\n")) == ["p.yaml:1: disk: unknown field; did you mean 'disks'?"]


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    [problem] = problems(write(tmp_path, "bad.yaml", "machine:\n  cpus: [1\n  memory: 1G\n"))
    assert problem.startswith("bad.yaml:") and "YAML syntax error" in problem


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    assert problems(write(tmp_path, "d.yaml", "machine:\n  cpus: 1\n  cpus: 2\n")) == [
        "d.yaml:3: machine.cpus: duplicate key"
    ]


def test_profile_must_be_a_mapping(tmp_path: Path) -> None:
    assert problems(write(tmp_path, "l.yaml", "- a\n- b\n")) == [
        "l.yaml:1: (profile): a profile is a YAML mapping of fields, not a list"
    ]


def test_control_characters_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", 'boot:\n  kernel: ./k\n  cmdline: "console=ttyS0\\nrm -rf /"\n')
    assert problems(path) == [
        "c.yaml:3: boot.cmdline: control characters (newline, tab, ...) are not allowed here"
    ]


def test_vnc_beyond_loopback_needs_password(tmp_path: Path) -> None:
    path = write(tmp_path, "v.yaml", "display:\n  vnc:\n    listen: 0.0.0.0\n")
    assert problems(path) == ["v.yaml:2: display.vnc: listening on 0.0.0.0 (not loopback) requires password_file"]
    ok = write(tmp_path, "v2.yaml", "display:\n  vnc:\n    listen: 0.0.0.0\n    password_file: pw\n")
    assert load_and_validate(str(ok)).display.vnc.password_file == str(tmp_path / "pw")


def test_extra_args_conflict_and_daemonize(tmp_path: Path) -> None:
    path = write(tmp_path, "x.yaml", "qemu:\n  extra_args:\n    - -m\n    - '1024'\n    - -daemonize\n    - -rtc\n")
    assert problems(path) == [
        "x.yaml:3: qemu.extra_args[0]: -m repeats an option qemuvm generates; set the profile field instead",
        "x.yaml:5: qemu.extra_args[2]: -daemonize is not allowed: the supervisor keeps QEMU in the foreground",
    ]


def test_extends_chain_merges_mappings_and_replaces_lists(tmp_path: Path) -> None:
    write(tmp_path, "base/base.yaml", "machine: {memory: 1G, cpus: 2}\ndisks:\n  - file: root.qcow2\n")
    write(tmp_path, "mid.yaml", "extends: base/base.yaml\nmachine: {cpus: 4}\n")
    leaf = write(tmp_path, "sub/leaf.yaml", "extends: ../mid.yaml\ndisks:\n  - file: other.raw\n")
    profile = load_and_validate(str(leaf))
    assert (profile.machine.memory, profile.machine.cpus) == (1024, 4)
    assert [d.file for d in profile.disks] == [str(tmp_path / "sub/other.raw")]
    assert profile.name == "leaf"


def test_relative_paths_resolve_against_the_defining_file(tmp_path: Path) -> None:
    write(tmp_path, "base/base.yaml", "boot:\n  kernel: vmlinuz\n  initrd: initrd.gz\n")
    leaf = write(tmp_path, "leaf.yaml", "extends: base/base.yaml\nboot: {initrd: ../x/initrd.gz}\n")
    profile = load_and_validate(str(leaf))
    assert profile.boot.kernel == str(tmp_path / "base/vmlinuz")
    assert profile.boot.initrd == str(tmp_path.parent / "x/initrd.gz")


def test_errors_point_into_the_file_that_wrote_the_value(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", "machine:\n  memory: lots\n")
    leaf = write(tmp_path, "leaf.yaml", "extends: base.yaml\n")
    assert problems(leaf) == ["base.yaml:2: machine.memory: 'lots' is not a size such as 512M or 2G"]


def test_extends_cycle_names_the_files(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    [problem] = problems(tmp_path / "a.yaml")
    assert "cycle a.yaml -> b.yaml -> a.yaml" in problem


def test_extends_missing_file(tmp_path: Path) -> None:
    assert problems(write(tmp_path, "a.yaml", "\nextends: nope.yaml\n")) == ["a.yaml:2: extends: 'nope.yaml' not found"]


def test_set_overrides_after_extends_with_yaml_values(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", "machine: {memory: 1G}\n")
    leaf = write(tmp_path, "leaf.yaml", "extends: base.yaml\ndisks: [{file: a.qcow2}]\n")
    profile = load_and_validate(
        str(leaf), ["machine.memory=2G", "machine.cpus=3", "disks.0.ephemeral=true", "network=[]"]
    )
    assert (profile.machine.memory, profile.machine.cpus) == (2048, 3)
    assert profile.disks[0].ephemeral is True and profile.network == []


def test_set_error_is_attributed_to_the_override(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "{}\n")
    assert problems(path, "machine.cpus=many") == [
        "--set machine.cpus=many: machine.cpus: 'many' is not a whole number"
    ]


def test_set_relative_path_is_relative_to_cwd(tmp_path: Path) -> None:
    path = write(tmp_path, "sub/p.yaml", "{}\n")
    profile = load_and_validate(str(path), ["boot.kernel=k/vmlinuz"])
    assert profile.boot.kernel == os.path.join(os.getcwd(), "k/vmlinuz")


@pytest.mark.parametrize("text", ["novalue", "=1", "a..b=1"])
def test_bad_set_syntax(text: str) -> None:
    with pytest.raises(UsageError):
        parse_override(text)


def test_name_override_and_invalid_name(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "name: web\n")
    assert load_profile(path, name="other").data["name"] == "other"
    [problem] = problems(write(tmp_path, "q.yaml", "name: '-bad name'\n"))
    assert problem.startswith("q.yaml:1: name: '-bad name' is not")


@pytest.mark.parametrize(
    ("text", "expected"), [("512M", 512 << 20), ("2G", 2 << 30), ("1.5G", 3 << 29), ("7g", 7 << 30), (4096, 4096)]
)
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(("text", "expected"), [("30s", 30), ("2m", 120), ("500ms", 0.5), (90, 90), ("1h", 3600)])
def test_durations(text: object, expected: float) -> None:
    assert parse_duration(text) == expected


def test_forward_spellings_are_equivalent(tmp_path: Path) -> None:
    path = write(tmp_path, "f.yaml", "network:\n  - forwards:\n      - tcp:127.0.0.1:2222-:22\n"
                 "      - {host: 2222, guest: 22}\n")
    first, second = load_and_validate(str(path)).network[0].forwards
    assert first == second


def test_committed_schema_is_in_sync() -> None:
    committed = json.loads((REPO / "qemuvm" / "profile.schema.json").read_text())
    assert committed == json_schema(), "regenerate with: qemuvm schema > qemuvm/profile.schema.json"


def test_example_profiles_are_valid() -> None:
    examples = sorted((REPO / "profiles").glob("*.yaml"))
    assert examples, "profiles/ has no examples"
    for example in examples:
        load_and_validate(str(example))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qemuvm", *args], capture_output=True, text=True, cwd=cwd,
                          check=False)


def test_cli_validate_exit_codes_and_no_traceback(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", "machine: {accel: tcg}\n")
    bad = write(tmp_path, "bad.yaml", "machine: {memory: 1Q}\n")
    assert _cli("validate", str(good), cwd=tmp_path).returncode == 0
    result = _cli("validate", "good.yaml", "bad.yaml", "missing.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "bad.yaml:1: machine.memory: '1Q' is not a size such as 512M or 2G" in result.stderr
    assert "missing.yaml: profile not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert _cli("render", str(bad), cwd=tmp_path).returncode == 2


def test_memory_too_small_to_boot_is_refused_and_sizes_take_every_qemu_suffix() -> None:
    from qemuvm.profile.load import load_text
    from qemuvm.profile.validate import validate

    for tiny in ("1", "15M", "8192K"):
        with pytest.raises(ProfileError, match=r"machine.memory: .* too little to boot anything; at least 16M"):
            validate(load_text(f"name: x\nmachine: {{memory: {tiny}}}\n"))
    assert validate(load_text("name: x\nmachine: {memory: 16M}\n")).machine.memory == 16
    assert parse_size("2P") == 2 << 50 and parse_size("1E") == 1 << 60 and parse_size("3t") == 3 << 40
