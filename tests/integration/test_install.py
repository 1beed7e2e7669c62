"""qemuvm installed every way a user installs it boots the demo guest (issue 10).

Each mode gets a throwaway virtual environment made by the distribution's own python3 (PEP 668: nothing is
installed system-wide) and a copy of the working tree; `qemuvm up` of the demo profile must reach READY and
`qemuvm down` must power it off. The README's first command is also run as written, with /usr/bin/python3
first on PATH, in a scratch copy of the checkout.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO

from qemuvm.runtime import instance

pytestmark = [pytest.mark.integration, pytest.mark.install]

SYSTEM_PYTHON = Path("/usr/bin/python3")
DEMO_SETS = ["--set", "ready.timeout=300s", "--set", "network.0.forwards.0=tcp:127.0.0.1:0-:22"]
_SKIP = shutil.ignore_patterns(".venv", "build", ".git", "__pycache__", "*.egg-info", ".pytest_cache",
                               ".ruff_cache", ".hypothesis", "dist")


def run(argv: list[str | Path], env: dict[str, str], timeout: float = 600,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=cwd or Path(env["QEMUVM_HOME"]).parent, check=False)  # not this checkout
    assert done.returncode == 0, f"{argv} -> {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="qi", dir="/tmp"))
    yield path
    for paths in instance.list_instances(path / "home"):  # whatever a failed test left running
        for proc in (instance.live_supervisor(instance.read_state(paths)),
                     instance.proven_qemu(instance.read_state(paths))):
            if proc is not None:
                with contextlib.suppress(Exception):
                    proc.kill()
    shutil.rmtree(path, ignore_errors=True)


def clean_env(scratch: Path, path_first: str) -> dict[str, str]:
    """A user's environment: no virtual environment active, the state in the scratch folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(QEMUVM_HOME=str(scratch / "home"), PATH=f"{path_first}:/usr/local/bin:/usr/bin:/bin",
               XDG_CACHE_HOME=os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")))
    return env


def boot_demo(qemuvm: Path, env: dict[str, str], name: str) -> None:
    """`qemuvm up profiles/demo.yaml` to READY, then `qemuvm down`: the guest powered off through ACPI."""
    up = run([qemuvm, "up", REPO / "profiles" / "demo.yaml", "--name", name, *DEMO_SETS, "--json"], env)
    assert json.loads(up.stdout)["ready"] is True
    down = run([qemuvm, "down", name, "--json"], env)
    assert json.loads(down.stdout)["step"] == "acpi"
    assert "QEMUVM_GUEST_POWEROFF" in (Path(env["QEMUVM_HOME"]) / name / "serial.log").read_text(errors="replace")


def python() -> str:
    return str(SYSTEM_PYTHON if SYSTEM_PYTHON.exists() else sys.executable)


@pytest.mark.parametrize("mode", ["wheel", "plain", "editable", "compat", "pipx"])
def test_every_install_mode_boots_the_demo(scratch: Path, test_guest, mode: str) -> None:
    source = scratch / "src"
    shutil.copytree(REPO, source, ignore=_SKIP)
    env = clean_env(scratch, str(scratch / "bin"))
    if mode == "pipx":
        if shutil.which("pipx") is None:
            pytest.skip("pipx is not installed (scripts/setup installs it)")
        env.update(PIPX_HOME=str(scratch / "pipx"), PIPX_BIN_DIR=str(scratch / "bin"))
        run(["pipx", "install", source], env)
        qemuvm = scratch / "bin" / "qemuvm"
    else:
        venv = scratch / "venv"
        run([python(), "-m", "venv", venv], env)
        pip = [venv / "bin" / "python", "-m", "pip", "install", "-q"]
        if mode == "wheel":
            run([venv / "bin" / "python", "-m", "pip", "wheel", "-q", "--no-deps", "-w", scratch / "dist", source],
                env)
            run([*pip, next((scratch / "dist").glob("qemuvm-*.whl"))], env)
        elif mode == "plain":
            run([*pip, source], env)
        elif mode == "editable":  # setuptools' default: an import-hook finder registered by a .pth file
            run([*pip, "-e", source], env)
        else:
            run([*pip, "-e", source, "--config-settings", "editable_mode=compat"], env)
        qemuvm = venv / "bin" / "qemuvm"
    # The package really is the one this mode installed (not the checkout's .venv).
    venv_python = (scratch / "pipx" / "venvs" / "qemuvm" if mode == "pipx" else scratch / "venv") / "bin" / "python"
    where = run([venv_python, "-c", "import qemuvm; print(qemuvm.__file__)"], env).stdout.strip()
    assert where.startswith(str(source)) if mode in ("editable", "compat") else "site-packages" in where, where
    boot_demo(qemuvm, env, f"inst-{mode}")


def readme_command(number: int) -> str:
    block = (REPO / "README.md").read_text().split("```")[1].split("\n", 1)[1]  # after the language tag
    commands = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return commands[number - 1].strip()


@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs the distribution's /usr/bin/python3")
def test_readme_command_1_with_the_distribution_python(scratch: Path) -> None:
    """README command 1 as written, with /usr/bin/python3 first on PATH, in a scratch copy; then down."""
    source = scratch / "clone"
    shutil.copytree(REPO, source, ignore=_SKIP)
    env = clean_env(scratch, f"/usr/bin:{scratch / 'bin'}")
    env.update(QEMUVM_BIN_DIR=str(scratch / "bin"))
    command = readme_command(1)
    assert command.startswith("bash scripts/setup") and "qemuvm up profiles/demo.yaml" in command
    done = run(["bash", "-c", command], env, timeout=900, cwd=source)
    assert "setup: done" in done.stdout
    assert os.path.realpath(scratch / "bin" / "qemuvm") == str(source / ".venv" / "bin" / "qemuvm")
    venv_python = (source / ".venv" / "bin" / "python").resolve()
    assert venv_python.parent == Path("/usr/bin")  # the venv is the distribution python's
    status = json.loads(run([scratch / "bin" / "qemuvm", "status", "demo", "--json"], env).stdout)
    assert status["state"] == "running"
    assert json.loads(run([scratch / "bin" / "qemuvm", "down", "demo", "--json"], env).stdout)["step"] == "acpi"
