"""Start a VM from a profile through qemuvm's own pipeline pieces: load, validate, prepare, compile.

The disk/display/snapshot tests need a running VM built the way `qemuvm up` builds it; this runs
prepare + compile_argv + QEMU (in its own session, killed on exit) without the supervisor, so those
tests do not depend on the lifecycle code. (Switch to qemuvm.api once the lifecycle suite is stable.)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from qemuvm.control.client import Monitor
from qemuvm.control.display import apply_vnc_password
from qemuvm.profile.load import load_text
from qemuvm.profile.model import Profile
from qemuvm.profile.validate import validate
from qemuvm.qemu.compile import PortPlan, compile_argv
from qemuvm.qemu.host import HostFacts
from qemuvm.runtime.paths import InstancePaths
from qemuvm.runtime.prepare import prepare


def free_port(start: int = 0) -> int:
    """A free loopback TCP port (from `start` on when given, e.g. 5900 for VNC)."""
    for port in range(start, start + 200) if start else [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


def profile_from(text: str, folder: Path, name: str) -> Profile:
    """Validate YAML text with relative paths resolved against `folder`."""
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        loaded = load_text(text, f"{name}.yaml")
    finally:
        os.chdir(cwd)
    loaded.data["name"] = name
    return validate(loaded)


class Vm:
    """One VM; a context manager that always kills QEMU. `home` is a short folder (socket paths)."""

    def __init__(self, profile: Profile, home: Path, ports: PortPlan | None = None) -> None:
        self.profile = profile
        self.paths = InstancePaths.for_name(profile.name, home)
        self.ports = ports or PortPlan()
        self.proc: subprocess.Popen[bytes] | None = None
        self.serial_start = 0

    def __enter__(self) -> Vm:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def start(self) -> None:
        self.paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for sock in self.paths.sockets():
            sock.unlink(missing_ok=True)
        prepare(self.profile, self.paths, HostFacts())
        self.serial_start = len(self.serial_text())  # serial.log is appended to across starts
        argv = compile_argv(self.profile, self.paths, HostFacts(), self.ports, start_paused=True)
        with self.paths.qemu_log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 15
        while not self.paths.qmp_socket.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"QEMU exited {self.proc.returncode}: {self.paths.qemu_log.read_text()}")
            assert time.monotonic() < deadline, "QEMU did not create its QMP socket within 15 s"
            time.sleep(0.05)
        vnc = self.profile.display.vnc if self.profile.display else None
        if vnc and vnc.password_file:
            apply_vnc_password(self.paths.qmp_socket, vnc.password_file)  # before cont, as the supervisor does
        self.qmp("cont")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def qmp(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        return Monitor(self.paths.qmp_socket).execute(command, arguments)

    def serial_text(self) -> str:
        try:
            return self.paths.serial_log.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_serial(self, needle: str, timeout: float, start: int | None = None) -> None:
        """Poll serial.log (100 ms) until `needle` appears after offset `start` (default: this start's output)."""
        start = self.serial_start if start is None else start
        deadline = time.monotonic() + timeout
        while needle not in self.serial_text()[start:]:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"QEMU exited before {needle!r}; serial:\n{self.serial_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r} within {timeout} s; serial:\n{self.serial_text()[-2000:]}")
            time.sleep(0.1)

    def ssh(self, key: Path, port: int, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
             "root@127.0.0.1", command],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
