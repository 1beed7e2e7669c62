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
