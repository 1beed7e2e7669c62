"""Shared by the hostile-input tests (profiles, libvirt XML, exports): the CLI in a child process bounded in
memory and time, and the check that a refusal is one clear sentence with exit 2."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

MEMORY_LIMIT = 1 << 30  # 1 GiB of address space: a bomb that expands fails the limit, not the machine
TIMEOUT = 60


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def qemuvm(*args: str | Path, home: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, QEMUVM_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "qemuvm", *map(str, args)], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env, cwd=cwd, preexec_fn=_limits, check=False)


def refused(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr and "Error:" not in done.stderr.split("\n")[0][:6]
    for needle in needles:
        assert needle in done.stderr, done.stderr
