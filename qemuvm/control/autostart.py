"""`qemuvm autostart NAME [--disable]` (virsh autostart): a systemd unit per instance that runs `qemuvm start
NAME` at boot and `qemuvm down NAME` at shutdown. Root gets a system unit (/etc/systemd/system, wanted by
multi-user.target), anyone else a user unit (~/.config/systemd/user, wanted by default.target; it runs at boot
only with lingering: `loginctl enable-linger`). Enabling is what `systemctl enable` does -- the unit file and its
symlink in TARGET.wants/ -- so it works where systemd is not running (a container, a chroot); where it runs,
systemd is told to reload. `QEMUVM_SYSTEMD_DIR` puts the units elsewhere (tests do)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from qemuvm.errors import UsageError
from qemuvm.paths import InstancePaths
from qemuvm.runtime import atomic


def unit_name(name: str) -> str:
    return f"qemuvm-{name}.service"  # instance names are [A-Za-z0-9_.-]: valid in a unit name as they are


def _system_wide() -> bool:
    return os.geteuid() == 0


def unit_dir() -> Path:
    if os.environ.get("QEMUVM_SYSTEMD_DIR"):
        return Path(os.environ["QEMUVM_SYSTEMD_DIR"])
    if _system_wide():
        return Path("/etc/systemd/system")
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user"


def _target() -> str:
    return "multi-user.target" if _system_wide() else "default.target"


def quote(word: str, exec_line: bool = True) -> str:
    """One word of a systemd Exec= line (or, exec_line False, an Environment= assignment): double-quoted, with
    `\\`, `"` and `%` escaped, and `$` as `$$` on Exec= lines only -- systemd expands variables there and not
    in Environment=, where `$$` would stay two dollars."""
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if exec_line:
        escaped = escaped.replace("$", "$$")
    return f'"{escaped}"'


def _one_line(value: str, what: str) -> str:
    """A word for a unit line: a control character (a newline) would end the line and start another, e.g. an
    injected `ExecStartPre=`; systemd has no escape for it that every line kind honours, so it is refused."""
    bad = next((c for c in value if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        raise UsageError(f"{what} {value!r} contains the control character {bad!r}, which a systemd unit line cannot "
                         f"carry; use a {what} without control characters")
    return value


def unit_text(name: str, python: str, home: Path, shutdown_timeout: float, target: str) -> str:
    """The unit: pure, from the interpreter qemuvm runs in (so PATH does not matter) and the state folder.
    UsageError when one of them has a control character (a newline would inject lines)."""
    _one_line(str(home), "state folder (QEMUVM_HOME)")
    _one_line(python, "Python interpreter path")
    _one_line(name, "instance name")
    start = " ".join(quote(word) for word in (python, "-m", "qemuvm", "start", name))
    stop = " ".join(quote(word) for word in (python, "-m", "qemuvm", "down", name))
    return f"""# Made by `qemuvm autostart {name}`; `qemuvm autostart {name} --disable` removes it.
[Unit]
Description=qemuvm VM {name}
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
{_owner_line(home)}
ExecStart={start}
ExecStop={stop}
TimeoutStartSec=600
TimeoutStopSec={int(shutdown_timeout) + 60}

[Install]
WantedBy={target}
"""


def _paths(name: str) -> tuple[Path, Path]:
    folder = unit_dir()
    return folder / unit_name(name), folder / f"{_target()}.wants" / unit_name(name)


def _owner_line(home: Path) -> str:
    return f"Environment={quote(f'QEMUVM_HOME={home}', exec_line=False)}"


def _other_home(unit: Path, home: Path) -> bool:
    """The unit exists and starts the instance of that name in another state folder: not ours to touch."""
    try:  # the whole text: a line some older qemuvm split with a newline in its home is still recognised
        return _owner_line(home) not in unit.read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True


def is_enabled(name: str, home: Path) -> bool:
    unit, link = _paths(name)
    return link.is_symlink() and not _other_home(unit, home)


def _reload() -> None:
    """Tell a running systemd about the change (best effort: no systemd, no reload needed)."""
    if Path("/run/systemd/system").is_dir():
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(["systemctl", *(() if _system_wide() else ("--user",)), "daemon-reload"],
                           capture_output=True, timeout=30, check=False)


def enable(paths: InstancePaths, shutdown_timeout: float) -> dict[str, Any]:
    unit, link = _paths(paths.name)
    if _other_home(unit, paths.root.parent):
        raise UsageError(f"{unit} exists and starts a VM {paths.name} of another state folder; remove it by hand "
                         "(systemctl disable) or name this instance differently")
    text = unit_text(paths.name, sys.executable, paths.root.parent, shutdown_timeout, _target())  # refusals first
    link.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_private_atomic(unit, text, mode=0o644)  # a unique temporary name, made exclusively
    if not link.is_symlink():
        link.symlink_to(unit)
    _reload()
    return {"name": paths.name, "autostart": True, "unit": str(unit), "wanted_by": str(link)}


def disable(name: str, home: Path, strict: bool = True) -> dict[str, Any]:
    """Remove the instance's unit; one of another state folder's is refused (strict) or left alone (`rm`)."""
    unit, link = _paths(name)
    if _other_home(unit, home):
        if not strict:
            return {"name": name, "autostart": False, "unit": str(unit), "removed": False}
        raise UsageError(f"{unit} starts a VM {name} of another state folder, not this one; it is left as it is")
    found = link.is_symlink() or unit.exists()
    link.unlink(missing_ok=True)
    unit.unlink(missing_ok=True)
    if found:
        _reload()
    return {"name": name, "autostart": False, "unit": str(unit), "removed": found}
