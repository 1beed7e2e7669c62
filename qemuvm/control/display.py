"""The display over QMP: the VNC password (set after start) and screenshots (`screendump` as PNG).

Both go through the instance's client monitor (control.client.Monitor); the supervisor sets the VNC
password on its own monitor before the guest runs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from qemuvm.control.client import Monitor, QmpError, QmpSession
from qemuvm.errors import OperationError, UsageError
from qemuvm.runtime.preflight import read_vnc_password

TIMEOUT = 30.0  # a screendump of a large screen under TCG takes a moment
VNC_PASSWORD_MAX = 8  # the VNC auth scheme (DES) uses only the first 8 characters


# -- VNC password --------------------------------------------------------------------------------


def apply_vnc_password(target: str | os.PathLike[str], password_file: str | os.PathLike[str]) -> None:
    """QMP `set_password` for VNC over the monitor socket `target` (the supervisor does the same before `cont`)."""
    password = read_vnc_password(password_file)
    Monitor(Path(target), timeout=TIMEOUT).execute("set_password", {"protocol": "vnc", "password": password})


# -- screenshots ---------------------------------------------------------------------------------


async def screendump(session: QmpSession, out: str | os.PathLike[str]) -> Path:
    """Write the VM's screen to `out` as PNG. QEMU writes the file itself, so it gets a temp name next
    to `out` (same owner, same file system) and is renamed once complete."""
    target = Path(out).resolve()
    if target.is_dir() or str(out).endswith("/"):
        raise UsageError(f"{out} is a folder; name the PNG file to write (e.g. {Path(out) / 'screen.png'})")
    if not target.parent.is_dir():
        raise UsageError(f"folder {target.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".png", dir=target.parent)
    os.close(fd)
    try:
        try:
            await session.execute("screendump", {"filename": tmp, "format": "png"})
        except QmpError as exc:
            if "no console" in exc.desc.lower():
                raise UsageError("the VM is headless (no display device): add a display section to its "
                                 "profile to take screenshots") from None
            raise OperationError(f"screendump failed: {exc}") from None
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def screenshot(socket: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Sync form of screendump over the monitor socket `socket`."""
    return Monitor(Path(socket), timeout=TIMEOUT).run(lambda session: screendump(session, out))
