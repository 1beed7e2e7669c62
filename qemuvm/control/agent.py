"""A client for QEMU's guest agent (qemu-ga) on the instance's `qga.sock`: the channel into the guest that
needs no network (run commands, copy files, read its addresses, shut it down).

The wire protocol is QMP without the greeting: one JSON object per line each way. A session starts with
`guest-sync-delimited`: its answer comes after a 0xFF byte, so whatever a previous client left unread (a reply
to a command that timed out) is dropped up to there; after a timeout the connection is closed, and the next
session syncs again. Blocking sockets, no asyncio: an `exec` round trip is a few milliseconds.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemuvm.errors import OperationError, UsageError
from qemuvm.paths import InstancePaths
from qemuvm.runtime.instance import printable

SYNC_TIMEOUT = 5.0  # as libvirt: an agent that cannot answer guest-sync in 5 s is not running
COMMAND_TIMEOUT = 30.0
STATUS_TIMEOUT = 5.0  # guest-exec-status answers at once: silence means the agent is gone
OUTPUT_CAP = 16 << 20  # qemu-ga keeps at most this much of a command's stdout (and of its stderr)
CHUNK = 1 << 20  # bytes per guest-file-read / guest-file-write
# The longest reply line read from a guest: guest-exec-status with both streams at OUTPUT_CAP, base64 (4/3),
# and room for the JSON around them. Past it without a newline, the guest is not speaking the protocol: a
# hostile or broken agent must not make the host buffer without end.
MAX_LINE = 48 << 20


class AgentError(OperationError):
    """The agent answered with an error: the guest's own message."""


class AgentTimeout(OperationError):
    """The agent did not answer in time (not running in the guest, or a command still busy)."""


class Agent:
    """One session with the guest agent of `paths` (use as a context manager)."""

    def __init__(self, paths: InstancePaths, sync_timeout: float = SYNC_TIMEOUT) -> None:
        self.paths = paths
        self.name = paths.name
        self.sync_timeout = sync_timeout
        self.sock: socket.socket | None = None
        self.buffer = bytearray()

    def __enter__(self) -> Agent:
        self.connect()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def connect(self) -> None:
        path = self.paths.guest_agent_socket
        if not path.exists():
            raise UsageError(f"{self.name} has no guest agent channel: set `guest_agent: true` in its profile (and run "
                             "qemu-ga in the guest: Debian's qemu-guest-agent package), then start it again")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.sync_timeout)
        try:
            sock.connect(str(path))
        except OSError as exc:
            sock.close()
            raise OperationError(f"cannot reach the guest agent channel of {self.name} ({exc.strerror}): is it "
                                 "running?") from None
        self.sock, self.buffer = sock, bytearray()
        self._sync()

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None

    def _send(self, message: dict[str, Any], prefix: bytes = b"") -> None:
        assert self.sock is not None
        self.sock.sendall(prefix + json.dumps(message).encode() + b"\n")

    def _line(self, deadline: float, what: str) -> bytes:
        assert self.sock is not None
        end = self.buffer.find(b"\n")
        while end < 0:  # each piece is searched once: a long reply costs no rescans
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                raise
            except OSError as exc:
                raise OperationError(f"the guest agent of {self.name} went away during {what} ({exc.strerror})") \
                    from None
            if not data:
                raise OperationError(f"the guest agent channel of {self.name} closed during {what} (QEMU exiting, "
                                     "or the guest's agent stopped)")
            found = data.find(b"\n")
            if found >= 0:
                end = len(self.buffer) + found
            self.buffer += data
            if end < 0 and len(self.buffer) > MAX_LINE:
                self.close()
                raise OperationError(f"the guest agent of {self.name} sent more than {MAX_LINE >> 20} MiB without "
                                     f"ending a line during {what}; it is not answering as qemu-ga does, so the "
                                     "session was closed")
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 1]
        return line

    def _sync(self) -> None:
        token = random.randrange(1, 1 << 31)
        deadline = time.monotonic() + self.sync_timeout
        try:
            # 0xFF first resets the agent's parser (a half-sent command of a client that died).
            self._send({"execute": "guest-sync-delimited", "arguments": {"id": token}}, prefix=b"\xff")
            while True:
                line = self._line(deadline, "guest-sync")
                if b"\xff" in line:
                    line = line.rsplit(b"\xff", 1)[1]
                with contextlib.suppress(ValueError, AttributeError):  # not JSON, or not an object: not the answer
                    if json.loads(line).get("return") == token:
                        return
        except TimeoutError:
            self.close()
            raise AgentTimeout(f"the guest agent of {self.name} does not answer (no reply to guest-sync in "
                               f"{self.sync_timeout:g} s): qemu-ga is not running in the guest, or not yet") from None

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = COMMAND_TIMEOUT,
                reply: bool = True) -> Any:
        """The `return` of `command`; AgentError with the guest's message when it fails. `reply` False: send only
        (guest-shutdown answers nothing when it works)."""
        if self.sock is None:
            self.connect()
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        try:
            self._send(message)
            if not reply:
                return None
            answer = json.loads(self._line(time.monotonic() + timeout, command))
        except TimeoutError:
            self.close()  # its late answer must not be read as the next command's
            raise AgentTimeout(f"the guest agent of {self.name} did not answer {command} within {timeout:g} s") \
                from None
        except ValueError:
            self.close()
            raise OperationError(f"the guest agent of {self.name} answered {command} with something not JSON") \
                from None
        if not isinstance(answer, dict):
            self.close()
            raise OperationError(f"the guest agent of {self.name} answered {command} with something that is not "
                                 "a QMP reply")
        if "error" in answer:
            error = answer["error"] if isinstance(answer["error"], dict) else {"desc": answer["error"]}
            said = printable(str(error.get("desc") or error.get("class")))[:2000]  # the guest's words, defused
            raise AgentError(f"{command} failed in {self.name}: {said}")
        return answer.get("return")


def available(paths: InstancePaths, timeout: float = 0.5) -> bool:
    """The agent answers a guest-sync now (for `ready: {agent: true}` and `status`)."""
    if not paths.guest_agent_socket.exists():
        return False
    try:
        with Agent(paths, sync_timeout=timeout):
            return True
    except OperationError:
        return False


# -- exec ------------------------------------------------------------------------------------------


@dataclass
class ExecResult:
    exit_code: int  # the command's, or 128 + N for signal N (as a shell says)
    stdout: bytes
    stderr: bytes
    signal: int | None = None
    duration_s: float = 0.0
    truncated: list[str] = field(default_factory=list)  # "stdout" / "stderr": the agent kept only OUTPUT_CAP

    def as_json(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code, "signal": self.signal, "duration_s": round(self.duration_s, 4),
                "stdout": self.stdout.decode(errors="replace"), "stderr": self.stderr.decode(errors="replace"),
                "truncated": self.truncated}


def _b64(data: str | None) -> bytes:
    return base64.b64decode(data) if data else b""


def exec_command(agent: Agent, argv: list[str], *, env: dict[str, str] | None = None, stdin: bytes | None = None,
                 timeout: float | None = None) -> ExecResult:
    """Run argv[0] (searched on the guest's PATH) with argv[1:], wait for it, and collect its output."""
    started = time.monotonic()
    arguments: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True}
    if env:
        arguments["env"] = [f"{key}={value}" for key, value in env.items()]
    if stdin:
        arguments["input-data"] = base64.b64encode(stdin).decode()
    pid = agent.execute("guest-exec", arguments)["pid"]
    delay = 0.001  # most commands end within milliseconds: poll fast first, then back off
    while True:
        status = agent.execute("guest-exec-status", {"pid": pid}, timeout=STATUS_TIMEOUT)
        if status.get("exited"):
            break
        if timeout is not None and time.monotonic() - started > timeout:
            raise AgentTimeout(f"{argv[0]} (pid {pid} in {agent.name}) did not end within {timeout:g} s; it keeps "
                               "running in the guest (the agent cannot stop it)")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)
    signal_number = status.get("signal")
    code = 128 + signal_number if signal_number else int(status.get("exitcode") or 0)
    truncated = [stream for stream in ("out", "err") if status.get(f"{stream}-truncated")]
    return ExecResult(exit_code=code, stdout=_b64(status.get("out-data")), stderr=_b64(status.get("err-data")),
                      signal=signal_number, duration_s=time.monotonic() - started,
                      truncated=[{"out": "stdout", "err": "stderr"}[s] for s in truncated])


# -- files -----------------------------------------------------------------------------------------


def _guest_file(agent: Agent, path: str) -> tuple[int, int]:
    """(size, permission bits) of a regular file in the guest; UsageError for anything else -- a device such as
    /dev/zero never ends, a FIFO may never end, a folder is not one file."""
    kind, size, mode = "", -1, 0
    with contextlib.suppress(OperationError, ValueError):
        result = exec_command(agent, ["stat", "-L", "-c", "%F|%s|%a", path], timeout=30)
        if result.exit_code == 0:
            kind, size_text, mode_text = result.stdout.decode(errors="replace").strip().split("|")
            size, mode = int(size_text), int(mode_text, 8)
    if not kind:
        raise UsageError(f"cp: {path} cannot be read in the guest (no such file, or stat failed there)")
    if kind not in ("regular file", "regular empty file"):
        raise UsageError(f"cp: {path} is a {kind} in the guest, not a regular file; cp copies regular files only")
    return size, mode


def copy_to_guest(agent: Agent, source: Path, target: str) -> int:
    """Host file -> guest path, in CHUNK pieces; the mode follows (through `chmod` in the guest). Bytes copied."""
    handle = agent.execute("guest-file-open", {"path": target, "mode": "w"})
    copied = 0
    try:
        with source.open("rb") as data:
            while chunk := data.read(CHUNK):
                written = agent.execute("guest-file-write", {"handle": handle,
                                                             "buf-b64": base64.b64encode(chunk).decode()})
                if written.get("count") != len(chunk):
                    raise OperationError(f"the guest wrote {written.get('count')} of {len(chunk)} bytes to {target}")
                copied += len(chunk)
    finally:
        with contextlib.suppress(OperationError):
            agent.execute("guest-file-close", {"handle": handle})
    mode = source.stat().st_mode & 0o7777
    with contextlib.suppress(OperationError):
        exec_command(agent, ["chmod", f"{mode:o}", target], timeout=30)
    return copied


def copy_from_guest(agent: Agent, source: str, target: Path, max_size: int | None = None,
                    progress: Callable[[int, int], None] | None = None) -> int:
    """Guest path -> host file: a regular file only, at most `max_size` bytes, written to a private (0600) file
    made exclusively beside the target and renamed into place; any error or interruption removes it. Its mode
    follows without setuid, setgid or sticky bits (a guest never makes a privileged file on the host)."""
    size, mode = _guest_file(agent, source)
    if max_size is not None and size > max_size:
        raise UsageError(f"cp: {source} has {size} bytes in the guest, more than --max-size {max_size}")
    handle = agent.execute("guest-file-open", {"path": source, "mode": "r"})
    partial = target.with_name(f".{target.name}.{os.urandom(6).hex()}.partial")
    copied = 0
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                while True:
                    piece = agent.execute("guest-file-read", {"handle": handle, "count": CHUNK})
                    data = _b64(piece.get("buf-b64"))
                    out.write(data)
                    copied += len(data)
                    if progress is not None:
                        progress(copied, size)
                    if max_size is not None and copied > max_size:
                        raise UsageError(f"cp: {source} grew past --max-size {max_size} while it was copied; "
                                         f"nothing was written to {target}")
                    if piece.get("eof") or not data:
                        break
            os.chmod(partial, mode & 0o777)
            os.replace(partial, target)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OperationError(f"cp: the host disk filled up after {copied} bytes of {source}; nothing was "
                                     f"written to {target}") from None
            raise
    finally:
        partial.unlink(missing_ok=True)
        with contextlib.suppress(OperationError):
            agent.execute("guest-file-close", {"handle": handle})
    return copied


def split_cp(source: str, target: str) -> tuple[str, str, bool]:
    """`cp`'s two sides: (instance name, guest path, True when copying to the guest)."""
    guest = [side for side in (source, target) if ":" in side and side.split(":", 1)[1].startswith("/")]
    if len(guest) != 1 or not guest[0].split(":", 1)[0]:
        raise UsageError(f"cp: exactly one of {source!r} and {target!r} must be NAME:/absolute/guest/path")
    name, path = guest[0].split(":", 1)
    return name, path, guest[0] == target


def cp(paths: InstancePaths, local: str, guest_path: str, to_guest: bool,
       max_size: int | None = None, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Copy `local` to the guest's `guest_path`, or the reverse (into a folder: under the guest file's name;
    at most `max_size` bytes)."""
    host = Path(local)
    if to_guest and not host.is_file():
        raise UsageError(f"cp: {local} is not a file")
    if not to_guest and host.is_dir():
        host = host / Path(guest_path).name
    with Agent(paths) as session:
        copied = copy_to_guest(session, host, guest_path) if to_guest else \
            copy_from_guest(session, guest_path, host, max_size, progress)
    where = f"{paths.name}:{guest_path}"
    return {"name": paths.name, "source": str(host) if to_guest else where,
            "target": where if to_guest else str(host), "bytes": copied}


# -- state -----------------------------------------------------------------------------------------


def guest_facts(agent: Agent) -> dict[str, Any]:
    """The guest's hostname and IP addresses (loopback left out), as `status` shows them."""
    hostname = agent.execute("guest-get-host-name", timeout=5).get("host-name")
    addresses = []
    for interface in agent.execute("guest-network-get-interfaces", timeout=5) or []:
        if interface.get("name") == "lo":
            continue
        for address in interface.get("ip-addresses") or []:
            addresses.append({"interface": interface.get("name"), "address": address.get("ip-address"),
                              "prefix": address.get("prefix"), "type": address.get("ip-address-type")})
    return {"hostname": hostname, "addresses": addresses}


def set_clock(paths: InstancePaths) -> bool:
    """Set the guest's clock to the host's (after a restore), when an agent answers; False when none does."""
    try:
        with Agent(paths, sync_timeout=2.0) as session:
            session.execute("guest-set-time", {"time": time.time_ns()}, timeout=5)
    except OperationError:
        return False
    return True


def request_shutdown(paths: InstancePaths, mode: str) -> bool:
    """guest-shutdown (mode powerdown or reboot), which answers nothing when it works; False when no agent
    answers. What the guest then does is for the caller to wait on."""
    if not paths.guest_agent_socket.exists():
        return False
    try:
        with Agent(paths, sync_timeout=2.0) as session:
            session.execute("guest-shutdown", {"mode": mode}, reply=False)
    except OperationError:
        return False
    return True
