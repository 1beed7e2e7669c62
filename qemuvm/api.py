"""The Python API that the CLI, the pytest plugin and the smoke runner share.

Every function takes instance names (or a profile file for `up`), raises `UsageError`/`OperationError`
with one clear sentence, and returns plain data (dicts) that `--json` prints as is.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemuvm.errors import OperationError, ProfileError, UsageError
from qemuvm.runtime import instance, intent, launch, ports, records
from qemuvm.runtime.instance import PAUSED, RUNNING, STOPPED
from qemuvm.runtime.paths import InstancePaths

if TYPE_CHECKING:
    from qemuvm.profile.model import Profile
    from qemuvm.qemu.facts import HostFacts

Progress = Callable[[str], None]


def _silent(_message: str) -> None:
    pass


# -- finding instances ------------------------------------------------------------------------------


def instance_paths(name: str, home: Path | None = None) -> InstancePaths:
    """The folder of an existing instance, or a UsageError naming `ls`."""
    if not name or "/" in name or name.startswith("."):
        raise UsageError(f"{name!r} is not an instance name")
    paths = InstancePaths.for_name(name, home)
    if not (paths.state.exists() or paths.profile.exists()):
        raise UsageError(f"no instance named {name} (see `qemuvm ls`)")
    return paths


def _running_qemu(paths: InstancePaths) -> dict[str, Any]:
    """state.json of an instance whose QEMU runs (re-adopting it first when its supervisor died)."""
    state = launch.ensure_supervised(paths)
    if instance.proven_qemu(state) is None:
        view = instance.effective_state(state)
        raise OperationError(f"{paths.name} is not running (state {view.get('state', STOPPED)})")
    assert state is not None
    return state


def monitor_socket(name: str, home: Path | None = None) -> Path:
    """The client QMP socket of a running instance (for screenshot, snapshot, ...); errors name the state."""
    paths = instance_paths(name, home)
    _running_qemu(paths)
    return paths.qmp_socket


def _monitor(paths: InstancePaths, timeout: float = 10.0, busy_timeout: float = 10.0):  # -> Monitor
    from qemuvm.control.client import Monitor

    return Monitor(paths.qmp_socket, timeout=timeout, busy_timeout=busy_timeout)


# -- up / start ------------------------------------------------------------------------------------


def _host_facts(binary: str) -> HostFacts:
    from qemuvm.qemu import probe

    return probe.probe(binary)


def _load(source: str | os.PathLike[str], overrides: tuple[str, ...] | list[str], name: str | None,
          home: Path | None) -> tuple[Profile, bool]:
    """The profile to start: a file, or the saved profile of the instance `source`. (profile, is_saved)."""
    from qemuvm.profile.validate import load_and_validate

    text = str(source)
    if Path(text).is_file():
        return load_and_validate(text, overrides, name), False
    if "/" not in text and not text.endswith((".yaml", ".yml")):
        saved = InstancePaths.for_name(text, home).profile
        if saved.is_file():
            if name not in (None, text):
                raise UsageError("--name cannot rename an existing instance")
            return load_and_validate(str(saved), overrides, text), True
        raise UsageError(f"no profile file or instance named {text}")
    raise UsageError(f"profile file {text} does not exist")


def _check_memory(profile: Profile) -> None:
    """A guest larger than the host's RAM cannot run: refuse it before anything is created."""
    import psutil

    total_mib = psutil.virtual_memory().total >> 20
    if profile.machine.memory > total_mib:
        raise UsageError(f"machine.memory: {profile.machine.memory} MiB is more than this host has "
                         f"({total_mib} MiB)")


def _write_launch_files(paths: InstancePaths, profile: Profile, argv: list[str], paused_argv: list[str],
                        forwards: list[dict[str, Any]], vnc: dict[str, Any] | None, remove_on_down: bool) -> None:
    import yaml

    from qemuvm.runtime.prepare import vnc_password_file

    dumped = yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False)
    header = f"# The resolved profile of instance {profile.name}, as launched.\n"
    instance.write_private_atomic(paths.profile, header + dumped)
    instance.write_json_atomic(paths.argv, argv)
    lines = " \\\n    ".join(shlex.quote(arg) for arg in argv)
    instance.write_private_atomic(paths.run_sh, f"#!/bin/sh\n# Instance {profile.name} without qemuvm: the exact "
                                  f"QEMU command line (argv.json).\nexec {lines}\n", mode=0o700)
    records.write_launch_spec(paths, records.LaunchSpec(
        name=profile.name, argv=paused_argv,
        restart=records.Restart(profile.restart.policy, profile.restart.max_retries, profile.restart.backoff),
        shutdown_timeout=profile.shutdown.timeout, forwards=forwards, vnc=vnc,
        vnc_password_file=vnc_password_file(profile, paths), ssh={"user": profile.ssh.user, "port": profile.ssh.port},
        remove_on_down=remove_on_down, serial_log_max=profile.serial.log_max))


_KEEPS_RUNNING = "interrupted while waiting; {name} keeps running (qemuvm down {name} stops it)"


def up(source: str | os.PathLike[str], *, name: str | None = None, overrides: tuple[str, ...] | list[str] = (),
       wait: bool | None = None, timeout: float | None = None, home: Path | None = None,
       remove_on_down: bool = False, progress: Progress = _silent) -> dict[str, Any]:
    """Start a VM from a profile file (or restart a stopped instance by name) and return its status.

    wait None: wait for `ready` when the profile has one. timeout overrides ready.timeout.
    remove_on_down: `down` also removes the instance (its folder and ephemeral overlays), as `up --rm`.
    """
    from qemuvm.qemu.compile import accel_notice, compile_argv, kvm_problem
    from qemuvm.runtime.prepare import prepare

    profile, _saved = _load(source, overrides, name, home)
    paths = InstancePaths.for_name(profile.name, home)
    too_long = paths.too_long_socket()
    if too_long is not None:
        raise UsageError(f"the socket path {too_long} is longer than 107 bytes; set QEMUVM_HOME to a shorter "
                         "folder")
    if shutil.which(profile.qemu.binary) is None:
        raise UsageError(f"qemu.binary: {profile.qemu.binary} is not an executable QEMU on PATH; install it "
                         "(Debian: apt-get install qemu-system-x86) or name the right binary")
    _check_memory(profile)
    host = _host_facts(profile.qemu.binary)
    problem = kvm_problem(profile, host)
    if problem:
        raise UsageError(problem)
    vnc_spec = profile.display.vnc if profile.display else None
    if vnc_spec is not None and vnc_spec.password_file:
        from qemuvm.control.display import read_vnc_password

        read_vnc_password(vnc_spec.password_file)  # unreadable or empty: exit 2 now, not a stuck VM later
    notice = accel_notice(profile, host)
    if notice:
        progress(notice)
    instance.check_home(paths.root.parent)
    instance.create_dir(paths.root.parent)
    fresh = False
    try:
        with instance.instance_lock(paths, timeout=120):
            state = instance.read_state(paths)
            # Nothing of value yet (no earlier run): a failure before launch removes the folder again.
            fresh = state is None and not paths.profile.exists()
            if instance.is_active(state):
                pid = (state or {}).get("qemu_pid") or (state or {}).get("supervisor_pid")
                raise OperationError(f"{profile.name} is already running (pid {pid})")
            # Ports are chosen under one home-wide lock and recorded in supervisor.json before it is let go:
            # a parallel `up` sees them as reserved (reserved_ports) and never picks the same one.
            with instance.locked(paths.root.parent / ".ports.lock", timeout=120):
                plan, forwards, vnc = ports.plan_ports(profile, ports.reserved_ports(home, profile.name))
                if vnc is not None and "unix" in vnc:
                    vnc = {"unix": str(paths.vnc_socket)}
                # boot.once applies to the instance's first start only (an install ISO, as virt-install does).
                first_boot = state is None or not state.get("started_at")
                argv = compile_argv(profile, paths, host, plan, first_boot=first_boot)
                paused_argv = compile_argv(profile, paths, host, plan, start_paused=True, first_boot=first_boot)
                _write_launch_files(paths, profile, argv, paused_argv, forwards, vnc, remove_on_down)
            prepare(profile, paths, host)
            instance.unlink_stale_sockets(paths)
            intent.clear(paths)
            serial_offset = paths.serial_log.stat().st_size if paths.serial_log.exists() else 0
            progress(f"starting {profile.name} …")
            proc = launch.start_supervisor(paths)
            launch.wait_until_up(paths, proc)
    except BaseException as exc:
        active = instance.is_active(instance.read_state(paths))
        if isinstance(exc, KeyboardInterrupt) and active:
            progress(_KEEPS_RUNNING.format(name=profile.name))
        # A first start that failed leaves nothing behind (its error already quotes qemu.log) -- unless a
        # process of it still lives (Ctrl-C mid-start, a supervisor killed): never delete a folder under it.
        # An existing instance keeps its folder (disks, overlays, logs) without stale sockets.
        if fresh and not active and instance.scan_for_qemu(paths) is None:
            shutil.rmtree(paths.root, ignore_errors=True)
        elif not active:
            instance.unlink_stale_sockets(paths)
        raise
    try:
        return _wait_ready(paths, profile, wait, timeout, serial_offset, progress)
    except KeyboardInterrupt:  # Ctrl-C ends the wait, not the VM: say so
        progress(_KEEPS_RUNNING.format(name=profile.name))
        raise


def _wait_ready(paths: InstancePaths, profile: Profile, wait: bool | None, timeout: float | None,
                serial_offset: int, progress: Progress) -> dict[str, Any]:
    # state.json, just written by the supervisor, already says running: no QMP round trip needed here.
    result = _view(paths, instance.read_state(paths))
    ready = profile.ready
    if wait is None:
        wait = ready is not None
    if wait:
        from qemuvm.control import wait as waiting

        conditions = waiting.ready_conditions(paths, profile, serial_offset=serial_offset)
        limit = timeout if timeout is not None else (ready.timeout if ready else 120.0)
        result["ready_after_s"] = round(waiting.wait_for(paths, conditions, limit, progress=progress), 2)
        result["ready"] = True
    return result


def start(name: str, *, wait: bool | None = None, timeout: float | None = None, home: Path | None = None,
          progress: Progress = _silent) -> dict[str, Any]:
    """Start a stopped instance again from its saved profile.yaml (disks and overlays are kept)."""
    instance_paths(name, home)
    return up(name, wait=wait, timeout=timeout, home=home, progress=progress)


def edit(name: str, *, editor: str | None = None, home: Path | None = None) -> bool:
    """Open the saved profile in $EDITOR; save it only when it is valid (applies at the next start).

    Returns True when the profile changed. An invalid edit raises ProfileError and keeps the old file.
    """
    from qemuvm.profile.validate import load_and_validate

    paths = instance_paths(name, home)
    if not paths.profile.exists():
        raise UsageError(f"instance {name} has no saved profile")
    command = shlex.split(editor or os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi")
    fd, tmp_name = tempfile.mkstemp(prefix=".edit-", suffix=".yaml", dir=paths.root)
    tmp = Path(tmp_name)
    try:
        os.close(fd)
        original = paths.profile.read_text()
        tmp.write_text(original)
        if subprocess.call([*command, str(tmp)]) != 0:
            raise OperationError(f"the editor {command[0]} failed; {paths.profile} is unchanged")
        edited = tmp.read_text()
        if edited == original:
            return False
        try:
            load_and_validate(str(tmp), (), name)
        except ProfileError as exc:
            shown = [line.replace(str(tmp), str(paths.profile)) for line in exc.problems]
            raise ProfileError([*shown, f"{paths.profile} is unchanged (the edit is invalid)"]) from None
        os.chmod(tmp, 0o600)
        os.replace(tmp, paths.profile)
        return True
    finally:
        tmp.unlink(missing_ok=True)


# -- down / kill -------------------------------------------------------------------------------------


def down(name: str, *, timeout: float | None = None, force: bool = False, home: Path | None = None,
         progress: Progress = _silent) -> dict[str, Any]:
    """Stop a VM: ACPI power-down, wait, `quit`, SIGTERM, SIGKILL. Returns which step ended it.

    An instance started with `remove_on_down` (`up --rm`) is removed once stopped."""
    from qemuvm.control import stop

    paths = instance_paths(name, home)
    result = stop.stop(name, paths, timeout, force, progress)
    spec = records.read_launch_spec(paths)
    if spec is not None and spec.remove_on_down:
        rm(name, home=home)
        result["removed"] = True
    return result


def kill(name: str, *, home: Path | None = None) -> dict[str, Any]:
    """SIGKILL QEMU at once (virsh destroy); the restart policy does not apply."""
    from qemuvm.control import stop

    return stop.kill(name, instance_paths(name, home))


def rm(name: str, *, force: bool = False, home: Path | None = None) -> dict[str, Any]:
    """Delete the instance folder (with its ephemeral overlays); refuses while it runs unless force."""
    paths = instance_paths(name, home)
    with instance.instance_lock(paths, timeout=30):
        if instance.is_active(instance.read_state(paths)):
            if not force:
                raise OperationError(f"{name} is running; stop it with `qemuvm down {name}` or use rm --force")
            kill(name, home=home)
        shutil.rmtree(paths.root)
    return {"name": name, "removed": str(paths.root)}


# -- runtime control ---------------------------------------------------------------------------------


def _await_record(paths: InstancePaths, what: str, holds: Callable[[dict[str, Any]], bool],
                  timeout: float = 10.0) -> dict[str, Any]:
    """Wait until the supervisor has recorded the result of a command in state.json: a command returns only
    once `ls`, `status` and state.json show what it did (read-your-writes)."""
    deadline = time.monotonic() + timeout
    while True:
        state = instance.read_state(paths) or {}
        if holds(state):
            return state
        if instance.live_supervisor(state) is None or time.monotonic() > deadline:
            raise OperationError(f"{paths.name}: QEMU did it, but its supervisor has not recorded {what} "
                                 f"within {timeout:g} s; see {paths.supervisor_log}")
        time.sleep(0.005)


def pause(name: str, *, home: Path | None = None) -> dict[str, Any]:
    paths = instance_paths(name, home)
    _running_qemu(paths)
    _monitor(paths).execute("stop")
    _await_record(paths, "the pause", lambda s: s.get("state") == PAUSED)
    return status(name, home=home)


def resume(name: str, *, home: Path | None = None) -> dict[str, Any]:
    paths = instance_paths(name, home)
    state = _running_qemu(paths)
    _monitor(paths).execute("cont")
    if state.get("state") != instance.SHUTDOWN:  # a powered-off guest under -no-shutdown stays down
        _await_record(paths, "the resume", lambda s: s.get("state") == RUNNING)
    return status(name, home=home)


def reboot(name: str, *, home: Path | None = None) -> dict[str, Any]:
    """A hard reset (QMP system_reset), like pressing the reset button; the guest is not asked.

    Returns once the supervisor recorded the RESET (a new serial_offset: waits start from the new boot)."""
    paths = instance_paths(name, home)
    resets = int(_running_qemu(paths).get("resets") or 0)
    _monitor(paths).execute("system_reset")
    _await_record(paths, "the reset", lambda s: int(s.get("resets") or 0) > resets)
    return status(name, home=home)


def qmp(name: str, command: str, arguments: dict[str, Any] | None = None, *, home: Path | None = None) -> Any:
    """Any QMP command on the client monitor; its return value. A QMP error raises QmpError (exit 1)."""
    paths = instance_paths(name, home)
    _running_qemu(paths)
    return _monitor(paths).execute(command, arguments)


def render(source: str | os.PathLike[str], *, overrides: tuple[str, ...] | list[str] = (), name: str | None = None,
           home: Path | None = None) -> tuple[str, list[Any]]:
    """The QEMU binary and the compiled options (each with the profile fields behind it) of a profile file,
    as `up` would start it (ports not yet planned)."""
    from qemuvm.profile.validate import load_and_validate
    from qemuvm.qemu.compile import compile_options

    profile = load_and_validate(str(source), overrides, name)
    return profile.qemu.binary, compile_options(profile, InstancePaths.for_name(profile.name, home),
                                                _host_facts(profile.qemu.binary))


def wait(name: str, *, serial: str | None = None, port: int | None = None, event: str | None = None,
         ssh: bool = False, shutdown: bool = False, ready: bool = False, timeout: float = 120.0,
         since: str = "boot", home: Path | None = None, progress: Progress = _silent) -> float:
    """Wait until every condition holds (none: the profile's `ready`); the seconds it took. Fails at once,
    with the last serial lines, when QEMU exits for good first (control/wait.py)."""
    from qemuvm.control import wait as waiting

    paths = instance_paths(name, home)
    conditions = waiting.conditions_for(paths, serial=serial, port=port, event=event, ssh=ssh, shutdown=shutdown,
                                        ready=ready, since=since)
    return waiting.wait_for(paths, conditions, timeout, progress=progress)


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


def screenshot(name: str, out: str | os.PathLike[str], *, home: Path | None = None) -> Path:
    """The VM's screen as a PNG at `out` (QMP screendump; the profile needs a display); the path written."""
    from qemuvm.control import display

    return display.screenshot(monitor_socket(name, home), out)


def snapshot(name: str, action: str, tag: str | None = None, *, home: Path | None = None) -> Any:
    """Internal snapshots: action save | load | delete (with a tag) or list (their records)."""
    from qemuvm.control import snapshot as snapshots

    return snapshots.run(monitor_socket(name, home), action, tag)


def qmp_risk(command: str, arguments: dict[str, Any] | None = None) -> str | None:
    """Why a raw QMP command deserves a warning (it ends the VM or touches host files), or None."""
    from qemuvm.control.client import risk

    return risk(command, arguments)


def supervise(name: str, *, home: Path | None = None) -> dict[str, Any]:
    """Give a running but unsupervised QEMU a supervisor again (after proving it is ours)."""
    paths = instance_paths(name, home)
    launch.ensure_supervised(paths)
    return status(name, home=home)


# -- status / ls -----------------------------------------------------------------------------------


def _view(paths: InstancePaths, state: dict[str, Any] | None) -> dict[str, Any]:
    view = instance.effective_state(state)
    return {
        "name": paths.name,
        "state": view.get("state", STOPPED),
        "qemu_pid": view.get("qemu_pid") if view.get("qemu_pid_alive", True) else None,
        "supervisor_pid": view.get("supervisor_pid") if view.get("supervised") else None,
        "supervised": view.get("supervised", False),
        "accel": view.get("accel"),
        "uptime_s": view.get("uptime_s"),
        "restarts": view.get("restarts", 0),
        "policy": view.get("policy"),
        "forwards": view.get("forwards") or [],
        "vnc": view.get("vnc"),
        "last_exit": view.get("last_exit"),
        "problem": view.get("unreadable"),  # state.json could not be read: the state comes from the processes
        "dir": str(paths.root),
    }


def status(name: str, *, home: Path | None = None) -> dict[str, Any]:
    """The instance's state; the live run state comes from QMP when QEMU is alive."""
    paths = instance_paths(name, home)
    state = instance.read_state(paths)
    result = _view(paths, state)
    if instance.proven_qemu(state) is not None:
        try:
            live = _monitor(paths, timeout=5.0, busy_timeout=3.0).execute("query-status")["status"]
            result["qmp_status"] = live
            # A reset while paused leaves QEMU in prelaunch until `cont`: it is paused, not starting (as `ls`).
            paused_reset = live == "prelaunch" and (state or {}).get("state") == PAUSED
            result["state"] = PAUSED if paused_reset else instance.qmp_state(live)
        except OperationError:
            result["qmp_status"] = None  # busy or going away: state.json's word stands
    if result.get("vnc") and paths.vnc_password.exists():  # the owner may see it: the file is theirs, 0600
        from qemuvm import files

        with contextlib.suppress(UsageError):
            result["vnc"] = {**result["vnc"], "password": files.read_text(paths.vnc_password, "vnc.password",
                                                                          4096).strip()}
    return result


def ls(home: Path | None = None) -> list[dict[str, Any]]:
    """Every instance from its state.json plus a pid liveness check; no QMP."""
    return [_view(paths, instance.read_state(paths)) for paths in instance.list_instances(home)]


# -- logs / events / wait ----------------------------------------------------------------------------

LOGS = {"serial": "serial_log", "qemu": "qemu_log", "events": "events", "supervisor": "supervisor_log"}


def log_path(name: str, kind: str = "serial", home: Path | None = None) -> Path:
    if kind not in LOGS:
        raise UsageError(f"unknown log {kind!r}: one of {', '.join(LOGS)}")
    return getattr(instance_paths(name, home), LOGS[kind])


def follow(path: Path, *, lines: int | None = None, keep_going: bool = False,
           poll: float = 0.1) -> Iterator[str]:
    """The last `lines` lines of `path` (all when None), then, with keep_going, new text as it arrives."""
    from qemuvm.control.wait import Tail

    offset = 0
    if lines is not None:
        text = instance.tail(path, lines)
        if text:
            yield text + "\n"
        offset = path.stat().st_size if path.exists() else 0
    tail = Tail(path, offset)
    while True:
        text = tail.new()
        if text:
            yield text
        if not keep_going:
            return
        time.sleep(poll)


def events(name: str, *, home: Path | None = None) -> list[dict[str, Any]]:
    """Every recorded QMP event of the instance, oldest first."""
    path = instance_paths(name, home).events
    found = []
    with contextlib.suppress(FileNotFoundError), path.open() as handle:
        for line in handle:
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
    return found
