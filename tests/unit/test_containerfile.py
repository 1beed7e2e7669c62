"""The Containerfile, parsed (without a container engine): a Debian base, the packages qemuvm runs with (the
same names scripts/setup installs), qemuvm installed from this checkout, an exec-form entrypoint, and the
state folder the Jobs of `qemuvm export k8s-job` mount. tests/integration/test_container_image.py builds and
runs it where an engine works."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from qemuvm.convert import k8s_job

REPO = Path(__file__).resolve().parents[2]
RUNTIME = {"qemu-system-x86", "qemu-utils", "ovmf", "passt", "openssh-client", "python3", "python3-venv"}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Containerfile").read_text())
    parsed = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            parsed.append((keyword.upper(), rest.strip()))
    return parsed


def test_it_parses_into_known_instructions() -> None:
    parsed = instructions()
    assert {keyword for keyword, _ in parsed} <= {"FROM", "RUN", "COPY", "ENV", "ENTRYPOINT", "CMD", "ARG"}
    assert parsed[0][0] == "FROM" and re.match(r"docker\.io/library/debian:12", parsed[0][1])


def test_it_installs_what_qemuvm_runs_with_the_names_setup_uses() -> None:
    runs = " ".join(args for keyword, args in instructions() if keyword == "RUN")
    words = set(shlex.split(runs))
    assert words >= RUNTIME, RUNTIME - words
    setup = (REPO / "scripts" / "setup").read_text()
    for package in RUNTIME - {"python3"}:
        assert re.search(rf"(^|\s){re.escape(package)}(\s|$)", setup, re.M), package


def test_it_installs_qemuvm_from_the_checkout() -> None:
    parsed = instructions()
    copies = [shlex.split(args) for keyword, args in parsed if keyword == "COPY"]
    sources = {source for copy in copies for source in copy[:-1]}
    assert {"pyproject.toml", "qemuvm"} <= sources
    assert all((REPO / source).exists() for source in sources)
    assert any("pip install" in args and "/src/qemuvm" in args for keyword, args in parsed if keyword == "RUN")


def test_entrypoint_is_an_argv_and_the_state_folder_is_what_the_job_mounts() -> None:
    parsed = dict(instructions())
    assert json.loads(parsed["ENTRYPOINT"]) == ["qemuvm"]
    assert parsed["ENV"] == f"QEMUVM_HOME={k8s_job.STATE}"
