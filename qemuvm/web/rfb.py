"""The VNC (RFB 3.8) handshake on both sides of the web console's proxy, so the VM's password never reaches the
browser: the proxy logs in to QEMU itself (VNC authentication: the 16-byte challenge, DES-encrypted with the
password), then offers the browser "no authentication" and relays everything after it unchanged.

RFB 3.8, as QEMU speaks it: the server's ProtocolVersion, the client's; the security types; for VNC auth the
challenge and the response; a SecurityResult (0: OK, else a reason string). From ClientInit on, the bytes pass
through.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from qemuvm.errors import OperationError

VERSION = b"RFB 003.008\n"
NONE, VNC_AUTH = 1, 2


def vnc_response(password: str, challenge: bytes) -> bytes:
    """VNC authentication: DES-ECB of the challenge with the password as the key (8 bytes, NUL padded), each key
    byte's bits reversed (the RFB quirk)."""
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode()[:8].ljust(8, b"\0"))
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # 3DES with one key is DES
    return encryptor.update(challenge) + encryptor.finalize()


async def open_vnc(vnc: dict[str, Any]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the VM's VNC server as `status` records it: {"unix": PATH} or {"listen", "port"}."""
    try:
        if vnc.get("unix"):
            return await asyncio.wait_for(asyncio.open_unix_connection(vnc["unix"]), 10)
        host = vnc.get("listen") or "127.0.0.1"
        host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
        return await asyncio.wait_for(asyncio.open_connection(host, int(vnc["port"])), 10)
    except (OSError, TimeoutError) as exc:
        raise OperationError(f"cannot reach the VM's VNC server: {exc}") from None


async def login(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, password: str | None) -> None:
    """Take QEMU's side of the handshake up to a successful SecurityResult."""
    try:
        server_version = await asyncio.wait_for(reader.readexactly(12), 10)
        if not server_version.startswith(b"RFB 003."):
            raise OperationError(f"the VNC server speaks {server_version!r}, not RFB 3.x")
        writer.write(VERSION)
        count = (await reader.readexactly(1))[0]
        if count == 0:
            raise OperationError(f"the VNC server refused: {await _reason(reader)}")
        offered = set(await reader.readexactly(count))
        if NONE in offered:
            writer.write(bytes([NONE]))
        elif VNC_AUTH in offered:
            if password is None:
                raise OperationError("the VNC server asks for a password and the instance records none")
            writer.write(bytes([VNC_AUTH]))
            writer.write(vnc_response(password, await reader.readexactly(16)))
        else:
            raise OperationError(f"the VNC server offers no security type the proxy speaks ({sorted(offered)})")
        await writer.drain()
        (result,) = struct.unpack(">I", await reader.readexactly(4))
        if result != 0:
            raise OperationError(f"the VNC server refused the login: {await _reason(reader)}")
    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError) as exc:
        raise OperationError(f"the VNC handshake failed: {exc!r}") from None


async def _reason(reader: asyncio.StreamReader) -> str:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    return (await reader.readexactly(min(length, 4096))).decode(errors="replace")


class Buffered:
    """readexactly() over a message stream (websocket frames split and join bytes as they like)."""

    def __init__(self, receive: Callable[[], Awaitable[bytes | None]]) -> None:
        self._receive = receive
        self._buffer = b""

    async def readexactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = await self._receive()
            if chunk is None:
                raise ConnectionError("the browser closed the connection during the VNC handshake")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def rest(self) -> bytes:
        """What arrived beyond the handshake (the start of ClientInit), to pass on."""
        data, self._buffer = self._buffer, b""
        return data


async def greet_browser(client: Buffered, send: Callable[[bytes], Awaitable[None]]) -> None:
    """Be the VNC server toward the browser up to SecurityResult, offering only "no authentication"."""
    await send(VERSION)
    version = await client.readexactly(12)
    if not version.startswith(b"RFB 003."):
        raise ConnectionError(f"the browser speaks {version!r}, not RFB 3.x")
    await send(bytes([1, NONE]))
    if (await client.readexactly(1))[0] != NONE:
        raise ConnectionError("the browser chose a security type that was not offered")
    await send(struct.pack(">I", 0))
