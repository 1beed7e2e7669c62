"""Start an instance's supervisor and wait until its QEMU runs (or fails, with QEMU's own words)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from qemuvm.errors import OperationError
from qemuvm.runtime import instance
from qemuvm.runtime.instance import CRASHED, PAUSED, RUNNING, STOPPED
from qemuvm.runtime.paths import InstancePaths

START_TIMEOUT = 60.0


def module_path() -> list[str]:
    """The supervisor's sys.path: the folder this qemuvm is imported from, then this process's path."""
    import qemuvm

    package_parent = str(Path(qemuvm.__file__).resolve().parent.parent)
    return list(dict.fromkeys([package_parent, *(entry for entry in sys.path if entry)]))


def start_supervisor(paths: InstancePaths) -> subprocess.Popen[bytes]:
    """`python -S -m qemuvm.runtime.supervisor DIR`, detached: its own session, stdio to supervisor.log.

    `-S` skips site initialisation (every .pth hook of every installed package): the supervisor gets this
    process's module path instead, which finds the same libraries, starts sooner and stays smaller. That path
    alone misses a qemuvm installed through an import hook (setuptools' default `pip install -e .`, whose
    finder a .pth file registers), so the folder that holds this very qemuvm package goes first.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(module_path()))
    with paths.supervisor_log.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-S", "-m", "qemuvm.runtime.supervisor", str(paths.root)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, cwd="/", env=env,
        )


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def failure_message(paths: InstancePaths, state: dict[str, Any] | None) -> str:
    """`NAME failed to start: how QEMU ended`, then the last lines of qemu.log."""
    last = (state or {}).get("last_exit") or {}
    if last.get("signal"):
        how = f"QEMU was killed by {last['signal']}"
    elif last.get("exit_code") is not None:
        how = f"QEMU exited with code {last['exit_code']}"
    else:
        how = "QEMU ended"
    log = instance.tail(paths.qemu_log, 12)
    return f"{paths.name} failed to start: {how}" + (f"; last lines of {paths.qemu_log}:\n{log}" if log else "")


def wait_until_up(paths: InstancePaths, proc: subprocess.Popen[bytes],
                  timeout: float = START_TIMEOUT) -> dict[str, Any]:
    """Poll state.json until the supervisor `proc` reports QEMU running (or paused); fail fast otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        state = instance.read_state(paths)
        ours = state is not None and state.get("supervisor_pid") == proc.pid and not state.get("supervisor_found_by")
        if ours and state["state"] in (RUNNING, PAUSED):
            return state
        if ours and state["state"] in (CRASHED, STOPPED):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)  # it exits right after recording: leave nothing running behind
            raise OperationError(failure_message(paths, state))
        if proc.poll() is not None:
            if instance.proven_qemu(state) is None and instance.scan_for_qemu(paths) is not None:
                # QEMU exists but has not written its pidfile yet: that takes it milliseconds.
                state = _pidfile_proof(paths)
            if instance.proven_qemu(state) is not None:
                # The supervisor died (killed) after starting QEMU: a new one adopts it and finishes the start.
                adopted = ensure_supervised(paths)
                if adopted is not None and adopted.get("state") in (RUNNING, PAUSED):
                    return adopted
                raise OperationError(failure_message(paths, adopted))
            final = instance.read_state(paths)
            if ours and final and final.get("state") in (CRASHED, STOPPED):  # recorded just before it exited
                raise OperationError(failure_message(paths, final))
            how = f"was killed by {_signal_name(-proc.returncode)}" if proc.returncode < 0 \
                else f"exited with code {proc.returncode}"
            raise OperationError(f"the supervisor of {paths.name} {how} before QEMU ran; nothing is left running; "
                                 f"last lines of {paths.supervisor_log}:\n{instance.tail(paths.supervisor_log)}")
        if time.monotonic() > deadline:
            raise OperationError(f"{paths.name} did not reach running within {timeout:g} s; "
                                 f"see {paths.qemu_log} and {paths.supervisor_log}")
        time.sleep(0.01)  # a stat and a small read: cheap, and `up` returns as soon as QEMU runs


def _pidfile_proof(paths: InstancePaths, timeout: float = 10.0) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    state = instance.read_state(paths)
    while instance.proven_qemu(state) is None and instance.scan_for_qemu(paths) is not None \
            and time.monotonic() < deadline:
        time.sleep(0.01)
        state = instance.read_state(paths)
    return state


def ensure_supervised(paths: InstancePaths, timeout: float = 15.0) -> dict[str, Any] | None:
    """Adopt a QEMU that runs without a supervisor (it was killed): start one and wait until it took over.

    Returns the current state. Does nothing when a supervisor is alive or no proven QEMU runs.
    """
    state = instance.read_state(paths)
    if instance.live_supervisor(state) is not None or instance.proven_qemu(state) is None:
        return state
    proc = start_supervisor(paths)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = instance.read_state(paths)
        if state and instance.live_supervisor(state) is not None and state.get("accel") is not None \
                and state.get("state") != instance.STARTING:
            return state
        if proc.poll() is not None:
            # Another supervisor won the race, or QEMU is gone: either way someone recorded it.
            return instance.read_state(paths)
        time.sleep(0.05)
    raise OperationError(f"could not re-adopt {paths.name} within {timeout:g} s; see {paths.supervisor_log}")
