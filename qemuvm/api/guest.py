"""The facade's verbs inside a running guest: SSH, the guest agent (exec, cp), typing on the serial console and
the keyboard. Re-exported by qemuvm.api, the one facade."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qemuvm.api.instances import _monitor, _running_qemu, instance_paths
from qemuvm.errors import UsageError


def ssh(name: str, command: Sequence[str] | str = (), *, timeout: float | None = None, input: str | None = None,
        home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command in the guest over SSH (captured): returncode is the remote exit status (255: SSH
    failed, 124: timed out)."""
    from qemuvm.control import ssh as ssh_

    return ssh_.run(name, command, timeout=timeout, input=input, home=home)


def ssh_interactive(name: str, command: Sequence[str] = (), *, home: Path | None = None) -> int:
    """`qemuvm ssh NAME [-- CMD]` with the terminal's streams; the remote exit code."""
    from qemuvm.control import ssh as ssh_

    return ssh_.interactive(name, command, home=home)


def exec_(name: str, argv: Sequence[str], *, env: dict[str, str] | None = None, stdin: bytes | None = None,
          timeout: float | None = None, home: Path | None = None):  # -> agent.ExecResult
    """Run a command in the guest through its guest agent (no network needed): exit code (128+N for signal N),
    stdout and stderr. A VM without `guest_agent: true` is a UsageError saying how to enable it."""
    from qemuvm.control import agent

    paths = instance_paths(name, home)
    _running_qemu(paths)
    with agent.Agent(paths) as session:
        return agent.exec_command(session, list(argv), env=env, stdin=stdin, timeout=timeout)


def cp(source: str, target: str, *, max_size: int | None = None, home: Path | None = None,
       progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Copy one file between the host and a guest through its agent: one side is `NAME:/guest/path`; from the
    guest, regular files only, at most max_size bytes, never with setuid/setgid/sticky bits."""
    from qemuvm.control import agent

    name, guest_path, to_guest = agent.split_cp(source, target)
    paths = instance_paths(name, home)
    _running_qemu(paths)
    return agent.cp(paths, source if to_guest else target, guest_path, to_guest, max_size, progress)


def send(name: str, text: str, *, home: Path | None = None) -> int:
    """Type `text` on the serial console (escapes: \\n \\r \\t \\e \\xHH, see control/keys.py); bytes sent."""
    from qemuvm.control import keys

    paths = instance_paths(name, home)
    _running_qemu(paths)
    return keys.send_serial(paths.serial_socket, keys.unescape(text))


def sendkey(name: str, combos: Sequence[str] = (), *, text: str | None = None, delay: float = 0.05,
            home: Path | None = None) -> int:
    """Press keys on the VM's keyboard (QMP send-key): each combo (`ctrl-alt-delete`), then `text` typed key by
    key on a US layout, `delay` seconds apart; how many presses were sent."""
    from qemuvm.control import keys

    presses = [keys.combo(spec) for spec in combos] + (keys.text_combos(text) if text else [])
    if not presses:
        raise UsageError("sendkey: give keys (ctrl-alt-delete, esc, ret, ...) or --text")
    paths = instance_paths(name, home)
    _running_qemu(paths)
    return _monitor(paths).run(lambda session: keys.press(session.execute, presses, delay))
