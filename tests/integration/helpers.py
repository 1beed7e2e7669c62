"""The one helper module of the integration tests: the CLI runner, the test guest's overrides and profile,
polling, liveness and teardown. Test modules import from here (pytest's `pythonpath` has this folder), never
from each other."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import yaml

from qemuvm.paths import InstancePaths
from qemuvm.runtime import helpers, instance
from qemuvm.runtime.records import StateView

REPO = Path(__file__).resolve().parents[2]
CI_SMOKE = REPO / "profiles" / "ci-smoke.yaml"
BOOT_TIMEOUT = 180.0  # TCG boot of the test guest: ~9 s idle, far more on a loaded CI host
T = TypeVar("T")


def cli(*args: str, timeout: float = 300, input: str | None = None, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`qemuvm ARGS` in a subprocess, captured (the environment carries QEMUVM_HOME from the fixtures)."""
    return subprocess.run([sys.executable, "-m", "qemuvm", *args], capture_output=True, text=True, input=input,
                          timeout=timeout, check=False, env=os.environ.copy() if env is None else env, cwd=cwd)


def guest_overrides(guest: Any) -> dict[str, object]:
    """profiles/ci-smoke.yaml pointed at the fixture's busybox guest, with a generous boot time for loaded hosts."""
    return {"boot.kernel": str(guest.vmlinuz), "boot.initrd": str(guest.initrd),
            "disks.0.file": str(guest.data_disk), "ssh.identity": str(guest.key), "ready.timeout": 300}


def guest_sets(guest: Any) -> list[str]:
    """The same overrides as `--set` options (without the ready timeout: smoke runs set their own)."""
    return [arg for key, value in guest_overrides(guest).items() if key != "ready.timeout"
            for arg in ("--set", f"{key}={value}")]


def guest_profile(folder: Path, guest: Any, name: str, *, cmdline: str = "", **sections: Any) -> Path:
    """A profile file for the busybox test guest (TCG, 256M, ready on QEMUVM_GUEST_READY)."""
    data: dict[str, Any] = {
        "name": name,
        "machine": {"accel": "tcg", "memory": "256M"},
        "boot": {"kernel": str(guest.vmlinuz), "initrd": str(guest.initrd),
                 "cmdline": f"console=ttyS0 {cmdline}".strip()},
        "ready": {"serial": "QEMUVM_GUEST_READY", "timeout": BOOT_TIMEOUT},
        "shutdown": {"timeout": "20s"},
    }
    data.update(sections)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def poll(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Call `probe` every 100 ms until it returns something truthy; fail with `what` at the deadline.

    For conditions with no event to wait on (a pid gone, a file's content); the interval is a poll, not a
    synchronisation."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def listening(path: Path) -> bool:
    """Something accepts on the unix socket `path`. QEMU's socket file appears at bind(), a moment before
    listen(), and under load that is long enough for a connect in between to be refused."""
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def alive(pid: int | None) -> bool:
    return instance.process_if_alive(pid, None) is not None


def state_at(paths: InstancePaths) -> StateView:
    """The instance's state as commands read it (an empty view when it has none)."""
    return instance.read_state(paths) or StateView()


def state_of(name: str) -> StateView:
    return state_at(InstancePaths.for_name(name))


def assert_gone(result: dict[str, Any]) -> None:
    """Neither the QEMU nor the supervisor recorded in a status result is alive."""
    state = state_of(result["name"])
    assert not alive(state.qemu_pid), "QEMU still runs"
    # The supervisor records the final state, then exits.
    poll("the supervisor to exit", lambda: instance.live_supervisor(state) is None, 10)


def kill_everything(home: Path) -> None:
    """Teardown: SIGKILL every supervisor, then every proven QEMU, then stop every proven helper, of every
    instance below `home`."""
    for paths in instance.list_instances(home):
        supervisor = instance.live_supervisor(instance.read_state(paths))
        if supervisor is not None:
            supervisor.kill()
            poll("the supervisor to die", lambda s=supervisor: not alive(s.pid), 10)
        qemu = instance.proven_qemu(instance.read_state(paths))
        if qemu is not None:
            qemu.kill()
            poll("QEMU to die", lambda q=qemu: not alive(q.pid), 10)
        helpers.stop((instance.read_state(paths) or StateView()).helpers, grace=1.0)


@dataclass(frozen=True)
class PngSummary:
    width: int
    height: int
    colours: int  # distinct pixel values (a blank screen has 1); counted up to 256


def read_png(path: Path) -> PngSummary:
    """Decode the PNG for real (Pillow), so a truncated or malformed file fails the test."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        colours = image.getcolors(maxcolors=256)
        return PngSummary(image.width, image.height, len(colours) if colours else 256)


def screenshot_until_not_blank(name: str, out: Path, timeout: float = 60) -> PngSummary:
    """`qemuvm screenshot` until the screen shows more than one colour (a VM's screen starts black).

    Every call must succeed; polls at most every 100 ms, fails at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = cli("screenshot", name, str(out), timeout=120)
        assert result.returncode == 0, result.stderr
        summary = read_png(out)
        if summary.colours > 1:
            return summary
        assert time.monotonic() < deadline, f"the screen of {name} stayed a single colour for {timeout} s"
        time.sleep(0.1)


def up_with_supervisor_stopped_at(home: Path, profile: Path, step: str) -> tuple[subprocess.Popen[str], int]:
    """`qemuvm up --no-wait` whose supervisor stops itself (SIGSTOP) at `step` (supervisor_stops.py); returns up
    and the supervisor's pid."""
    marker = home / f"stop-{step}"
    marker.touch()
    up = subprocess.Popen([sys.executable, str(Path(__file__).with_name("supervisor_stops.py")), "up", step,
                           str(marker), "up", str(profile), "--no-wait", "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stopped_supervisor() -> int | None:
        for proc in psutil.process_iter(["cmdline", "status"]):
            cmdline = proc.info["cmdline"] or []
            if "qemuvm.runtime.supervisor" in cmdline and str(marker) in cmdline \
                    and proc.info["status"] == psutil.STATUS_STOPPED:
                return proc.pid
        return None
    return up, poll(f"the supervisor to stop at {step}", stopped_supervisor, 60)


def helper_pids(home: Path, program: str) -> list[int]:
    """Every `program` process (virtiofsd, passt) serving a socket below `home`, whatever state.json says. By
    argv[0]: passt re-executes itself as passt.avx2 where the CPU has AVX2 (same pid and argv)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or [""]
        if Path(argv[0]).name == program and str(home) in " ".join(argv):
            found.append(proc.pid)
    return found
