"""The README's two commands and CI must not drift apart."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEST_COMMAND = "bash scripts/setup && bash scripts/test"
DEMO_COMMAND = "bash scripts/setup && scripts/build-test-guest && qemuvm up profiles/demo.yaml"


def test_readme_starts_with_the_two_commands() -> None:
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert DEMO_COMMAND in first_block and TEST_COMMAND in first_block


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert TEST_COMMAND in [line.strip() for line in ci]


def test_scripts_are_executable() -> None:
    for script in ("setup", "test", "build-test-guest", "build-debian-image"):
        path = REPO / "scripts" / script
        assert path.exists() and path.stat().st_mode & 0o111, f"scripts/{script} is not executable"


def test_the_libvirt_walkthrough_runs_every_command_of_the_readme_table() -> None:
    """README "Coming from libvirt": each qemuvm command of its table is a `run ...` line of
    scripts/libvirt-walkthrough (which tests/integration/test_libvirt_walkthrough.py runs)."""
    import re

    readme = (REPO / "README.md").read_text()
    table = readme.split("## Coming from libvirt", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `") or line.startswith("| virsh")]
    commands = [command for row in rows for command in re.findall(r"`qemuvm ([^`]+)`", row.split("|")[2])]
    script = (REPO / "scripts" / "libvirt-walkthrough").read_text()
    run = {line.split("#")[0].strip()[len("run "):] for line in script.splitlines() if line.startswith("run ")}
    assert len(commands) >= 17
    missing = [command for command in commands if command not in run
               and command not in ("top", "network create default")]  # shown as alternatives
    assert not missing, f"README commands the walkthrough does not run: {missing}"


def test_the_performance_table_is_the_bench_s_own() -> None:
    """scripts/bench --readme writes its table between the markers, with the command that made it."""
    text = (REPO / "README.md").read_text()
    start, end = text.index("<!-- bench:start -->"), text.index("<!-- bench:end -->")
    block = text[start:end]
    assert "`scripts/bench" in block and "| measurement | qemuvm | raw QEMU | ratio |" in block
    bench = (REPO / "scripts" / "bench").read_text()
    assert "<!-- bench:start -->" in bench and "<!-- bench:end -->" in bench


def test_the_scripts_say_to_run_setup_under_a_bare_python(tmp_path) -> None:
    """Under the distribution's python3 without scripts/setup's .venv: one sentence naming setup, exit 1."""
    import shutil
    import subprocess

    bare = "/usr/bin/python3"
    probe = subprocess.run([bare, "-c", "import pycdlib, psutil"], capture_output=True)
    if probe.returncode == 0:
        import pytest

        pytest.skip(f"{bare} has pycdlib and psutil itself")
    (tmp_path / "scripts").mkdir()
    for script in ("build-test-guest", "bench"):
        copy = tmp_path / "scripts" / script  # beside no .venv
        shutil.copy(REPO / "scripts" / script, copy)
        done = subprocess.run([bare, str(copy), "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and "run `bash scripts/setup` first" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
