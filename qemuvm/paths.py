"""Where an instance keeps its files (DESIGN.md, "The instance directory"). Pure: no I/O here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107


def state_home() -> Path:
    """`$QEMUVM_HOME`, else `$XDG_STATE_HOME/qemuvm`, else `~/.local/state/qemuvm`."""
    if os.environ.get("QEMUVM_HOME"):
        return Path(os.environ["QEMUVM_HOME"]).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state") / "qemuvm"


@dataclass(frozen=True)
class InstancePaths:
    """Every file of one instance, below `home/name/`."""

    root: Path

    @classmethod
    def for_name(cls, name: str, home: Path | None = None) -> InstancePaths:
        """The folder of instance `name`; a name that cannot be one folder below the home (empty, a path, hidden,
        a control character or NUL) is a UsageError here, before any file is touched."""
        if not name or "/" in name or name.startswith(".") or not name.isprintable():
            from qemuvm.errors import UsageError

            raise UsageError(f"{name!r} is not an instance name")
        return cls((home or state_home()) / name)

    @property
    def name(self) -> str:
        return self.root.name

    profile = property(lambda self: self.root / "profile.yaml")
    argv = property(lambda self: self.root / "argv.json")
    run_sh = property(lambda self: self.root / "run.sh")
    state = property(lambda self: self.root / "state.json")
    supervisor_config = property(lambda self: self.root / "supervisor.json")
    qmp_socket = property(lambda self: self.root / "qmp.sock")
    supervisor_socket = property(lambda self: self.root / "supervisor.sock")
    serial_socket = property(lambda self: self.root / "serial.sock")
    serial_log = property(lambda self: self.root / "serial.log")
    console_lock = property(lambda self: self.root / "console.lock")  # one interactive console at a time
    qemu_log = property(lambda self: self.root / "qemu.log")
    supervisor_log = property(lambda self: self.root / "supervisor.log")
    events = property(lambda self: self.root / "events.jsonl")
    pidfile = property(lambda self: self.root / "qemu.pid")
    lock = property(lambda self: self.root / "lock")
    supervisor_lock = property(lambda self: self.root / "supervisor.lock")  # held by the live supervisor
    stop_request = property(lambda self: self.root / "stop.request")  # "this exit is intentional: no restart"
    reboot_request = property(lambda self: self.root / "reboot.request")  # "a reboot holds QEMU at the power-off"
    operation_lock = property(lambda self: self.root / "operation.lock")  # one save or down at a time (intent.py)
    seed_iso = property(lambda self: self.root / "seed.iso")
    uefi_vars = property(lambda self: self.root / "OVMF_VARS.fd")
    tpm_state = property(lambda self: self.root / "tpm")  # machine.tpm: swtpm's state folder (0700)
    # swtpm's permanent TPM 2.0 state in that folder: made once by swtpm_setup, what a warm clone copies.
    tpm_state_file = property(lambda self: self.tpm_state / "tpm2-00.permall")
    tpm_socket = property(lambda self: self.root / "swtpm.sock")  # swtpm's control socket, QEMU's chardev
    vnc_socket = property(lambda self: self.root / "vnc.sock")
    vnc_password = property(lambda self: self.root / "vnc.password")  # generated (display.vnc.password: auto)
    guest_agent_socket = property(lambda self: self.root / "qga.sock")
    ssh_key = property(lambda self: self.root / "id_ed25519")
    known_hosts = property(lambda self: self.root / "known_hosts")
    saved_state = property(lambda self: self.root / "saved.state")  # `save`: RAM + devices (a migration stream)
    saved_info = property(lambda self: self.root / "saved.json")  # `save`: what the state needs (records.SavedState)

    def overlay(self, disk_index: int) -> Path:
        """The qcow2 overlay of an ephemeral disk."""
        return self.root / f"disk{disk_index}.overlay.qcow2"

    def sockets(self) -> list[Path]:
        return [self.qmp_socket, self.supervisor_socket, self.serial_socket, self.vnc_socket,
                self.guest_agent_socket]

    def too_long_socket(self) -> Path | None:
        """The first socket path over the kernel's limit, if any."""
        return next((s for s in self.sockets() if len(os.fsencode(s)) > MAX_SOCKET_PATH), None)
