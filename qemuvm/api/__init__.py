"""The Python API that the CLI, the pytest plugin and the smoke runner share.

Every function takes instance names (or a profile file for `up`), raises `UsageError`/`OperationError`
with one clear sentence, and returns plain data (dicts) that `--json` prints as is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Finding instances (folder, running QEMU, monitor) is api/instances.py, shared with api/guest.py.
from qemuvm.api.instances import _monitor, _running_qemu, instance_paths, monitor_socket
from qemuvm.errors import OperationError, UsageError
from qemuvm.paths import InstancePaths
from qemuvm.runtime import instance, intent, launch, records, spawn
from qemuvm.runtime.instance import PAUSED, RUNNING

if TYPE_CHECKING:
    import threading

Progress = Callable[[str], None]


def _silent(_message: str) -> None:
    pass


# -- up / start ------------------------------------------------------------------------------------

def prestart() -> None:
    """Start a supervisor now, before this process knows which instance it will supervise: the CLI does this
    first thing for `up` and `start` (runtime/spawn.py, before it imports this module), so the supervisor's own
    start (a second interpreter, its imports) overlaps with the CLI's imports and parsing instead of following
    them. The next `up` takes it; unused, it exits."""
    spawn.prestart()


def release_prestart() -> None:
    """An early supervisor that no `up` took (the arguments were wrong, the command failed before it): its
    stdin closes, so it exits once its imports are done (and is reaped). Never one left waiting."""
    spawn.release_early()


def _prestarted() -> spawn.Prestart:
    return spawn.take_early()


def up(source: str | os.PathLike[str], *, name: str | None = None, overrides: tuple[str, ...] | list[str] = (),
       wait: bool | None = None, timeout: float | None = None, home: Path | None = None,
       remove_on_down: bool = False, discard_saved: bool = False, warm: bool = False,
       progress: Progress = _silent, cancel: threading.Event | None = None,
       download: Callable[[int, int | None], None] | None = None) -> dict[str, Any]:
    """Start a VM from a profile file (or restart a stopped instance by name) and return its status.

    wait None: wait for `ready` when the profile has one. timeout overrides ready.timeout.
    remove_on_down: `down` also removes the instance (its folder and ephemeral overlays), as `up --rm`.
    warm: start a new instance as a clone of the profile's template (made by this call when there is none):
    ready in a fraction of a boot (control/warm.py). cancel: set by another thread, ends the ready-wait as
    Ctrl-C does (up_many). download: called as the bytes of a url or catalog image disk arrive (done, total).
    """
    from qemuvm.control import wait as waiting
    from qemuvm.control.status import view
    from qemuvm.runtime import preflight, reuse

    paths: InstancePaths | None = None
    try:
        with _prestarted() as prestart:  # its imports run while this process validates and compiles
            made_from, restored, serial_offset, profile = None, False, None, None
            reused = None if warm or discard_saved else reuse.find(source, overrides, name, home)
            if reused is not None:  # a repeat start: the last start's records, no profile (runtime/reuse.py)
                paths, ready = reused.paths, reused.ready
                serial_offset = launch.start_reused(reused, home=home, remove_on_down=remove_on_down,
                                                    progress=progress, prestart=prestart)
            if serial_offset is None:
                profile = preflight.load_profile(source, overrides, name, home, progress, download)
                paths, ready = InstancePaths.for_name(profile.name, home), profile.ready
                host, notice = preflight.check_host(profile, paths)
                if notice:
                    progress(notice)
                if warm:
                    from qemuvm.control.warm import start_warm

                    serial_offset, made_from = start_warm(profile, paths, host, home=home,
                                                          remove_on_down=remove_on_down, timeout=timeout,
                                                          progress=progress, source=str(Path(source).resolve()),
                                                          prestart=prestart)
                    restored = True
                else:
                    serial_offset, restored = launch.start_instance(
                        profile, paths, host, home=home, remove_on_down=remove_on_down, discard_saved=discard_saved,
                        progress=progress, prestart=prestart, invocation=(source, tuple(overrides), name))
        # state.json, just written by the supervisor, already says running: no QMP round trip needed here.
        result = view(paths, instance.read_state(paths))
        ready_after = waiting.wait_ready(paths, ready, wait, timeout, serial_offset, progress, restored=restored,
                                         cancel=cancel)
    except KeyboardInterrupt:
        # Ctrl-C ends the wait (or the start), not a VM that already runs: say so, wherever it landed.
        with contextlib.suppress(Exception):  # a record unreadable now must not hide the Ctrl-C
            if paths is not None and instance.is_active(instance.read_state(paths)):
                progress(launch.KEEPS_RUNNING.format(name=paths.name))
        raise
    if ready_after is not None:
        result.update(ready_after_s=round(ready_after, 2), ready=True)
    if restored and profile is not None and profile.guest_agent:  # its clock stands where it was saved
        from qemuvm.control import agent

        result["clock_set"] = agent.set_clock(paths)
        if result["clock_set"]:
            progress(f"{paths.name}: guest clock set through the guest agent")
    if made_from is not None:
        result["template"] = made_from
    return result


def up_many(sources: Sequence[str | os.PathLike[str]], *, count: int = 1, name: str | None = None,
            overrides: tuple[str, ...] | list[str] = (), wait: bool | None = None, timeout: float | None = None,
            home: Path | None = None, remove_on_down: bool = False, warm: bool = False,
            progress: Progress = _silent) -> list[dict[str, Any]]:
    """Start several VMs at once (`up a.yaml b.yaml`, `up --count N`: NAME-1 .. NAME-N), one Python process for
    all: every profile is validated first (an invalid one starts nothing), then each VM starts and waits in a
    thread of its own. One result per VM, in order: `up`'s, or {"name", "error", "exit_code"} for one that
    failed (the others run on). Ctrl-C ends the waits; the VMs that started keep running."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from qemuvm.errors import QemuvmError
    from qemuvm.runtime import preflight

    if name is not None and len(sources) > 1:
        raise UsageError("--name names the VMs of one profile; give one profile with --name, or none")
    planned = []
    for source in sources:
        profile = preflight.load_profile(source, overrides, name, home, progress)
        preflight.check_host(profile, InstancePaths.for_name(profile.name, home))  # one that cannot run: none starts
        planned += [(source, instance_name) for instance_name in preflight.series(profile.name, count)]
    names = [instance_name for _, instance_name in planned]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"two of these profiles would both start an instance named {twice[0]}; give them "
                         "different names")
    cancel = threading.Event()

    def one(source: str | os.PathLike[str], instance_name: str) -> dict[str, Any]:
        try:
            return up(source, name=instance_name, overrides=overrides, wait=wait, timeout=timeout, home=home,
                      remove_on_down=remove_on_down, warm=warm, progress=progress, cancel=cancel)
        except QemuvmError as exc:
            return {"name": instance_name, "error": str(exc), "exit_code": exc.exit_code}

    with ThreadPoolExecutor(max_workers=len(planned), thread_name_prefix="up") as pool:
        futures = [pool.submit(one, source, instance_name) for source, instance_name in planned]
        try:
            return [future.result() for future in futures]
        except KeyboardInterrupt:
            cancel.set()  # every wait ends; each start under way finishes (bounded) and says it keeps running
            for future in futures:
                with contextlib.suppress(BaseException):
                    future.result()
            raise


def start(name: str, *, wait: bool | None = None, timeout: float | None = None, home: Path | None = None,
          discard_saved: bool = False, progress: Progress = _silent) -> dict[str, Any]:
    """Start a stopped instance again from its saved profile.yaml (disks and overlays are kept); a saved one
    (`save`) continues from its saved state, unless discard_saved boots it afresh."""
    instance_paths(name, home)
    return up(name, wait=wait, timeout=timeout, home=home, discard_saved=discard_saved, progress=progress)


def define(source: str | os.PathLike[str], *, name: str | None = None, overrides: tuple[str, ...] | list[str] = (),
           home: Path | None = None, progress: Progress = _silent) -> dict[str, Any]:
    """Create a stopped instance from a profile file (virsh define): validated, disks and seed prepared, no
    QEMU; `start` boots it. Returns its `ls` row."""
    from qemuvm.control.status import view
    from qemuvm.runtime import preflight

    if not Path(source).is_file():
        raise UsageError(f"profile file {source} does not exist")
    profile = preflight.load_profile(source, overrides, name, home, progress)
    paths = InstancePaths.for_name(profile.name, home)
    host, notice = preflight.check_host(profile, paths)
    if notice:
        progress(notice)
    launch.define_instance(profile, paths, host, home=home, progress=progress)
    return view(paths, instance.read_state(paths))


def dumpprofile(name: str, *, home: Path | None = None) -> str:
    """The instance's saved profile (profile.yaml: what its next start runs), as text (virsh dumpxml)."""
    from qemuvm import files

    paths = instance_paths(name, home)
    if not paths.profile.exists():
        raise OperationError(f"{name} has no saved profile ({paths.profile} is missing)")
    return files.read_text(paths.profile, "profile.yaml", 1 << 20)


def save(name: str, *, home: Path | None = None) -> dict[str, Any]:
    """Write the VM's whole state (RAM, devices) into its folder and end QEMU (virsh managedsave); `start`
    continues it where it was."""
    from qemuvm.control import save as saving

    paths = instance_paths(name, home)
    _refuse_shares(paths, "save")
    with intent.operation(paths, "save"):  # never beside a down (runtime/intent.py)
        return saving.save(paths, _running_qemu(paths))


def _refuse_shares(paths: InstancePaths, what: str) -> None:
    """A mounted host folder blocks QEMU's migration stream (save) and RAM snapshots: say so, naming it."""
    import yaml

    with contextlib.suppress(OSError, yaml.YAMLError):
        shares = (yaml.safe_load(paths.profile.read_text()) or {}).get("shares") or []
        if shares:
            raise UsageError(f"{what} {paths.name}: shares[0] (tag {shares[0].get('tag')}) is a host folder shared "
                             "with the guest, and QEMU cannot save the state of a VM with one; stop it with "
                             f"`qemuvm down {paths.name}` instead")


def templates(home: Path | None = None) -> list[dict[str, Any]]:
    """The templates that `up --warm` clones (runtime/template.py), oldest first."""
    from qemuvm.paths import state_home
    from qemuvm.runtime import template

    return template.list_templates(home or state_home())


def template_rm(fingerprint: str, *, force: bool = False, home: Path | None = None) -> dict[str, Any]:
    """Delete a template; refused while instances are clones of it, unless force."""
    from qemuvm.paths import state_home
    from qemuvm.runtime import template

    return template.remove(home or state_home(), fingerprint, force=force)


def edit(name: str, *, editor: str | None = None, home: Path | None = None) -> bool:
    """Open the saved profile in $EDITOR; save it only when it is valid (applies at the next start).

    Returns True when the profile changed. An invalid edit raises ProfileError and keeps the old file.
    """
    from qemuvm.profile.edit import edit_saved

    paths = instance_paths(name, home)
    if not paths.profile.exists():
        raise UsageError(f"instance {name} has no saved profile")
    return edit_saved(paths.profile, name, editor)


# -- down / kill -------------------------------------------------------------------------------------


def down(name: str, *, timeout: float | None = None, force: bool = False, home: Path | None = None,
         progress: Progress = _silent) -> dict[str, Any]:
    """Stop a VM: ACPI power-down, wait, `quit`, SIGTERM, SIGKILL. Returns which step ended it.

    An instance started with `remove_on_down` (`up --rm`) is removed once stopped."""
    from qemuvm.control import stop

    paths = instance_paths(name, home)
    with intent.operation(paths, "down"):  # never beside a save (runtime/intent.py)
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
    from qemuvm.control import autostart as autostarts

    paths = instance_paths(name, home)
    with instance.instance_lock(paths, timeout=30):
        if instance.is_active(instance.read_state(paths)) and not force:
            raise OperationError(f"{name} is running; stop it with `qemuvm down {name}` or use rm --force")
        try:
            if instance.is_active(instance.read_state(paths)):
                kill(name, home=home)
            from qemuvm.runtime import helpers

            helpers.stop_orphans(instance.read_state(paths))
            shutil.rmtree(paths.root)
        finally:  # undefine: its autostart unit goes too, whatever else failed (a unit must not start a ghost)
            autostarts.disable(name, paths.root.parent, strict=False)
    return {"name": name, "removed": str(paths.root)}


def autostart(name: str, *, disable: bool = False, home: Path | None = None) -> dict[str, Any]:
    """Start the instance at boot through a systemd unit (virsh autostart); disable removes the unit."""
    from qemuvm.control import autostart as autostarts

    paths = instance_paths(name, home)
    if disable:
        return autostarts.disable(name, paths.root.parent)
    _networks_outlive_a_reboot(paths)
    spec = records.read_launch_spec(paths)
    return autostarts.enable(paths, spec.shutdown_timeout if spec else 60.0)


def _networks_outlive_a_reboot(paths: InstancePaths) -> None:
    """The qemuvm networks the VM joins must come back at boot: each one up now is defined (networks made before
    definitions existed had none); one neither defined nor up is refused in one sentence."""
    from qemuvm.profile.validate import load_and_validate
    from qemuvm.runtime import netdefs, networks

    for nic in load_and_validate(str(paths.profile), name=paths.name).network:
        if nic.network is None or netdefs.definition(nic.network) is not None:
            continue
        record = networks.read(nic.network)
        if record is None:
            raise UsageError(f"{paths.name} joins network {nic.network}, which is neither up nor defined, so its "
                             f"start at boot would fail; create it first: qemuvm network create {nic.network}")
        netdefs.define(nic.network, record.subnet)


# -- runtime control ---------------------------------------------------------------------------------


def pause(name: str, *, home: Path | None = None) -> dict[str, Any]:
    paths = instance_paths(name, home)
    _running_qemu(paths)
    from qemuvm.control import wait as waiting

    _monitor(paths).execute("stop")
    waiting.await_record(paths, "the pause", lambda s: s.state == PAUSED)
    return status(name, home=home)


def resume(name: str, *, home: Path | None = None) -> dict[str, Any]:
    paths = instance_paths(name, home)
    from qemuvm.control import wait as waiting

    state = _running_qemu(paths)
    _monitor(paths).execute("cont")
    if state.state != instance.SHUTDOWN:  # a powered-off guest under -no-shutdown stays down
        waiting.await_record(paths, "the resume", lambda s: s.state == RUNNING)
    return status(name, home=home)


def reboot(name: str, *, force: bool = False, home: Path | None = None,
           progress: Progress = _silent) -> dict[str, Any]:
    """Ask the guest to reboot (virsh reboot): its guest agent when one answers, else ACPI; returns once its
    RESET is recorded, with `how` ("agent" or "acpi"). force: a hard reset instead (`reset`)."""
    from qemuvm.control import reboot as reboots

    paths = instance_paths(name, home)
    state = _running_qemu(paths)
    if force:
        reboots.reset(paths, state)
        return {**status(name, home=home), "how": "reset"}
    how = reboots.reboot(paths, state, progress)
    return {**status(name, home=home), "how": how}


def reset(name: str, *, home: Path | None = None) -> dict[str, Any]:
    """A hard reset (QMP system_reset, virsh reset), like pressing the reset button; the guest is not asked.
    Returns once the supervisor recorded the RESET (a new serial_offset: waits start from the new boot)."""
    return reboot(name, force=True, home=home)


def qmp(name: str, command: str, arguments: dict[str, Any] | None = None, *, home: Path | None = None) -> Any:
    """Any QMP command on the client monitor; its return value. A QMP error raises QmpError (exit 1)."""
    paths = instance_paths(name, home)
    _running_qemu(paths)
    return _monitor(paths).execute(command, arguments)


def import_libvirt(xml_path: str | os.PathLike[str], *, output: str | os.PathLike[str] | None = None,
                   strict: bool = False, progress: Progress = _silent) -> dict[str, Any]:
    """A libvirt domain XML as a commented qemuvm profile (written to `output`, with a VNC password file
    beside it); what cannot come over is listed at its top. strict: anything that cannot is an error."""
    from qemuvm.convert import io

    return io.import_libvirt(xml_path, output, strict, progress)


def export_libvirt(source: str, *, security_info: bool = False, home: Path | None = None) -> dict[str, Any]:
    """A profile file (or an instance's saved profile) as libvirt domain XML, and what it cannot express."""
    from qemuvm.convert import io

    return io.export_libvirt(source, security_info, home)


def export(target: str, source: str, *, overrides: tuple[str, ...] | list[str] = (), lossy: bool = False,
           image: str | None = None, pvc: str | None = None, configmap: bool = False,
           images_pvc: str = "qemuvm-images", artifacts_pvc: str | None = None,
           home: Path | None = None) -> dict[str, Any]:
    """A profile (or an instance's saved profile) for a scheduler: target kubevirt (a VirtualMachine),
    k8s-job (a Job running `qemuvm smoke`) or nomad (a job for the qemu driver). A field the target cannot
    express is a UsageError unless lossy, which lists it under "dropped"."""
    from qemuvm.convert import io

    return io.export_target(target, source, overrides=overrides, lossy=lossy, image=image, pvc=pvc,
                            configmap=configmap, images_pvc=images_pvc, artifacts_pvc=artifacts_pvc, home=home)


def wait(name: str, *, serial: str | None = None, port: int | None = None, event: str | None = None,
         ssh: bool = False,  # noqa: F811 (a condition here; the verb api.ssh is api/guest.py's)
         shutdown: bool = False, ready: bool = False, timeout: float = 120.0,
         since: str = "boot", home: Path | None = None, progress: Progress = _silent) -> float:
    """Wait until every condition holds (none: the profile's `ready`); the seconds it took. Fails at once,
    with the last serial lines, when QEMU exits for good first (control/wait.py)."""
    from qemuvm.control import wait as waiting

    paths = instance_paths(name, home)
    conditions = waiting.conditions_for(paths, serial=serial, port=port, event=event, ssh=ssh, shutdown=shutdown,
                                        ready=ready, since=since)
    return waiting.wait_for(paths, conditions, timeout, progress=progress)


def screenshot(name: str, out: str | os.PathLike[str], *, home: Path | None = None) -> Path:
    """The VM's screen as a PNG at `out` (QMP screendump; the profile needs a display); the path written."""
    from qemuvm.control import display

    return display.screenshot(monitor_socket(name, home), out)


def snapshot(name: str, action: str, tag: str | None = None, *, home: Path | None = None) -> Any:
    """Internal snapshots: action save | load | delete (with a tag) or list (their records)."""
    from qemuvm.control import snapshot as snapshots

    if action == "save":
        _refuse_shares(instance_paths(name, home), "snapshot save")
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


# -- status / ls / logs ----------------------------------------------------------------------------


def status(name: str, *, home: Path | None = None) -> dict[str, Any]:
    """The instance's state; the live run state comes from QMP when QEMU is alive."""
    from qemuvm.control import status as statuses

    return statuses.status(instance_paths(name, home))


def ls(home: Path | None = None) -> list[dict[str, Any]]:
    """Every instance from its state.json plus a pid liveness check; no QMP."""
    from qemuvm.control.status import view

    return [view(paths, instance.read_state(paths)) for paths in instance.list_instances(home)]


def active(name: str, *, home: Path | None = None) -> bool:
    """Whether the instance's QEMU or supervisor still lives (state.json and the processes; no QMP)."""
    return instance.is_active(instance.read_state(instance_paths(name, home)))


def console(name: str, *, home: Path | None = None) -> str:
    """Attach this terminal (or stdin/stdout) to the serial console until detached; why it ended."""
    from qemuvm.control import console as consoles

    paths = instance_paths(name, home)
    status(name, home=home)  # a clear error for an unknown instance
    with consoles.exclusive(paths.console_lock, name):
        return consoles.attach(paths.serial_socket)


def log_path(name: str, kind: str = "serial", home: Path | None = None) -> Path:
    """serial | qemu | events | supervisor."""
    from qemuvm.control import logs

    return logs.log_path(instance_paths(name, home), kind)


def follow(path: Path, *, lines: int | None = None, keep_going: bool = False) -> Iterator[str]:
    """The last `lines` lines of `path` (all when None), then, with keep_going, new text as it arrives."""
    from qemuvm.control import logs

    return logs.follow(path, lines=lines, keep_going=keep_going)


def events(name: str, *, home: Path | None = None) -> list[dict[str, Any]]:
    """Every recorded QMP event of the instance, oldest first."""
    from qemuvm.control import logs

    return logs.events(instance_paths(name, home))


# The host-side verbs (images, doctor, render, validate, schema, NAT networks) live in api/host.py, the verbs
# inside a running guest (ssh, exec_, cp, send, sendkey) in api/guest.py; they are part of the same facade.
from qemuvm.api.guest import cp, exec_, send, sendkey, ssh, ssh_interactive  # noqa: E402, F401 (re-exported)
from qemuvm.api.host import (  # noqa: E402, F401  (re-exported: the one facade)
    doctor,
    image_convert,
    image_create,
    image_info,
    image_resize,
    network_create,
    network_ls,
    network_rm,
    network_status,
    parse_duration,
    parse_size,
    render,
    render_text,
    schema,
    validate,
)
from qemuvm.api.images import (  # noqa: E402, F401  (re-exported: the one facade)
    image_catalog,
    image_ls,
    image_prune,
    image_pull,
    image_rm,
)
