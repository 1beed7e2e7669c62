"""The interactive serial console: a raw terminal on serial.sock; Ctrl-] detaches.

Without a terminal (pipes), stdin is copied to the guest and the guest's output to stdout; after
stdin ends, output keeps flowing until the guest has been quiet for `linger` seconds.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import termios
import time
import tty
from collections.abc import Iterator
from pathlib import Path

from qemuvm.errors import OperationError

DETACH = b"\x1d"  # Ctrl-]


def connect(path: Path, timeout: float = 5.0) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
    except OSError as exc:
        sock.close()
        raise OperationError(f"cannot connect to the serial console {path}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


@contextlib.contextmanager
def exclusive(lock: Path, name: str) -> Iterator[None]:
    """Hold the console lock of an instance: one interactive console at a time (`qemuvm console` or a `qemuvm
    web` serial pane), since QEMU's serial socket serves a single client and would leave a second one hanging."""
    from qemuvm.runtime.instance import LockTimeout, locked

    try:
        with locked(lock, timeout=None):
            yield
    except LockTimeout:
        raise OperationError(f"the serial console of {name} is in use (another `qemuvm console`, or a `qemuvm web` "
                             "page); detach that one first") from None


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def attach(path: Path, *, stdin_fd: int | None = None, stdout_fd: int | None = None, linger: float = 1.0) -> str:
    """Relay between the terminal (or pipes) and the serial socket. Returns why it ended:
    "detached" (Ctrl-]), "eof" (stdin ended and the guest went quiet) or "closed" (QEMU went away)."""
    stdin_fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    stdout_fd = sys.stdout.fileno() if stdout_fd is None else stdout_fd
    sock = connect(path)
    is_tty = os.isatty(stdin_fd)
    saved = termios.tcgetattr(stdin_fd) if is_tty else None
    if is_tty:
        _write_all(stdout_fd, b"Connected to the serial console; Ctrl-] detaches.\r\n")
        tty.setraw(stdin_fd)
    try:
        return _relay(sock, stdin_fd, stdout_fd, is_tty, linger)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
            _write_all(stdout_fd, b"\r\n")
        sock.close()


def _relay(sock: socket.socket, stdin_fd: int, stdout_fd: int, is_tty: bool, linger: float) -> str:
    stdin_open = True
    quiet_since = time.monotonic()
    while True:
        readers = [sock, stdin_fd] if stdin_open else [sock]
        ready, _, _ = select.select(readers, [], [], 0.1)
        if sock in ready:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                data = None
            if data == b"":
                return "closed"
            if data:
                _write_all(stdout_fd, data)
                quiet_since = time.monotonic()
        if stdin_open and stdin_fd in ready:
            data = os.read(stdin_fd, 4096)
            if is_tty and DETACH in data:
                data = data[:data.index(DETACH)]
                if data:
                    sock.sendall(data)
                return "detached"
            if not data:
                stdin_open = False
                quiet_since = time.monotonic()
            else:
                with contextlib.suppress(BlockingIOError):
                    sock.setblocking(True)
                    sock.sendall(data)
                sock.setblocking(False)
        if not stdin_open and time.monotonic() - quiet_since >= linger:
            return "eof"
