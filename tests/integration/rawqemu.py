"""Run a raw QEMU process for integration tests: serial log, QMP socket, guaranteed cleanup.

This predates the qemuvm lifecycle API on purpose: the guest contract tests must not depend on the
code they will later be used to test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from helpers import listening
from qemu.qmp import QMPClient

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


class QemuTimeout(AssertionError):
    pass


class RawQemu:
    """One QEMU process (TCG) with a serial log file and a QMP unix socket in a short temp dir.

    Use as a context manager: QEMU is killed and the temp dir removed on exit, whatever happened.
    """

    def __init__(
        self,
        args: Iterable[str],
        *,
        machine: str = "q35",
        memory: str = "256",
        uefi: bool = False,
        paused: bool = False,
    ) -> None:
        # Short path: unix socket paths are limited to 107 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="qv", dir="/tmp"))
        self.serial_log = self.dir / "serial.log"
        self.serial_sock = self.dir / "serial.sock"
        self.qmp_sock = self.dir / "qmp.sock"
        argv = [
            "qemu-system-x86_64",
            "-machine",
            machine,
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            memory,
            "-display",
            "none",
            "-nodefaults",
            "-no-user-config",
            "-chardev",
            f"socket,id=ser0,path={self.serial_sock},server=on,wait=off,logfile={self.serial_log}",
            "-serial",
            "chardev:ser0",
            "-qmp",
            f"unix:{self.qmp_sock},server=on,wait=off",
        ]
        if uefi:
            vars_copy = self.dir / "OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, vars_copy)
            argv += [
                "-drive",
                f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive",
                f"if=pflash,format=raw,unit=1,file={vars_copy}",
            ]
        if paused:
            argv.append("-S")
        self.argv = argv + list(args)
        self.qemu_log = self.dir / "qemu.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._serial: socket.socket | None = None
        self.started = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> RawQemu:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def start(self) -> None:
        with self.qemu_log.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started = time.monotonic()
        # The sockets accept once QEMU has parsed its options (the file alone is not enough: it appears at bind(),
        # a moment before listen()); fail fast on a bad command line.
        deadline = time.monotonic() + 10
        while not (listening(self.qmp_sock) and listening(self.serial_sock)):
            if self.proc.poll() is not None:
                raise AssertionError(f"QEMU exited {self.proc.returncode}: {self.log_text()}")
            if time.monotonic() > deadline:
                raise QemuTimeout("QEMU did not create its sockets within 10 s")
            time.sleep(0.02)

    def kill(self) -> None:
        if self._serial is not None:
            self._serial.close()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise QemuTimeout(f"QEMU still running after {timeout} s; serial:\n{self.serial_text()[-3000:]}") from None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- serial ------------------------------------------------------------------------------

    def serial_text(self) -> str:
        try:
            return self.serial_log.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_text(self) -> str:
        return self.qemu_log.read_text(errors="replace")

    def wait_serial(self, needle: str, timeout: float, *, start: int = 0) -> float:
        """Poll the serial log until `needle` appears after offset `start`; return seconds since
        QEMU started. Raises QemuTimeout (with the log tail) when the deadline passes or QEMU exits."""
        deadline = time.monotonic() + timeout
        while True:
            if needle in self.serial_text()[start:]:
                return time.monotonic() - self.started
            self._drain_serial()
            if not self.running():
                # QEMU may have written the needle just before exiting.
                if needle in self.serial_text()[start:]:
                    return time.monotonic() - self.started
                raise AssertionError(
                    f"QEMU exited before {needle!r}; serial:\n"
                    f"{self.serial_text()[-3000:]}\nqemu log:\n{self.log_text()}"
                )
            if time.monotonic() > deadline:
                raise QemuTimeout(f"no {needle!r} on serial within {timeout} s; serial:\n{self.serial_text()[-3000:]}")
            time.sleep(0.05)

    def serial_write(self, text: str) -> None:
        """Type text on the serial port. The connection stays open: QEMU drops input it has not
        yet fed to the UART when the client disconnects."""
        if self._serial is None:
            self._serial = socket.socket(socket.AF_UNIX)
            self._serial.connect(str(self.serial_sock))
            self._serial.setblocking(False)
        self._drain_serial()
        self._serial.setblocking(True)
        self._serial.sendall(text.encode())
        self._serial.setblocking(False)

    def _drain_serial(self) -> None:
        # Output also reaches our connection; read it so QEMU never blocks on a full socket.
        if self._serial is None:
            return
        try:
            while self._serial.recv(65536):
                pass
        except (BlockingIOError, OSError):
            pass

    # -- QMP ---------------------------------------------------------------------------------

    def host_port(self, guest_port: int) -> int:
        """The host port QEMU's user network bound for a forward written with host port 0 (QEMU picks a free
        one itself, so no other process can take it between choosing and binding)."""
        table = self.qmp("human-monitor-command", {"command-line": "info usernet"})
        for line in table.splitlines():
            fields = line.split()
            if fields and fields[0].startswith("TCP[HOST_FORWARD]") and fields[-3] == str(guest_port):
                return int(fields[3])
        raise AssertionError(f"no forward to guest port {guest_port} in:\n{table}")

    def qmp(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 10) -> Any:
        """Run one QMP command on a fresh connection (one client at a time, as QEMU allows)."""

        async def go() -> Any:
            client = QMPClient("test")
            await asyncio.wait_for(client.connect(str(self.qmp_sock)), timeout)
            try:
                return await asyncio.wait_for(client.execute(command, arguments), timeout)
            finally:
                with contextlib.suppress(EOFError):  # normal after `quit`
                    await asyncio.wait_for(client.disconnect(), timeout)

        return asyncio.run(go())

    def qmp_session(self) -> QMPClient:
        """A QMPClient for async use (events); the caller connects it to self.qmp_sock."""
        return QMPClient("test-events")
