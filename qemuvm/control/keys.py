"""Typing into a guest that has neither an agent nor SSH (installers, boot menus, broken images), as Packer's
`boot_command` and openQA's `type_string` do: text on the serial console, or keys on the VM's keyboard through
QMP `send-key` (QEMU's qcodes, a US layout for text). Parsing is pure (table-tested); sending is one QMP call a
key."""

from __future__ import annotations

import asyncio
import fcntl
import re
import socket
import struct
import termios
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from qemuvm.errors import OperationError, UsageError

# Key names people write, as QEMU qcodes (`send-key` takes these; QEMU's QKeyCode enum).
ALIASES = {
    "enter": "ret", "return": "ret", "space": "spc", "escape": "esc", "del": "delete", "ins": "insert",
    "control": "ctrl", "bksp": "backspace", "pgup": "pgup", "pageup": "pgup", "pagedown": "pgdn", "pgdn": "pgdn",
    "win": "meta_l", "super": "meta_l",
}
NAMED = {"ctrl", "ctrl_r", "alt", "alt_r", "shift", "shift_r", "meta_l", "meta_r", "ret", "spc", "esc", "tab",
         "backspace", "delete", "insert", "home", "end", "pgup", "pgdn", "up", "down", "left", "right", "menu",
         "caps_lock", "num_lock", "scroll_lock", "print", "sysrq", "pause", "minus", "equal", "bracket_left",
         "bracket_right", "backslash", "semicolon", "apostrophe", "grave_accent", "comma", "dot", "slash", "less",
         *(f"f{n}" for n in range(1, 13)), *"abcdefghijklmnopqrstuvwxyz", *"0123456789"}
# Text on a US keyboard: each character as (qcode, shifted).
_PLAIN = {"-": "minus", "=": "equal", "[": "bracket_left", "]": "bracket_right", "\\": "backslash",
          ";": "semicolon", "'": "apostrophe", "`": "grave_accent", ",": "comma", ".": "dot", "/": "slash",
          " ": "spc", "\n": "ret", "\t": "tab"}
_SHIFTED = {"!": "1", "@": "2", "#": "3", "$": "4", "%": "5", "^": "6", "&": "7", "*": "8", "(": "9", ")": "0",
            "_": "minus", "+": "equal", "{": "bracket_left", "}": "bracket_right", "|": "backslash",
            ":": "semicolon", '"': "apostrophe", "~": "grave_accent", "<": "comma", ">": "dot", "?": "slash"}


def combo(spec: str) -> list[str]:
    """`ctrl-alt-delete` -> ["ctrl", "alt", "delete"]: keys pressed together (a lone `-` is the minus key)."""
    if spec in ("-", "minus"):
        return ["minus"]
    keys = []
    for part in spec.lower().split("-"):
        key = ALIASES.get(part, part)
        if key not in NAMED:
            raise UsageError(f"{part!r} in {spec!r} is not a key: use names such as ctrl, alt, shift, ret, esc, "
                             "tab, spc, f1-f12, up, a-z, 0-9 (QEMU's qcodes)")
        keys.append(key)
    return keys


def text_combos(text: str) -> list[list[str]]:
    """Text as key presses on a US layout (`Hi!` -> shift-h, i, shift-1); characters it cannot type: UsageError."""
    presses = []
    for char in text:
        if char.isascii() and (char.islower() or char.isdigit()):
            presses.append([char])
        elif char.isascii() and char.isupper():
            presses.append(["shift", char.lower()])
        elif char in _PLAIN:
            presses.append([_PLAIN[char]])
        elif char in _SHIFTED:
            presses.append(["shift", _SHIFTED[char]])
        else:
            raise UsageError(f"{char!r} cannot be typed on the VM's (US) keyboard; send it on the serial console "
                             "with `qemuvm send` instead")
    return presses


_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|[nrte0\\])")
_SIMPLE = {"n": "\n", "r": "\r", "t": "\t", "e": "\x1b", "0": "\0", "\\": "\\"}


def unescape(text: str) -> bytes:
    """`qemuvm send` text: \\n \\r \\t \\e (ESC) \\0 \\\\ and \\xHH become those bytes; the rest is UTF-8."""
    out, at = bytearray(), 0
    for match in _ESCAPE.finditer(text):
        out += text[at:match.start()].encode()
        code = match.group(1)
        out += bytes([int(code[1:], 16)]) if code.startswith("x") else _SIMPLE[code].encode()
        at = match.end()
    return bytes(out + text[at:].encode())


def qmp_keys(keys: list[str]) -> list[dict[str, str]]:
    return [{"type": "qcode", "data": key} for key in keys]


async def press(execute: Callable[[str, dict[str, Any]], Awaitable[Any]], presses: list[list[str]],
                delay: float = 0.05, hold_ms: int = 100) -> int:
    """Send each press (keys held together) with `send-key` on one monitor session, `delay` seconds apart (pacing
    for the guest's keyboard handling, not a synchronisation); how many were sent."""
    for index, keys in enumerate(presses):
        if index:
            await asyncio.sleep(delay)
        await execute("send-key", {"keys": qmp_keys(keys), "hold-time": hold_ms})
    return len(presses)


def send_serial(socket_path: Path, data: bytes, timeout: float = 5.0) -> int:
    """Write `data` to the serial console socket (what a person types at `qemuvm console`); bytes written."""
    from qemuvm.control import console

    sock = console.connect(socket_path, timeout)
    deadline = time.monotonic() + timeout
    try:
        sock.setblocking(True)
        sock.settimeout(timeout)
        sock.sendall(data)
        # QEMU reads only as fast as the guest's UART takes bytes, and drops what is unread when we hang up:
        # stay connected until the socket's queue is empty (TIOCOUTQ: bytes the peer has not read yet).
        while _unread(sock) and time.monotonic() < deadline:
            time.sleep(0.005)
        if _unread(sock):
            raise TimeoutError
    except TimeoutError:
        raise OperationError(f"the guest did not read what was sent to {socket_path} within {timeout:g} s (is "
                             "`qemuvm console` attached to it, or the guest stuck?)") from None
    finally:
        sock.close()
    return len(data)


def _unread(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
