"""Test-only entry points for the fault tests: `up` whose supervisor stops itself (SIGSTOP) at one named
bring-up step, so a test can kill -9 it at exactly that step. Nothing of this ships in qemuvm: the supervisor
only raises an audit event at each step (`qemuvm.supervisor.step`, runtime/supervisor_base.checkpoint), and this
module listens to it.

    python supervisor_stops.py up STEP MARKER [qemuvm up arguments]   # the CLI, with its supervisors wrapped
    python -S supervisor_stops.py qemuvm.runtime.supervisor STEP MARKER [ARGS]   # what the wrapped `up` starts

The stop happens once, while MARKER exists (it is removed first). The wrapper's command line names the module
as an argument, as the real one's does: that is how commands prove a live supervisor (runtime/instance.py).
"""

from __future__ import annotations

import os
import runpy
import signal
import sys


def _supervisor(step: str, marker: str, args: list[str]) -> None:
    def hook(event: str, details: tuple) -> None:
        if event == "qemuvm.supervisor.step" and details and details[0] == step:
            try:
                os.unlink(marker)
            except FileNotFoundError:
                return
            os.kill(os.getpid(), signal.SIGSTOP)

    sys.addaudithook(hook)
    sys.argv = ["qemuvm.runtime.supervisor", *args]
    runpy.run_module("qemuvm.runtime.supervisor", run_name="__main__", alter_sys=True)


def _up(step: str, marker: str, args: list[str]) -> None:
    from qemuvm import cli
    from qemuvm.runtime import spawn

    spawn.SUPERVISOR = ["-S", os.path.abspath(__file__), "qemuvm.runtime.supervisor", step, marker]
    sys.argv = ["qemuvm", *args]
    cli.main()


if __name__ == "__main__":
    kind, wanted, path, *rest = sys.argv[1:]
    (_up if kind == "up" else _supervisor)(wanted, path, rest)
