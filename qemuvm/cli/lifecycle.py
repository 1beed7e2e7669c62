"""Commands: the VM lifecycle (up, start, edit, down, ls, status, pause, resume, reboot, kill, rm, logs,
console, qmp, events, wait, supervise). Thin: parse, call qemuvm.api, print."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import typer

from qemuvm.cli.app import app
from qemuvm.cli.output import (
    Download,
    JsonOption,
    NameArg,
    ReadyTimeoutOption,
    WaitOption,
    info,
    print_json,
    print_table,
)
from qemuvm.errors import UsageError

SetOption = typer.Option(None, "--set", help="Override a field: KEY.PATH=VALUE (YAML value; repeatable).")


def _seconds(text: str | None, option: str) -> float | None:
    """A duration option (`30s`, `2m`, `90`) in seconds."""
    if text is None:
        return None
    from qemuvm import api

    return api.parse_duration(text, option)


def _forward_text(fwd: dict[str, Any]) -> str:
    label = " (ssh)" if fwd.get("ssh") else ""
    return f"{fwd['host_address']}:{fwd['host_port']}->{fwd['guest_port']}/{fwd['protocol']}{label}"


def _vnc_text(vnc: dict[str, Any] | None) -> str | None:
    if not vnc:
        return None
    where = f"unix:{vnc['unix']}" if vnc.get("unix") else f"{vnc['listen']}:{vnc['port']} (display :{vnc['display']})"
    return where + (f", password {vnc['password']}" if vnc.get("password") else "")


def _print_started(result: dict[str, Any]) -> None:
    name = result["name"]
    lines = [f"{name} is {result['state']} (QEMU pid {result['qemu_pid']}, supervisor pid {result['supervisor_pid']}, "
             f"accel {result['accel']})"]
    if result.get("ready"):
        lines.append(f"  ready after {result['ready_after_s']:g} s")
    if result.get("template"):
        made = "made by this run" if result["template"]["built"] else "restored"
        lines.append(f"  clone of template {result['template']['fingerprint']} ({made})")
    for fwd in result["forwards"]:
        lines.append(f"  forward {_forward_text(fwd)}")
    if _vnc_text(result.get("vnc")):
        lines.append(f"  VNC     {_vnc_text(result['vnc'])}")
    lines.append(f"next: qemuvm console {name}  |  qemuvm ssh {name}  |  qemuvm down {name}")
    print("\n".join(lines))


@app.command()
def up(
    profiles: list[str] = typer.Argument(..., help="Profile file, or the name of a stopped instance to start "
                                         "again; several start at once.", metavar="PROFILE..."),
    name: str = typer.Option(None, "--name", help="Instance name (default: the profile's name, else its file stem)."),
    count: int = typer.Option(1, "--count", help="Start this many VMs of the profile at once: NAME-1 .. NAME-N."),
    set_: list[str] = SetOption,
    foreground: bool = typer.Option(False, "--foreground", help="Stay attached, showing the serial console; "
                                    "Ctrl-C stops the VM (down)."),
    wait: bool = WaitOption,
    timeout: str = ReadyTimeoutOption,
    remove: bool = typer.Option(False, "--rm", help="Remove the instance (folder, ephemeral overlays) at `down`, "
                                "like `docker run --rm`."),
    warm: bool = typer.Option(False, "--warm", help="Start a new clone of the profile's template (a saved, ready "
                              "VM), made by this run when there is none: see `qemuvm template ls`."),
    json_: bool = JsonOption,
) -> int:
    """Start a VM from a profile under its supervisor; wait until it runs (and is ready). Several profiles, or
    --count, start several VMs at once, each with its own result; the exit code is the worst of them."""
    from qemuvm import api

    if len(profiles) > 1 or count != 1:
        if foreground:
            raise UsageError("--foreground follows one VM; start one profile without --count")
        return _up_many(profiles, name, count, set_, wait, timeout, remove, warm, json_)
    download = Download("pulling")  # a url or catalog image disk's first use: a progress bar (or 10 % lines)
    try:
        result = api.up(profiles[0], name=name, overrides=set_ or (), wait=wait,
                        timeout=_seconds(timeout, "--timeout"), remove_on_down=remove, warm=warm, progress=info,
                        download=download)
    finally:
        download.close()
    if json_:
        print_json(result)
    else:
        _print_started(result)
    if foreground:
        _foreground(result["name"])
    return 0


def _up_many(profiles: list[str], name: str | None, count: int, set_: list[str] | None, wait: bool | None,
             timeout: str | None, remove: bool, warm: bool, json_: bool) -> int:
    from qemuvm import api

    results = api.up_many(profiles, count=count, name=name, overrides=set_ or (), wait=wait,
                          timeout=_seconds(timeout, "--timeout"), remove_on_down=remove, warm=warm, progress=info)
    if json_:
        print_json(results)
    for result in results:
        if "error" in result:
            print(f"qemuvm: {result['error']}", file=sys.stderr)
        elif not json_:
            _print_started(result)
    return max((result.get("exit_code", 0) for result in results), default=0)


def _foreground(name: str) -> None:
    """Show the serial log until the VM stops; Ctrl-C means `down`."""
    from qemuvm import api

    paths = api.instance_paths(name)
    # Ctrl-C (even when the shell started us with SIGINT ignored) and SIGTERM both mean `down`.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    info(f"{name}: following the serial console; Ctrl-C stops the VM")
    try:
        for chunk in api.follow(paths.serial_log, lines=20, keep_going=True):
            sys.stdout.write(chunk)
            sys.stdout.flush()
            if not api.active(name):
                break
    except KeyboardInterrupt:
        info(f"\nstopping {name} …")
        result = api.down(name, progress=info)
        info(f"{name} stopped ({result['step']})")


@app.command()
def start(
    name: str = NameArg,
    wait: bool = WaitOption,
    timeout: str = ReadyTimeoutOption,
    discard_saved: bool = typer.Option(False, "--discard-saved", help="Boot afresh instead of restoring the "
                                       "state `save` wrote (the state file is deleted)."),
    json_: bool = JsonOption,
) -> None:
    """Start a stopped instance again from its saved profile, keeping its disks (virsh start); a saved one
    continues where it was."""
    from qemuvm import api

    result = api.start(name, wait=wait, timeout=_seconds(timeout, "--timeout"), discard_saved=discard_saved,
                       progress=info)
    print_json(result) if json_ else _print_started(result)


@app.command()
def save(name: str = NameArg, json_: bool = JsonOption) -> None:
    """Save the VM's whole state (RAM, devices) and end QEMU (virsh managedsave); `start` continues it."""
    from qemuvm import api

    result = api.save(name)
    if json_:
        print_json(result)
    else:
        print(f"saved {name}: {result['bytes'] / (1 << 20):.1f} MiB in {result['file']}; `qemuvm start {name}` "
              "continues it")


@app.command()
def edit(name: str = NameArg) -> None:
    """Edit the saved profile in $EDITOR; an invalid result is refused (applies at the next start)."""
    from qemuvm import api

    changed = api.edit(name)
    info(f"{name}: profile saved; it applies at the next start" if changed else f"{name}: no change")


@app.command()
def down(
    name: str = NameArg,
    timeout: str = typer.Option(None, "--timeout", help="How long to wait for the ACPI power-down "
                                "[default: shutdown.timeout]."),
    force: bool = typer.Option(False, "--force", help="Skip ACPI: quit, then SIGTERM, then SIGKILL."),
    json_: bool = JsonOption,
) -> None:
    """Stop a VM: ACPI power-down, wait, then quit, SIGTERM, SIGKILL (virsh shutdown)."""
    from qemuvm import api

    result = api.down(name, timeout=_seconds(timeout, "--timeout"), force=force, progress=info)
    if json_:
        print_json(result)
    elif result.get("already_stopped"):
        print(f"{name} was not running ({result['state']})")
    else:
        how = {"acpi": "the guest powered off (ACPI)", "agent": "the guest powered off (through its guest agent)",
               "quit": "forced with QMP quit",
               "sigterm": "forced with SIGTERM", "sigkill": "forced with SIGKILL"}[result["step"]]
        print(f"{name} stopped: {how} after {result['elapsed_s']:g} s")


@app.command()
def ls(json_: bool = JsonOption) -> None:
    """List every instance and its state (virsh list --all); reads state files only."""
    from qemuvm import api

    rows = api.ls()
    if json_:
        print_json(rows)
        return
    table = []
    for row in rows:
        uptime = row["uptime_s"]
        shown = f"{row['state']} ({row['problem']})" if row.get("problem") else row["state"]
        shown += "" if row.get("started", True) else " (defined, never started)"
        table.append([row["name"], shown, "yes" if row["supervised"] else "no", row["qemu_pid"],
                      time.strftime("%H:%M:%S", time.gmtime(uptime)) if uptime is not None else None,
                      row["accel"], "yes" if row.get("autostart") else "no",
                      ", ".join(_forward_text(f) for f in row["forwards"])])
    print_table(["NAME", "STATE", "SUPERVISED", "PID", "UPTIME", "ACCEL", "AUTOSTART", "FORWARDS"], table)


@app.command()
def status(name: str = NameArg, json_: bool = JsonOption) -> None:
    """Show one instance: state (live from QMP), pids, accel, uptime, restarts, forwards, last exit."""
    from qemuvm import api

    result = api.status(name)
    if json_:
        print_json(result)
        return
    for key in ("name", "state", "qemu_pid", "supervisor_pid", "supervised", "accel", "uptime_s", "restarts",
                "policy"):
        print(f"{key:15} {result.get(key)}")
    for fwd in result["forwards"]:
        print(f"{'forward':15} {_forward_text(fwd)}")
    if result.get("vnc"):
        print(f"{'vnc':15} {_vnc_text(result['vnc'])}")
    for nic in result.get("addresses") or []:
        print(f"{'network':15} {nic['network']}: {nic['address'] or '(no DHCP lease yet)'} (mac {nic['mac']}, "
              f"tap {nic['tap']})")
    guest = result.get("guest")
    if guest:
        print(f"{'hostname':15} {guest.get('hostname')}")
        for address in guest.get("addresses") or []:
            print(f"{'address':15} {address['address']}/{address['prefix']} ({address['interface']})")
    alive = result.get("state") in ("starting", "running", "paused", "shutdown")
    for helper in result.get("helpers") or [] if alive else []:
        print(f"{'helper':15} {helper['name']} pid {helper['pid']} for {helper['what']}: "
              f"{'running' if helper['running'] else 'ended'}")
    for problem in result.get("problems") or []:  # helpers gone among them
        print(f"{'problem':15} {problem}")
    if result.get("last_exit"):
        print(f"{'last_exit':15} {json.dumps(result['last_exit'])}")


def _simple(verb: str, done: str):
    def command(name: str = NameArg, json_: bool = JsonOption) -> None:
        from qemuvm import api

        result = getattr(api, verb)(name)
        print_json(result) if json_ else print(f"{name} {done}")

    return command


app.command(name="pause", help="Pause the VM's CPUs (virsh suspend).")(_simple("pause", "paused"))
app.command(name="resume", help="Resume a paused VM (virsh resume).")(_simple("resume", "resumed"))
app.command(name="reset", help="Reset the VM: a hard reset, like pressing the reset button; the guest is not "
            "asked (virsh reset).")(_simple("reset", "reset"))


@app.command()
def reboot(
    name: str = NameArg,
    force: bool = typer.Option(False, "--force", help="A hard reset instead (as `qemuvm reset`)."),
    json_: bool = JsonOption,
) -> None:
    """Ask the guest to reboot (virsh reboot): through its guest agent, else the ACPI power button (QEMU is kept
    and reset after the power-off); returns once the new boot began. Fails, forcing nothing, when the guest
    does not act within shutdown.timeout."""
    from qemuvm import api
    from qemuvm.paths import state_home

    if not force:  # once per state folder: scripts written when `reboot` was a hard reset learn of the change
        marker = state_home() / ".reboot-notice"
        if not marker.exists():
            info("qemuvm: note: `reboot` now asks the guest, as virsh reboot does; `qemuvm reset` (or "
                 "`reboot --force`) is the hard reset it was before")
            with contextlib.suppress(OSError):
                marker.touch(mode=0o600)
    result = api.reboot(name, force=force, progress=info)
    print_json(result) if json_ else print(f"{name} rebooted ({result['how']})")


@app.command()
def autostart(
    name: str = NameArg,
    disable: bool = typer.Option(False, "--disable", help="Remove the unit: no start at boot."),
    json_: bool = JsonOption,
) -> None:
    """Start the VM at boot (virsh autostart): a systemd unit running `qemuvm start NAME`, and `qemuvm down NAME`
    at shutdown; a system unit for root, a user unit otherwise (at boot with `loginctl enable-linger`)."""
    from qemuvm import api

    result = api.autostart(name, disable=disable)
    if json_:
        print_json(result)
    elif disable:
        print(f"{name}: autostart off" + ("" if result["removed"] else " (it was not on)"))
    else:
        print(f"{name}: autostart on ({result['unit']}, wanted by {Path(result['wanted_by']).parent.name})")


@app.command()
def kill(name: str = NameArg, json_: bool = JsonOption) -> None:
    """Kill QEMU at once with SIGKILL; no restart (virsh destroy)."""
    from qemuvm import api

    result = api.kill(name)
    print_json(result) if json_ else print(f"{name} killed" if result["killed"] else f"{name} was not running")


@app.command()
def rm(
    name: str = NameArg,
    force: bool = typer.Option(False, "--force", help="Kill the VM first if it runs."),
) -> None:
    """Delete an instance folder and its ephemeral overlays (virsh undefine); refuses while it runs."""
    from qemuvm import api

    result = api.rm(name, force=force)
    print(f"removed {result['removed']}")


@app.command()
def logs(
    name: str = NameArg,
    serial: bool = typer.Option(False, "--serial", help="The serial console log (the default)."),
    qemu: bool = typer.Option(False, "--qemu", help="QEMU's own output (qemu.log)."),
    events_: bool = typer.Option(False, "--events", help="The QMP event log (events.jsonl)."),
    supervisor: bool = typer.Option(False, "--supervisor", help="The supervisor's log."),
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new output."),
    lines: int = typer.Option(None, "-n", "--lines", help="Only the last N lines."),
) -> None:
    """Print an instance's logs."""
    from qemuvm import api

    chosen = [kind for kind, on in (("serial", serial), ("qemu", qemu), ("events", events_),
                                    ("supervisor", supervisor)) if on]
    if len(chosen) > 1:
        raise UsageError("choose one of --serial, --qemu, --events, --supervisor")
    _stream(api.log_path(name, chosen[0] if chosen else "serial"), lines, follow)


def _stream(path: Path, lines: int | None, follow: bool) -> None:
    from qemuvm import api

    try:
        for chunk in api.follow(path, lines=lines, keep_going=follow):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


@app.command()
def events(
    name: str = NameArg,
    follow: bool = typer.Option(False, "-f", "--follow", help="Keep printing new events."),
) -> None:
    """The QMP events the supervisor recorded, as NDJSON (one JSON object per line)."""
    from qemuvm import api

    _stream(api.log_path(name, "events"), None, follow)


@app.command()
def console(name: str = NameArg) -> None:
    """Attach to the serial console (Ctrl-] detaches); with pipes, copies stdin in and output out."""
    from qemuvm import api

    why = api.console(name)
    if why == "closed":
        info(f"{name}: the console closed (QEMU exited)")


@app.command()
def qmp(
    name: str = NameArg,
    command: str = typer.Argument(..., help="QMP command, e.g. query-status."),
    arguments: str = typer.Argument(None, help="Its arguments as a JSON object."),
) -> None:
    """Run any QMP command; prints its return value as JSON (a QMP error exits 1 with class and description)."""
    from qemuvm import api

    args = None
    if arguments:
        try:
            args = json.loads(arguments)
        except ValueError as exc:
            raise UsageError(f"the arguments are not JSON: {exc}") from None
        if not isinstance(args, dict):
            raise UsageError("the arguments must be a JSON object")
    why = api.qmp_risk(command, args)
    if why:
        print(f"qemuvm: warning: {command} {why}", file=sys.stderr)
    print_json(api.qmp(name, command, args))


@app.command("wait")
def wait_(
    name: str = NameArg,
    for_: list[str] = typer.Option(None, "--for", help="serial:REGEX | ssh | port:N | event:NAME | shutdown | ready "
                                   "(repeatable; all must hold). The flags below are the same conditions."),
    serial: str = typer.Option(None, "--serial", help="A regex on the serial console (since the current start)."),
    port: int = typer.Option(None, "--port", min=1, max=65535, help="A guest TCP port reachable through a forward."),
    event: str = typer.Option(None, "--event", help="A QMP event (from now on)."),
    ssh: bool = typer.Option(False, "--ssh", help="An SSH command succeeds."),
    shutdown: bool = typer.Option(False, "--shutdown", help="QEMU has exited."),
    ready: bool = typer.Option(False, "--ready", help="The profile's ready condition (the default)."),
    timeout: str = typer.Option("120s", "--timeout", help="How long to wait."),
) -> None:
    """Wait for a condition; fails at once (with the last serial lines) if QEMU exits first."""
    from qemuvm import api

    for spec in for_ or []:  # the words first: a bad --for is a usage error whatever the instance
        kind, _, value = spec.partition(":")
        if kind == "serial" and value:
            serial = value
        elif kind == "port" and value.isdigit() and 1 <= int(value) <= 65535:
            port = int(value)
        elif kind == "event" and value:
            event = value
        elif kind in ("ssh", "shutdown", "ready") and not value:
            ssh, shutdown, ready = ssh or kind == "ssh", shutdown or kind == "shutdown", ready or kind == "ready"
        else:
            raise UsageError(f"--for {spec!r}: expected serial:REGEX, ssh, port:N (1-65535), event:NAME, shutdown or "
                             "ready")
    took = api.wait(name, serial=serial, port=port, event=event, ssh=ssh, shutdown=shutdown, ready=ready,
                    timeout=_seconds(timeout, "--timeout") or 0, progress=info)
    info(f"{name}: done after {took:.1f} s")


@app.command()
def supervise(name: str = NameArg, json_: bool = JsonOption) -> None:
    """Give a running VM whose supervisor died a new one (after proving the QEMU process is ours)."""
    from qemuvm import api

    result = api.supervise(name)
    print_json(result) if json_ else print(f"{name}: supervised by pid {result['supervisor_pid']}")
