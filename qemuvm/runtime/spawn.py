"""Spawning supervisors: `python -S -m qemuvm.runtime.supervisor`, detached, reaped; and the one a command
starts before it knows its instance (Prestart). Standard library only, so that the CLI can load this first
thing, before the api: an `up`'s supervisor then starts its own interpreter and imports while the CLI still
imports, parses and finds its instance (the critical path of a start; issue 28).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qemuvm.paths import InstancePaths

# The supervisor's interpreter arguments. (The fault tests run `up` through an entry point of their own that
# points this at a wrapper, which stops the supervisor at a named step: tests/integration/supervisor_stops.py.)
SUPERVISOR = ["-S", "-m", "qemuvm.runtime.supervisor"]
_SUPERVISORS: list[subprocess.Popen[bytes]] = []
_EARLY: list[Prestart] = []  # the supervisor a command started before it parsed its arguments


def module_path() -> list[str]:
    """The supervisor's sys.path: the folder this qemuvm is imported from, then this process's path."""
    import qemuvm

    package_parent = str(Path(qemuvm.__file__).resolve().parent.parent)
    return list(dict.fromkeys([package_parent, *(entry for entry in sys.path if entry)]))


def supervisor_process(args: list[str], **stdio: Any) -> subprocess.Popen[bytes]:
    """`python -S -m qemuvm.runtime.supervisor ARGS`, detached: its own session.

    `-S` skips site initialisation (every .pth hook of every installed package): the supervisor gets this
    process's module path instead, which finds the same libraries, starts sooner and stays smaller. That path
    alone misses a qemuvm installed through an import hook (setuptools' default `pip install -e .`, whose
    finder a .pth file registers), so the folder that holds this very qemuvm package goes first.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(module_path()))
    proc = subprocess.Popen([sys.executable, *SUPERVISOR, *args], **stdio,
                            start_new_session=True, close_fds=True, cwd="/", env=env)
    # Kept while it runs: a Popen freed while its child runs executes __del__, where a Ctrl-C arriving at that
    # moment is swallowed ("Exception ignored in"). A daemon thread reaps it when it exits, so a long-lived
    # caller (a pytest session, a server) collects no zombie per VM; a CLI process simply exits first.
    _SUPERVISORS.append(proc)
    threading.Thread(target=_reap, args=(proc,), name=f"reap-{proc.pid}", daemon=True).start()
    return proc


def _reap(proc: subprocess.Popen[bytes]) -> None:
    proc.wait()
    with contextlib.suppress(ValueError):
        _SUPERVISORS.remove(proc)


class Prestart:
    """A supervisor started before `up` knows its instance, so that its imports (asyncio, qemu.qmp, psutil:
    most of a supervisor's start) overlap with up's own validation, compile and prepare. `take` hands it the
    instance folder over its stdin; unused, it gets EOF and exits without touching anything."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = supervisor_process(
            ["--instance-from-stdin"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def take(self, paths: InstancePaths) -> subprocess.Popen[bytes] | None:
        """The prestarted supervisor, now supervising `paths`; None when it is used up or gone."""
        proc, self.proc = self.proc, None
        if proc is None or proc.stdin is None or proc.poll() is not None:
            return None
        try:
            proc.stdin.write(f"{paths.root}\n".encode())
            proc.stdin.close()
        except OSError:  # it died meanwhile: a normal start instead
            return None
        return proc

    def close(self) -> None:
        """Unused: EOF ends it once its imports are done, and its reaper thread reaps it (nobody waits)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    def __enter__(self) -> Prestart:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def prestart() -> None:
    """Start a supervisor now, for the `up` this process is about to run (the CLI calls this first thing)."""
    if not _EARLY:
        _EARLY.append(Prestart())


def take_early() -> Prestart:
    """The supervisor `prestart` started, or a new one."""
    return _EARLY.pop() if _EARLY else Prestart()


def release_early() -> None:
    """One that no `up` took (the arguments were wrong, the command failed before it) goes at once."""
    while _EARLY:
        _EARLY.pop().close()
