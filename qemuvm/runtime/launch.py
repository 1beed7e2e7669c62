"""Start an instance: plan ports, compile, write the records, prepare, start its supervisor and wait until its
QEMU runs (or fails, with QEMU's own words); and adopt a QEMU whose supervisor died."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemuvm.errors import OperationError, UsageError
from qemuvm.paths import InstancePaths
from qemuvm.runtime import decisions, instance, intent, ports, records, reuse
from qemuvm.runtime.instance import CRASHED, PAUSED, RUNNING, SAVED, STOPPED
from qemuvm.runtime.spawn import Prestart, supervisor_process

if TYPE_CHECKING:
    from qemuvm.profile.model import Profile
    from qemuvm.qemu.facts import HostFacts

START_TIMEOUT = 60.0
KEEPS_RUNNING = "interrupted while waiting; {name} keeps running (qemuvm down {name} stops it)"


def start_instance(profile: Profile, paths: InstancePaths, host: HostFacts, *, home: Path | None,
                   remove_on_down: bool, progress: Callable[[str], None],
                   discard_saved: bool = False, template: tuple[Path, records.TemplateRecord] | None = None,
                   prestart: Prestart | None = None, invocation: tuple[Any, ...] | None = None) -> tuple[int, bool]:
    """plan ports → compile → write the launch records → prepare → start the supervisor → wait until QEMU
    runs; or, for a saved instance, restore its saved state with the launch records it was saved with; or,
    given a template (folder, record), start a new clone of it: new overlays, the template's state restored.
    Returns where this boot's output starts in serial.log, and whether it restored a saved state. A first
    start that fails leaves nothing. `invocation` (source, --set, --name) lets a repeat `up` of the same one
    reuse this start's records (runtime/reuse.py)."""
    instance.check_home(paths.root.parent)
    instance.create_dir(paths.root.parent)
    fresh = False
    try:
        with instance.instance_lock(paths, timeout=120):
            state = instance.read_state(paths)
            # Nothing of value yet (no earlier run): a failure before launch removes the folder again.
            fresh = state is None and not paths.profile.exists()
            if instance.is_active(state):
                raise OperationError(f"{profile.name} is already running (pid {_pid_of(state)})")
            # A save interrupted before its state file got its name leaves only the temporary one: not a state.
            paths.saved_state.with_name(".saved.state.tmp").unlink(missing_ok=True)
            if discard_saved:
                for saved in (paths.saved_state, paths.saved_info):
                    saved.unlink(missing_ok=True)
            kind = start_kind(saved=paths.saved_state.exists(), template=template is not None)
            PREPARE[kind](_Start(profile, paths, host, home, remove_on_down, state, progress, template, invocation))
            return _launch(paths, prestart, progress), kind != COLD
    except BaseException:
        _after_failure(paths, fresh)
        raise


# Which start an instance gets, each prepared its own way before the same launch-and-wait (`_launch`) and the
# same cleanup on failure (`_after_failure`).
COLD, RESTORE, CLONE = "cold", "restore", "clone"


def start_kind(*, saved: bool, template: bool) -> str:
    """clone (a template was given: a new instance from its saved state), restore (this instance has a saved
    state: `start` continues it), or cold (a boot from the profile)."""
    return CLONE if template else RESTORE if saved else COLD


@dataclasses.dataclass(frozen=True)
class _Start:
    profile: Profile
    paths: InstancePaths
    host: HostFacts
    home: Path | None
    remove_on_down: bool
    state: records.StateView | None
    progress: Callable[[str], None]
    template: tuple[Path, records.TemplateRecord] | None
    invocation: tuple[Any, ...] | None


def _prepare_cold(s: _Start) -> None:
    _plan_and_prepare(s.profile, s.paths, s.host, s.home, s.remove_on_down, s.state, s.progress,
                      invocation=s.invocation)


def _prepare_restore(s: _Start) -> None:
    """The launch records the state was saved with (the argv must match the saved devices), restoring it."""
    from qemuvm.runtime import restore

    records.write_launch_spec(s.paths, restore.launch_spec(s.paths, s.profile, s.remove_on_down))
    s.progress(f"restoring {s.profile.name} from {s.paths.saved_state} …")


def _prepare_clone(s: _Start) -> None:
    assert s.template is not None
    _plan_and_prepare(s.profile, s.paths, s.host, s.home, s.remove_on_down, s.state, s.progress, clone_of=s.template)
    s.progress(f"restoring {s.profile.name} from template {s.template[1].fingerprint} …")


PREPARE: dict[str, Callable[[_Start], None]] = {COLD: _prepare_cold, RESTORE: _prepare_restore, CLONE: _prepare_clone}


def start_reused(reusable: reuse.Reusable, *, home: Path | None, remove_on_down: bool,
                 progress: Callable[[str], None], prestart: Prestart | None = None) -> int | None:
    """Start a stopped instance again from its last start's records, as they are (runtime/reuse.py): no profile,
    no compile, no prepare. Returns where this boot's output starts in serial.log; None when, under the locks,
    the records no longer fit (it started meanwhile, a saved state, a port taken): then the full path runs."""
    paths, spec = reusable.paths, reusable.spec
    try:
        with instance.instance_lock(paths, timeout=120):
            state = instance.read_state(paths)
            if instance.is_active(state):
                raise OperationError(f"{paths.name} is already running (pid {_pid_of(state)})")
            if paths.saved_state.exists() or state is None:
                return None
            with instance.locked(paths.root.parent / ".ports.lock", timeout=120):
                if not reuse.ports_free(spec, home):
                    return None
                # Written anew (not only for --rm): a fresh supervisor.json reserves its ports for parallel ups.
                records.write_launch_spec(paths, dataclasses.replace(spec, remove_on_down=remove_on_down))
            return _launch(paths, prestart, progress)
    except BaseException:
        _after_failure(paths, fresh=False)
        raise


def _pid_of(state: records.StateView | None) -> int | None:
    return (state.qemu_pid or state.supervisor_pid) if state else None


MIN_FREE = 1 << 20  # bytes free on the instance folder's device that a start needs


def _free_bytes(folder: Path) -> int | None:
    try:
        found = os.statvfs(folder)
    except OSError:
        return None
    return found.f_bavail * found.f_frsize


def _launch(paths: InstancePaths, prestart: Prestart | None, progress: Callable[[str], None]) -> int:
    """The records are written: clear what a last run left, start the supervisor and wait until QEMU runs.
    Returns where this boot's output starts in serial.log."""
    free = _free_bytes(paths.root)
    if free is not None and free < MIN_FREE:
        # QEMU would fail writing its pidfile ("Failed to write pid file"), the logs would stop: say why first.
        raise OperationError(f"no space left on the device of {paths.root} ({free >> 10} KiB free; a start needs "
                             f"{MIN_FREE >> 20} MiB for its pidfile, records and logs); free some space and try again")
    instance.unlink_stale_sockets(paths)
    intent.clear(paths)
    serial_offset = paths.serial_log.stat().st_size if paths.serial_log.exists() else 0
    progress(f"starting {paths.name} …")
    wait_until_up(paths, start_supervisor(paths, prestart))
    return serial_offset


def _after_failure(paths: InstancePaths, fresh: bool) -> None:
    from qemuvm.runtime import helpers

    helpers.stop_orphans(instance.read_state(paths))  # a supervisor killed between its helpers and QEMU
    active = instance.is_active(instance.read_state(paths))
    # A first start that failed leaves nothing behind (its error already quotes qemu.log) -- unless a
    # process of it still lives (Ctrl-C mid-start, a supervisor killed): never delete a folder under it.
    # An existing instance keeps its folder (disks, overlays, logs) without stale sockets.
    if fresh and not active and instance.scan_for_qemu(paths) is None:
        shutil.rmtree(paths.root, ignore_errors=True)
    elif not active:
        instance.unlink_stale_sockets(paths)


def define_instance(profile: Profile, paths: InstancePaths, host: HostFacts, *, home: Path | None,
                    progress: Callable[[str], None]) -> None:
    """`define` (virsh define): everything a start does before the supervisor -- ports planned and recorded, the
    launch records, disks created, seed and UEFI vars written -- and no QEMU. `start NAME` boots it later; until
    then it has no state.json (`ls`: stopped, never started). A failed define leaves nothing."""
    instance.check_home(paths.root.parent)
    instance.create_dir(paths.root.parent)
    existed = paths.root.exists()
    made = False
    try:
        with instance.instance_lock(paths, timeout=120):
            if instance.read_state(paths) is not None or paths.profile.exists():
                raise UsageError(f"an instance named {profile.name} exists; start it with `qemuvm start "
                                 f"{profile.name}`, or remove it first: qemuvm rm {profile.name}")
            made = not existed
            _plan_and_prepare(profile, paths, host, home, False, None, progress)
    except BaseException:
        if made:
            shutil.rmtree(paths.root, ignore_errors=True)
        raise


def _plan_and_prepare(profile: Profile, paths: InstancePaths, host: HostFacts, home: Path | None,
                      remove_on_down: bool, state: records.StateView | None, progress: Callable[[str], None],
                      clone_of: tuple[Path, records.TemplateRecord] | None = None,
                      invocation: tuple[Any, ...] | None = None) -> None:
    """Ports (under one home-wide lock, recorded in supervisor.json before it is let go: a parallel `up` sees
    them as reserved and never picks the same one), the argv, the launch records, then disks and seed; for a
    clone, its overlays on the template and a LaunchSpec that restores the template's state."""
    from qemuvm.qemu import passt, segment, shares, tpm
    from qemuvm.qemu.compile import compile_argv
    from qemuvm.runtime import nics, restore, template
    from qemuvm.runtime.prepare import prepare, prepare_clone, write_launch_files

    # `type: auto` is decided here, once, and said; profile.yaml keeps the choice for later starts.
    profile, notes = shares.resolved(profile, host)
    for note in notes:
        progress(note)

    with instance.locked(paths.root.parent / ".ports.lock", timeout=120):
        plan, forwards, vnc = ports.plan_ports(profile, ports.reserved_ports(home, profile.name))
        if vnc is not None and "unix" in vnc:
            vnc = {"unix": str(paths.vnc_socket)}
        # boot.once applies to the instance's first start only (an install ISO, as virt-install does).
        first_boot = state is None or not state.started_at
        argv = compile_argv(profile, paths, host, plan, first_boot=first_boot)
        paused_argv = compile_argv(profile, paths, host, plan, start_paused=True, first_boot=first_boot)
        # A clone stays one for its life: its overlays back onto the template at every later start too.
        linked = clone_of[1].fingerprint if clone_of else None
        with contextlib.suppress(UsageError):
            earlier = records.read_launch_spec(paths)
            linked = linked or (earlier.template if earlier else None)
        write_launch_files(paths, profile, argv, paused_argv, forwards, vnc, remove_on_down, template=linked,
                           helpers=[records.Helper(**helper) for helper in (
                               *shares.helpers(profile, paths, host),
                               *passt.helpers(profile, paths, host, plan.forwards, plan.ssh_host_port),
                               *segment.helpers(profile, paths, sys.executable),
                               *tpm.helpers(profile, paths, host))],
                           taps=nics.taps(profile) if any(nic.network for nic in profile.network) else [])
        if clone_of is not None:
            folder, record = clone_of
            restore.check_memory(paths, profile, "start it without --warm")
            spec = records.read_launch_spec(paths)
            assert spec is not None
            records.write_launch_spec(paths, dataclasses.replace(
                spec, restore_from=str(folder / "saved.state"), restore_saved_at=record.saved_at,
                restore_keep=True, template=record.fingerprint))
    if clone_of is not None:
        reuse.forget(paths)  # this start restores the template: its records are no restart's
        prepare_clone(profile, paths, clone_of[0], clone_of[1].disks, template.CLONED_FILES)
    else:
        prepare(profile, paths, host)
        source, overrides, name = invocation or (None, (), None)
        reuse.remember(paths, profile, source, overrides, name, first_boot)


def start_supervisor(paths: InstancePaths, prestart: Prestart | None = None) -> subprocess.Popen[bytes]:
    """The instance's supervisor, detached, stdio to supervisor.log: the prestarted one when there is one."""
    proc = prestart.take(paths) if prestart is not None else None
    if proc is not None:
        return proc
    with paths.supervisor_log.open("ab") as log:
        return supervisor_process([str(paths.root)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


def failure_message(paths: InstancePaths, state: records.StateView | None) -> str:
    """`NAME failed to start: how QEMU ended`, then the last lines of qemu.log."""
    last = (state.last_exit if state else None) or records.ExitRecord()
    if last.signal:
        how = f"QEMU was killed by {last.signal}"
    elif last.exit_code is not None:
        how = f"QEMU exited with code {last.exit_code}"
    else:
        how = "QEMU ended"
    if last.helper:  # QEMU never started: a helper it needs did not come up
        return f"{paths.name} failed to start: {last.helper}; nothing is left running"
    log = instance.tail(paths.qemu_log, 12)
    if last.reason == "restore-failed":
        spec = None
        with contextlib.suppress(UsageError):
            spec = records.read_launch_spec(paths)
        if spec is not None and spec.template:
            how += (f" while loading the state of template {spec.template} ({spec.restore_from}); `qemuvm "
                    f"template rm {spec.template}` removes it, and the next --warm run makes a new one")
        else:
            how += (f" while loading {paths.saved_state}; the saved state is kept: fix the cause below, or "
                    f"`qemuvm start {paths.name} --discard-saved` boots afresh")
    return f"{paths.name} failed to start: {how}" + (f"; last lines of {paths.qemu_log}:\n{log}" if log else "")


def wait_until_up(paths: InstancePaths, proc: subprocess.Popen[bytes],
                  timeout: float = START_TIMEOUT) -> records.StateView:
    """Wait until the supervisor `proc` records QEMU running (or paused) in state.json; fail fast otherwise.
    The folder watch wakes this at the supervisor's write, so `up` returns as soon as QEMU runs."""
    from qemuvm.runtime.watch import FolderWatch

    with FolderWatch(paths.root) as watch:
        return _wait_until_up(paths, proc, timeout, watch)


def _wait_until_up(paths: InstancePaths, proc: subprocess.Popen[bytes], timeout: float,
                   watch: Any) -> records.StateView:
    deadline = time.monotonic() + timeout
    while True:
        state = instance.read_state(paths)
        ours = state is not None and state.supervisor_pid == proc.pid and not state.supervisor_found_by
        if state is not None and ours and state.state in (RUNNING, PAUSED):
            return state
        if state is not None and ours and state.state in (CRASHED, STOPPED, SAVED):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)  # it exits right after recording: leave nothing running behind
            raise OperationError(failure_message(paths, state))
        if proc.poll() is not None:
            if instance.proven_qemu(state) is None and instance.scan_for_qemu(paths) is not None:
                # QEMU exists but has not written its pidfile yet: that takes it milliseconds.
                state = _pidfile_proof(paths)
            if instance.proven_qemu(state) is not None:
                # The supervisor died (killed) after starting QEMU: a new one adopts it and finishes the start.
                adopted = ensure_supervised(paths)
                if adopted is not None and adopted.state in (RUNNING, PAUSED):
                    return adopted
                raise OperationError(failure_message(paths, adopted))
            final = instance.read_state(paths)
            if ours and final and final.state in (CRASHED, STOPPED, SAVED):  # recorded just before it exited
                raise OperationError(failure_message(paths, final))
            how = f"was killed by {decisions.signal_name(-proc.returncode)}" if proc.returncode < 0 \
                else f"exited with code {proc.returncode}"
            raise OperationError(f"the supervisor of {paths.name} {how} before QEMU ran; nothing is left running; "
                                 f"last lines of {paths.supervisor_log}:\n{instance.tail(paths.supervisor_log)}")
        if time.monotonic() > deadline:
            raise OperationError(f"{paths.name} did not reach running within {timeout:g} s; "
                                 f"see {paths.qemu_log} and {paths.supervisor_log}")
        watch.wait(0.05)  # woken by the supervisor's write; the timeout only notices a supervisor that died


def _pidfile_proof(paths: InstancePaths, timeout: float = 10.0) -> records.StateView | None:
    deadline = time.monotonic() + timeout
    state = instance.read_state(paths)
    while instance.proven_qemu(state) is None and instance.scan_for_qemu(paths) is not None \
            and time.monotonic() < deadline:
        time.sleep(0.01)
        state = instance.read_state(paths)
    return state


def ensure_supervised(paths: InstancePaths, timeout: float = 15.0) -> records.StateView | None:
    """Adopt a QEMU that runs without a supervisor (it was killed): start one and wait until it took over.

    Returns the current state. Does nothing when a supervisor is alive or no proven QEMU runs.
    """
    state = instance.read_state(paths)
    if instance.live_supervisor(state) is not None or instance.proven_qemu(state) is None:
        return state
    proc = start_supervisor(paths)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = instance.read_state(paths)
        # Its own record, not the dead supervisor's last one (which a live lock holder makes look current).
        if state and state.supervisor_pid == proc.pid and not state.supervisor_found_by \
                and instance.live_supervisor(state) is not None \
                and state.accel is not None and state.state != instance.STARTING:
            return state
        if proc.poll() is not None:
            # Another supervisor won the race, or QEMU is gone: either way someone recorded it.
            return instance.read_state(paths)
        time.sleep(0.05)
    raise OperationError(f"could not re-adopt {paths.name} within {timeout:g} s; see {paths.supervisor_log}")
