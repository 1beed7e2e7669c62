"""The display over QMP: the VNC password (set after start) and screenshots (`screendump` as PNG).

Each function has an async form taking a connected qemu.qmp `QMPClient` (for the supervisor, which
holds its own monitor) and a sync form taking the instance's client monitor socket (for the CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import tempfile
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from qemu.qmp import ConnectError, ExecuteError, QMPClient

from qemuvm.errors import OperationError, UsageError

TIMEOUT = 30.0
VNC_PASSWORD_MAX = 8  # the VNC auth scheme (DES) uses only the first 8 characters


@contextlib.asynccontextmanager
async def qmp_session(socket: str | os.PathLike[str], timeout: float = TIMEOUT) -> AsyncIterator[QMPClient]:
    """A connected QMP client on `socket` for the length of the block."""
    client = QMPClient("qemuvm-control")
    try:
        await asyncio.wait_for(client.connect(str(socket)), timeout)
    except (TimeoutError, ConnectError, OSError) as exc:
        raise OperationError(f"cannot reach the VM's QMP monitor at {socket} ({exc}); is it running?") from None
    try:
        yield client
    finally:
        with contextlib.suppress(EOFError, TimeoutError):
            await asyncio.wait_for(client.disconnect(), timeout)


async def execute(client: QMPClient, command: str, arguments: dict | None = None, timeout: float = TIMEOUT):
    return await asyncio.wait_for(client.execute(command, arguments), timeout)


# -- VNC password --------------------------------------------------------------------------------


def read_vnc_password(password_file: str | os.PathLike[str]) -> str:
    """The first line of the file (a trailing newline is not part of the password)."""
    try:
        text = Path(password_file).read_text()
    except OSError as exc:
        raise UsageError(f"display.vnc.password_file: cannot read {password_file} ({exc.strerror})") from None
    lines = text.splitlines()
    password = lines[0] if lines else ""
    if not password:
        raise UsageError(f"display.vnc.password_file: {password_file} is empty")
    return password


async def set_vnc_password(client: QMPClient, password_file: str | os.PathLike[str]) -> None:
    """QMP `set_password` for VNC; call it after QEMU starts (with -S) and before `cont`."""
    password = read_vnc_password(password_file)
    await execute(client, "set_password", {"protocol": "vnc", "password": password})


def apply_vnc_password(target: str | os.PathLike[str], password_file: str | os.PathLike[str]) -> None:
    """Sync form of set_vnc_password over the monitor socket `target`."""

    async def go() -> None:
        async with qmp_session(target) as client:
            await set_vnc_password(client, password_file)

    asyncio.run(go())


# -- screenshots ---------------------------------------------------------------------------------


async def screendump(client: QMPClient, out: str | os.PathLike[str]) -> Path:
    """Write the VM's screen to `out` as PNG. QEMU writes the file itself, so it gets a temp name next
    to `out` (same owner, same file system) and is renamed once complete."""
    target = Path(out).resolve()
    if not target.parent.is_dir():
        raise UsageError(f"folder {target.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".png", dir=target.parent)
    os.close(fd)
    try:
        try:
            await execute(client, "screendump", {"filename": tmp, "format": "png"})
        except ExecuteError as exc:
            if "no console" in str(exc).lower():
                raise UsageError("the VM is headless (no display device): add a display section to its "
                                 "profile to take screenshots") from None
            raise OperationError(f"screendump failed: {exc}") from None
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def screenshot(socket: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Sync form of screendump over the monitor socket `socket`."""

    async def go() -> Path:
        async with qmp_session(socket) as client:
            return await screendump(client, out)

    return asyncio.run(go())


# -- reading screenshots back --------------------------------------------------------------------


@dataclass(frozen=True)
class PngSummary:
    width: int
    height: int
    colours: int  # distinct pixel values, capped at COLOUR_CAP (a blank screen has 1)


COLOUR_CAP = 256


def read_png(path: str | os.PathLike[str]) -> PngSummary:
    """Decode a screendump PNG (8-bit RGB/RGBA, not interlaced: what QEMU writes) with zlib alone,
    to tell a blank screen from one showing something (smoke evidence, tests)."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise OperationError(f"{path} is not a PNG file")
    pos, idat, header = 8, bytearray(), None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            break
    if header is None:
        raise OperationError(f"{path} has no PNG header")
    width, height, depth, colour_type, _, _, interlace = header
    channels = {2: 3, 6: 4}.get(colour_type)
    if depth != 8 or channels is None or interlace:
        raise OperationError(f"{path}: only 8-bit RGB/RGBA non-interlaced PNGs are supported")
    raw = zlib.decompress(bytes(idat))
    stride = width * channels
    previous = bytearray(stride)
    colours: set[bytes] = set()
    for row in range(height):
        start = row * (stride + 1)
        line = _unfilter(raw[start], bytearray(raw[start + 1:start + 1 + stride]), previous, channels)
        if len(colours) < COLOUR_CAP:
            colours.update(bytes(line[i:i + channels]) for i in range(0, stride, channels))
        previous = line
    return PngSummary(width, height, min(len(colours), COLOUR_CAP))


def _unfilter(kind: int, line: bytearray, previous: bytearray, bpp: int) -> bytearray:
    """Undo one PNG scanline filter (RFC 2083, section 6)."""
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        up = previous[i]
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + up) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (left + up) // 2) & 0xFF
        elif kind == 4:
            corner = previous[i - bpp] if i >= bpp else 0
            estimate = left + up - corner
            pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
            predictor = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
            line[i] = (line[i] + predictor) & 0xFF
    return line
