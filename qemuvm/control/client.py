"""QMP client facade: a synchronous API over qemu.qmp for the CLI, the pytest plugin and the smoke runner.

Each call opens the client monitor (qmp.sock), runs its commands and disconnects: QEMU serves one
client per monitor, so nobody may hold it. A busy monitor accepts the connection but sends no
greeting; the connect then times out and is retried until the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ExecInterruptedError, ExecuteError, QMPClient, QMPError

from qemuvm.errors import OperationError

T = TypeVar("T")

# qemu.qmp logs failed connects and disconnect EOFs at WARNING/ERROR; those are expected here.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)


class QmpError(OperationError):
    """QEMU answered a command with an error: its class and description."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        self.command, self.error_class, self.desc = command, error_class, desc
        super().__init__(f"{command} failed: {error_class}: {desc}")


class MonitorUnavailable(OperationError):
    """The client monitor could not be reached (QEMU is gone, or another client held it too long)."""


class QmpSession:
    """One connected client inside `Monitor.run`: `execute` raises QmpError on a QMP error."""

    def __init__(self, client: QMPClient, timeout: float) -> None:
        self.client, self.timeout = client, timeout

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        try:
            return await asyncio.wait_for(self.client.execute(command, arguments), self.timeout)
        except ExecuteError as exc:
            raise QmpError(command, exc.error_class, str(exc)) from None
        except (ExecInterruptedError, EOFError, ConnectionError) as exc:
            raise OperationError(f"QEMU closed the monitor before answering {command} (it exited or was killed: "
                                 f"{type(exc).__name__})") from None


    async def pass_fd(self, name: str, fd: int) -> None:
        """Hand QEMU an open file as `name` (SCM_RIGHTS + getfd): `fd:NAME` URIs then need no shell."""
        self.client.send_fd_scm(fd)
        await self.execute("getfd", {"fdname": name})


# Commands that end the VM or write (or read) host files with QEMU's rights: `qemuvm qmp` says so first.
_RISKY = {"quit": "ends QEMU at once (the guest is not asked)",
          "dump-guest-memory": "writes the guest's memory to a host file",
          "migrate": "streams the VM state to the URI (exec: runs a shell command)",
          "screendump": "writes a host file", "pmemsave": "writes a host file", "memsave": "writes a host file",
          "drive-backup": "writes a host file", "drive-mirror": "writes a host file",
          "blockdev-snapshot-sync": "creates a host file",
          "human-monitor-command": "runs an HMP command (which may do any of the above)"}


def risk(command: str, arguments: dict[str, Any] | None) -> str | None:
    """Why a QMP command deserves a warning before it runs, or None (pure)."""
    if command in _RISKY:
        return _RISKY[command]
    if command in ("blockdev-add", "blockdev-create") and "filename" in str(arguments or {}):
        return "opens or creates a host file with QEMU's rights"
    return None


class Monitor:
    """The client monitor of one instance."""

    def __init__(self, socket: Path, *, timeout: float = 10.0, busy_timeout: float = 10.0) -> None:
        self.socket = socket
        self.timeout = timeout  # per QMP command
        self.busy_timeout = busy_timeout  # how long to retry a monitor that is busy or not there yet

    def run(self, work: Callable[[QmpSession], Awaitable[T]]) -> T:
        """Connect, run `work(session)`, disconnect; all in one asyncio.run()."""
        return asyncio.run(self._run(work))

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """One QMP command; its `return` value."""
        return self.run(lambda session: session.execute(command, arguments))

    async def _connect(self) -> QMPClient:
        deadline = time.monotonic() + self.busy_timeout
        while True:
            client = QMPClient("qemuvm")
            try:
                # A busy monitor never greets: a short timeout, then try again.
                await asyncio.wait_for(client.connect(str(self.socket)), 2.0)
                return client
            except Exception as exc:  # ConnectError (wrapping OSError) or a timeout
                await _quiet_disconnect(client)
                if time.monotonic() >= deadline:
                    cause = getattr(exc, "exc", None) or exc
                    raise MonitorUnavailable(f"cannot reach the QMP monitor {self.socket}: "
                                             f"{cause or type(exc).__name__}") from None
                await asyncio.sleep(0.1)

    async def _run(self, work: Callable[[QmpSession], Awaitable[T]]) -> T:
        client = await self._connect()
        try:
            return await work(QmpSession(client, self.timeout))
        except TimeoutError:
            raise OperationError(f"QEMU did not answer within {self.timeout:g} s ({self.socket})") from None
        except QMPError as exc:  # the connection broke under a command (QEMU exited or was killed)
            raise OperationError(f"the QMP connection to {self.socket} ended: {type(exc).__name__}") from None
        finally:
            await _quiet_disconnect(client)


async def _quiet_disconnect(client: QMPClient) -> None:
    with contextlib.suppress(Exception):  # EOFError after `quit` is normal
        await asyncio.wait_for(client.disconnect(), 5)
