"""SSH into an instance with the system's OpenSSH client: no prompts, the remote exit code, any TTY.

Where it connects: the host side of the forward that targets the guest's `ssh.port` (the profile's,
or the one the lifecycle allocated and recorded in state.json). With which key: `ssh.identity`, else
the per-instance key prepare generated for cloud-init. Host keys go to a per-instance known_hosts
(`accept-new`), so the user's ~/.ssh/known_hosts is never touched and a new VM never prompts.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemuvm.errors import NoSuchInstance, OperationError, UsageError
from qemuvm.paths import InstancePaths
from qemuvm.runtime import ports
from qemuvm.runtime.instance import tail

if TYPE_CHECKING:
    from qemuvm.runtime.records import StateView

# `ssh_ready` probes repeatedly. QEMU's user-mode forward accepts every TCP connection, so until the
# guest's sshd answers, a probe waits for the banner: ConnectTimeout bounds that (long enough for an
# sshd re-exec on a slow TCG guest), and a hard cap covers a handshake that never finishes.
PROBE_CONNECT_TIMEOUT = 4
PROBE_TIMEOUT = 15.0


@dataclass(frozen=True)
class SshTarget:
    """Everything the ssh argv needs for one instance."""

    name: str
    host: str
    port: int
    user: str
    key: Path
    known_hosts: Path


def ssh_quote(path: str) -> str:
    """A path as one ssh_config argument: ssh splits option values at white space (several known_hosts files)
    and expands %-tokens, so quote it in ssh's own way and double every %; never split, never expanded."""
    escaped = path.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def build_argv(target: SshTarget, command: Sequence[str] = (), *, tty: bool = False,
               connect_timeout: int = 5, ssh_binary: str = "ssh") -> list[str]:
    """The OpenSSH command line. Pure.

    One command word is a shell command line run as is (`"ls | wc -l"`); several words are an argv,
    each quoted so the remote shell sees exactly them (`["sh", "-c", "exit 7"]`).
    """
    argv = [
        ssh_binary,
        "-i", str(target.key),
        "-p", str(target.port),
        "-o", "IdentitiesOnly=yes",
        "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={ssh_quote(str(target.known_hosts))}",
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={connect_timeout}",
        "-o", "LogLevel=ERROR",
        "-t" if tty else "-T",
        f"{target.user}@{target.host}",
    ]
    if command:
        argv += ["--", command[0] if len(command) == 1 else shlex.join(command)]
    return argv


def want_tty() -> bool:
    """A remote TTY only for a person at a terminal; pipes and CI get clean, byte-exact streams."""
    return sys.stdin.isatty() and sys.stdout.isatty()


# -- where to connect ----------------------------------------------------------------------------


def check_key(key: Path) -> None:
    """OpenSSH silently ignores a private key others can read: say so instead of failing auth."""
    try:
        mode = key.stat().st_mode
    except FileNotFoundError:
        raise UsageError(f"ssh key {key} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"ssh key {key} is readable by others and OpenSSH refuses it: chmod 600 {key}")


def _ssh_settings(paths: InstancePaths) -> dict[str, Any]:
    """The `ssh` section of the launched profile (profile.yaml is a full, resolved dump: plain YAML is
    enough, and much faster than validating it again on every readiness probe)."""
    import yaml

    try:
        data = yaml.safe_load(paths.profile.read_text()) or {}
    except (OSError, yaml.YAMLError):
        data = {}
    section = data.get("ssh") if isinstance(data, dict) else None
    return section if isinstance(section, dict) else {}


def _last_boot(paths: InstancePaths, state: StateView) -> float:
    """When the guest last booted: QEMU's start, or its latest RESET event (a reboot).

    QEMU's start is its pidfile's mtime (written as it starts, on the clock known_hosts' mtime is on). The
    start time psutil reports is up to a second early (Linux gives the boot time in whole seconds), so a
    known_hosts written in the last second before a restart looked newer than the boot, and kept its old key."""
    try:
        boot = paths.pidfile.stat().st_mtime
    except OSError:
        boot = state.qemu_start_time or 0.0
    for line in reversed(tail(paths.events, 200).splitlines()):
        if '"RESET"' in line:
            with contextlib.suppress(ValueError, TypeError):
                boot = max(boot, float(json.loads(line)["timestamp"]))
            break
    return boot


def forget_stale_host_keys(paths: InstancePaths, state: StateView) -> None:
    """Drop the instance's known_hosts when it predates the guest's last boot.

    Images that create host keys at boot (an initramfs with `dropbear -R`, a fresh cloud image) show a
    new key after every start or reboot; the check exists to catch a key changing under a running
    guest, which this keeps (the file is only reset across boots, and only for this instance).
    """
    with contextlib.suppress(FileNotFoundError):
        if paths.known_hosts.stat().st_mtime < _last_boot(paths, state):
            paths.known_hosts.unlink()


def resolve(name: str, home: Path | None = None) -> SshTarget:
    """The SSH target of a running instance, from its state.json and launched profile."""
    from qemuvm.runtime import instance

    paths = InstancePaths.for_name(name, home)
    state = instance.read_state(paths)
    if state is None:
        raise NoSuchInstance(f"no instance named {name} (see `qemuvm ls`)")
    status = instance.effective_state(state).state
    if status == instance.PAUSED:
        raise OperationError(f"instance {name} is paused; resume it first: qemuvm resume {name}")
    if status not in (instance.RUNNING, instance.STARTING):
        raise OperationError(f"instance {name} is {status}, not running")
    settings = {**(state.ssh or {}), **_ssh_settings(paths)}
    guest_port = int(settings.get("port") or 22)
    found = ports.forward_address(state.forwards, guest_port) or _leased_address(paths, guest_port)
    if found is None:
        raise OperationError(f"instance {name} has no TCP forward to guest port {guest_port} and no leased "
                             "address on a qemuvm network (does it have a user-mode network, or has its DHCP "
                             "client not asked yet?)")
    identity = settings.get("identity")
    key = Path(identity) if identity else paths.ssh_key
    if not key.is_absolute():
        key = paths.root / key
    check_key(key)
    forget_stale_host_keys(paths, state)
    return SshTarget(name=name, host=found[0], port=found[1], user=str(settings.get("user") or "root"), key=key,
                     known_hosts=paths.known_hosts)


def _leased_address(paths: InstancePaths, guest_port: int) -> tuple[str, int] | None:
    """The guest's address on a qemuvm NAT network (dnsmasq's lease), reached directly: no forward needed."""
    from qemuvm.runtime import nics, records

    with contextlib.suppress(UsageError):
        spec = records.read_launch_spec(paths)
        leased = [nic["address"] for nic in nics.addresses(spec.taps if spec else []) if nic["address"]]
        return (leased[0], guest_port) if leased else None
    return None


def _ssh_binary() -> str:
    found = shutil.which("ssh")
    if not found:
        raise UsageError("ssh is not installed; install it with: apt-get install openssh-client")
    return found


# -- running -------------------------------------------------------------------------------------


def run(name: str, command: Sequence[str] | str, *, timeout: float | None = None, input: str | None = None,
        home: Path | None = None, connect_timeout: int = 5) -> subprocess.CompletedProcess[str]:
    """Run a command in the guest and capture it: returncode (the remote exit status; 255 when SSH
    itself failed), stdout, stderr. A `timeout` that expires gives returncode 124, like timeout(1)."""
    words = [command] if isinstance(command, str) else list(command)
    argv = build_argv(resolve(name, home), words, connect_timeout=connect_timeout, ssh_binary=_ssh_binary())
    try:
        return subprocess.run(argv, input=input if input is not None else "", capture_output=True, text=True,
                              errors="replace", timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return subprocess.CompletedProcess(argv, 124, out, err + f"\nqemuvm: ssh timed out after {timeout:g}s\n")


def interactive(name: str, command: Sequence[str] = (), *, home: Path | None = None) -> int:
    """`qemuvm ssh NAME [-- CMD]`: the terminal's streams pass through; returns the remote exit code."""
    argv = build_argv(resolve(name, home), command, tty=want_tty(), ssh_binary=_ssh_binary())
    sys.stdout.flush()
    return subprocess.call(argv)


def ssh_ready(name: str, home: Path | None = None) -> bool:
    """The `ssh` wait condition: a command succeeds in the guest (the lifecycle's wait polls this)."""
    try:
        result = run(name, "true", timeout=PROBE_TIMEOUT, home=home, connect_timeout=PROBE_CONNECT_TIMEOUT)
    except OperationError:
        return False  # not running (yet): wait's own checks report a QEMU that died
    return result.returncode == 0

