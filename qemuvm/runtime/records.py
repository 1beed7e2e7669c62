"""Typed, versioned records between processes, each with one writer, one reader and its defaults here only:

- LaunchSpec (`supervisor.json`): what `up` decided for a start; written by `up`, read by the supervisor.
- SavedState (`saved.json`): what a `save` needs at restore (written by `save`, read by `start`).
- TemplateRecord (`template.json`): a template for warm clones (written once by `up --warm`, read by clones).
- NetworkRecord (`network.json` of a NAT network): what `network create` made, so `network rm` removes exactly
  that (written and read by runtime/networks.py only).
- InstanceState (`state.json`): what the supervisor knows now; written by the supervisor only, read by every
  command through `instance.read_state` (which adds the processes the folder proves).

Imported by the supervisor: stdlib only.

Versions: schema 1 is the first typed one. A folder whose record has no `schema` was written by qemuvm before
records were versioned; it has the same fields and reads as schema 1. A newer schema is refused with one
sentence: an older qemuvm must never act on a record it does not understand.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from qemuvm.errors import UsageError
from qemuvm.paths import InstancePaths
from qemuvm.runtime.atomic import read_json, write_json_atomic

T = TypeVar("T")
LAUNCH_SPEC_SCHEMA = 1
STATE_SCHEMA = 1
NETWORK_SCHEMA = 1


@dataclass(frozen=True)
class Restart:
    policy: str = "never"  # never | on-failure | always
    max_retries: int = 5
    backoff: float = 1.0  # seconds before the first restart; doubles, capped (runtime/decisions.py)


@dataclass(frozen=True)
class Helper:
    """A daemon the supervisor runs beside QEMU (DESIGN.md, "Helper processes"): started before QEMU, stopped
    after it. Today: one virtiofsd per virtiofs share (qemu/shares.py makes these)."""

    name: str  # virtiofs0: the stem of its socket and log in the instance folder
    what: str  # what it serves, for messages: shares[0] (tag src)
    argv: list[str]
    socket: str  # it is up once this exists (made 0600 then)
    log: str  # its stdout and stderr
    readonly_source: str | None = None  # bound read-only in the helper's own mount namespace before it runs


@dataclass(frozen=True)
class Tap:
    """A NIC on a qemuvm NAT network: QEMU opens the tap `ifname` (it goes away with QEMU), and the supervisor
    puts it on `bridge` before the guest runs (runtime/networks.py)."""

    index: int  # network[index]
    network: str
    ifname: str
    bridge: str
    mac: str


@dataclass(frozen=True)
class LaunchSpec:
    """What `up` decided for this start of an instance."""

    name: str
    argv: list[str]  # QEMU's command line as the supervisor runs it (with -S: paused until its monitor listens)
    restart: Restart = field(default_factory=Restart)
    shutdown_timeout: float = 60.0  # how long `down` waits for the ACPI power-off before forcing
    forwards: list[dict[str, Any]] = field(default_factory=list)  # host ports, as state.json shows them
    vnc: dict[str, Any] | None = None
    vnc_password_file: str | None = None  # applied over QMP before `cont`
    ssh: dict[str, Any] = field(default_factory=lambda: {"user": "root", "port": 22})
    remove_on_down: bool = False  # `up --rm`
    serial_log_max: int = 16 << 20  # serial.log is rotated past this (bytes)
    restore_from: str | None = None  # a saved state (saved.state) to load before `cont`; argv has -incoming defer
    restore_saved_at: float | None = None  # when that state was saved (the restored guest's clock is behind by)
    restore_keep: bool = False  # a template's state (a clone's start): loaded, never deleted
    template: str | None = None  # this instance is a clone of that template (its disks back onto it)
    helpers: list[Helper] = field(default_factory=list)  # started before QEMU, in this order
    taps: list[Tap] = field(default_factory=list)  # put on their bridges before `cont`
    # (address, port) the profile asks to listen on beyond loopback (its forwards, VNC); None: any
    # (qemu.allow_unsafe_args). The supervisor refuses any other such socket before `cont` (runtime/listeners.py).
    listeners_allowed: list[list[Any]] | None = field(default_factory=list)
    # The host folders shared with the guest, resolved at `up`: [{"index", "tag", "source"}]; status names one
    # whose source is gone, or whose mount the guest reported failed.
    shares: list[dict[str, Any]] = field(default_factory=list)
    schema: int = LAUNCH_SPEC_SCHEMA


def _read_versioned(path: Path, newest: int, whose: str, remedy: str) -> dict[str, Any] | None:
    """A record's JSON object (None when there is none), refusing an unreadable one (`remedy` says what to do)
    and one newer than this qemuvm reads; a record without `schema` reads as 1."""
    data = read_json(path)
    if data is None:
        if path.exists():
            raise UsageError(f"{path} is unreadable; {remedy}")
        return None
    schema = data.get("schema", 1)
    if not isinstance(schema, int) or isinstance(schema, bool) or schema > newest:
        raise UsageError(f"{whose} a newer qemuvm ({path.name} schema {schema}; this qemuvm reads up to {newest}): "
                         "use that qemuvm")
    return data


def write_launch_spec(paths: InstancePaths, spec: LaunchSpec) -> None:
    write_json_atomic(paths.supervisor_config, dataclasses.asdict(spec))


def read_launch_spec(paths: InstancePaths) -> LaunchSpec | None:
    """The instance's LaunchSpec; None when there is none. A newer or malformed one: UsageError."""
    data = _read_versioned(paths.supervisor_config, LAUNCH_SPEC_SCHEMA, f"{paths.name} was started by",
                           "`qemuvm up` of the profile writes it anew")
    if data is None:
        return None
    known = {f.name for f in dataclasses.fields(LaunchSpec)}
    values = {k: v for k, v in data.items() if k in known}
    try:
        values["restart"] = Restart(**{k: v for k, v in (data.get("restart") or {}).items()
                                       if k in {f.name for f in dataclasses.fields(Restart)}})
        values["helpers"] = [Helper(**helper) for helper in data.get("helpers") or []]
        values["taps"] = [Tap(**tap) for tap in data.get("taps") or []]
        spec = LaunchSpec(**{**values, "schema": LAUNCH_SPEC_SCHEMA})
    except TypeError as exc:  # a required field missing
        raise UsageError(f"{paths.supervisor_config} is incomplete ({exc}); `qemuvm up` writes it anew") from None
    if not isinstance(spec.argv, list) or not all(isinstance(a, str) for a in spec.argv):
        raise UsageError(f"{paths.supervisor_config}: argv is not a list of strings")
    return spec


@dataclass
class ExitRecord:
    """How a QEMU run ended (state.json's `last_exit`): written by the supervisor, read by every command."""

    time: float = 0.0
    reason: str = ""  # runtime/decisions.classify: guest-shutdown, down, kill, save, signal, start-failed, ...
    failure: bool = False  # the exit counts as a failure (the restart policy on-failure applies)
    exit_code: int | None = None  # None: killed by a signal, or adopted (the code is lost)
    signal: str | None = None  # e.g. "SIGKILL"
    shutdown_reason: str | None = None  # the SHUTDOWN event's reason, if one came
    helper: str | None = None  # QEMU never started: what did not come up (a helper, or QEMU's binary)
    gave_up: bool = False  # the restart policy gave up after this exit


@dataclass
class HelperState:
    """One helper in state.json: running while `exited` is None; `exited` says how it ended (and when)."""

    name: str = ""
    what: str = ""
    pid: int = 0
    start_time: float | None = None
    cmdline: list[str] = field(default_factory=list)
    log: str = ""
    exited: dict[str, Any] | None = None  # {"at": time, "exit_code" | "signal": ..., "why": "last log line"}


@dataclass
class InstanceState:
    """state.json: the supervisor's record of an instance (`status --json` shows it, plus live checks)."""

    name: str = ""
    state: str = "stopped"  # starting | running | paused | shutdown | stopped | crashed (instance.py)
    supervisor_pid: int | None = None
    supervisor_start_time: float | None = None  # with the pid: proof against pid reuse
    policy: str = "never"
    restarts: int = 0
    next_restart_at: float | None = None  # a restart is scheduled (state starting)
    forwards: list[dict[str, Any]] = field(default_factory=list)
    vnc: dict[str, Any] | None = None
    ssh: dict[str, Any] | None = None
    qemu_pid: int | None = None
    qemu_start_time: float | None = None
    qemu_cmdline: list[str] | None = None  # the third proof that a pid is our QEMU
    accel: str | None = None  # kvm | tcg, from query-kvm
    qmp_status: str | None = None  # the last query-status the supervisor saw
    started_at: float | None = None  # the guest first ran (boot.once applies until it is set)
    serial_offset: int = 0  # where the current boot's output starts in serial.log
    resets: int = 0  # RESET events seen (reboot waits on this)
    last_exit: ExitRecord | None = None  # how the last QEMU ended
    restored_at: float | None = None  # this run continues a saved state (restored then)
    clock_behind_s: float | None = None  # the restored guest's wall clock is behind by this until it syncs
    # The helpers of the current QEMU run (pid, start_time, cmdline prove each one).
    helpers: list[HelperState] = field(default_factory=list)
    updated_at: float | None = None
    schema: int = STATE_SCHEMA


_STATE_HINTS = typing.get_type_hints(InstanceState)


def _allowed(hint: Any) -> tuple[type, ...]:
    """The runtime types a JSON value may have for a field hint (int | None -> (int, NoneType); float takes int)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(t for arg in typing.get_args(hint) for t in _allowed(arg))
    base = typing.get_origin(hint) or hint
    if dataclasses.is_dataclass(base):
        return (dict,)  # a nested record: a JSON object on disk
    return (int, float) if base is float else (base,)


def state_problem(data: dict[str, Any]) -> str | None:
    """Why a state.json record cannot be trusted (a newer schema, a field of the wrong type), or None."""
    schema = data.get("schema", 1)  # no schema: written before records were versioned, same fields
    if not isinstance(schema, int) or isinstance(schema, bool) or schema > STATE_SCHEMA:
        return f"written by a newer qemuvm: schema {schema}, this qemuvm reads up to {STATE_SCHEMA}"
    for key, hint in _STATE_HINTS.items():
        value = data.get(key)
        allowed = _allowed(hint)
        if value is not None and (not isinstance(value, allowed) or isinstance(value, bool)):
            return f"{key} is {type(value).__name__}, not {allowed[0].__name__}"
    return None


@dataclass
class StateView(InstanceState):
    """state.json as every command reads it (`instance.read_state`): the checked record, plus what the instance
    folder itself proves when the record does not say it (the supervisor writes `InstanceState`)."""

    found_by: str | None = None  # "qemu.pid": this QEMU was proven through its pidfile, not by the record
    supervisor_found_by: str | None = None  # "supervisor.lock": a supervisor that has not written its record yet
    unreadable: str | None = None  # why state.json could not be trusted (state is then "unknown")
    # Set by instance.effective_state, the cheap liveness check (no QMP) that `ls` shows:
    supervised: bool = False  # a supervisor of this instance is alive
    qemu_alive: bool = False  # the recorded QEMU pid is alive (started when recorded)
    stale: bool = False  # the record claimed a live VM whose QEMU is gone: `state` says what is true now
    uptime_s: float | None = None


@functools.cache
def _hints(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def fitting(cls: type[T], data: dict[str, Any]) -> T:
    """`data` (a JSON object another process wrote) as record `cls`: unknown keys dropped, and a field of the
    wrong type reads as its default, so a damaged entry is never a crash. `cls` has a default for every field."""
    hints = _hints(cls)
    return cls(**{key: value for key, value in data.items() if key in hints
                  and isinstance(value, _allowed(hints[key])) and (hints[key] is bool) == isinstance(value, bool)})


def state_view(data: dict[str, Any]) -> StateView:
    """A checked state.json record (state_problem is None) as a complete view: every field, defaults filled,
    unknown keys dropped."""
    known = {key: data[key] for key in _STATE_HINTS if data.get(key) is not None}
    known["helpers"] = [fitting(HelperState, entry) for entry in known.get("helpers", []) if isinstance(entry, dict)]
    if "last_exit" in known:
        known["last_exit"] = fitting(ExitRecord, known["last_exit"])
    return StateView(**{**known, "schema": STATE_SCHEMA})


def write_state(paths: InstancePaths, state: InstanceState) -> None:
    write_json_atomic(paths.state, dataclasses.asdict(state))


SAVED_STATE_SCHEMA = 1


@dataclass(frozen=True)
class DiskPrint:
    """An image file as it was when the state was saved: a restore onto a changed disk would corrupt it."""

    path: str
    size: int
    mtime_ns: int
    inode: int


REUSE_SCHEMA = 1


@dataclass
class ReuseRecord:
    """reuse.json: what the last full start's records were made from, so that a repeat `up` of the same profile
    on the same host starts from them without loading the profile (runtime/reuse.py)."""

    # invocation key (the qemuvm version, the profile source, --set, --name) -> the files that invocation reads,
    # as they were: the profile file and its extends chain; and `up NAME`'s, the instance's own profile.yaml
    invocations: dict[str, list[DiskPrint]]
    host: str  # key of the host facts and the QEMU binary's identity
    needs: list[str]  # files the command line names that must still exist (disks, overlays, kernel, seed, ...)
    ready: dict[str, Any] | None  # the profile's ready section as plain data
    memory_mib: int
    schema: int = REUSE_SCHEMA


def write_reuse(paths: InstancePaths, record: ReuseRecord) -> None:
    write_json_atomic(paths.root / "reuse.json", dataclasses.asdict(record))


def read_reuse(paths: InstancePaths) -> ReuseRecord | None:
    """The instance's ReuseRecord, or None when it has none or it cannot be used as it is (never an error: the
    start that finds none simply takes the full path and writes it anew)."""
    data = read_json(paths.root / "reuse.json")
    if data is None or data.get("schema") != REUSE_SCHEMA:
        return None
    try:
        invocations = {key: [DiskPrint(**f) for f in files] for key, files in (data.get("invocations") or {}).items()}
        record = ReuseRecord(**{**data, "invocations": invocations})
    except (TypeError, AttributeError):
        return None
    ok = (isinstance(record.host, str) and isinstance(record.needs, list)
          and all(isinstance(n, str) for n in record.needs) and isinstance(record.memory_mib, int)
          and (record.ready is None or isinstance(record.ready, dict)))
    return record if ok else None


@dataclass(frozen=True)
class SavedState:
    """saved.json: a `save`'s record, written once QEMU has exited and before saved.state gets its name."""

    saved_at: float
    size: int  # bytes of saved.state
    profile_sha256: str  # of profile.yaml: the restore needs the same devices
    disks: list[DiskPrint] = field(default_factory=list)
    schema: int = SAVED_STATE_SCHEMA


def write_saved_state(paths: InstancePaths, saved: SavedState) -> None:
    write_json_atomic(paths.saved_info, dataclasses.asdict(saved))


def read_saved_state(paths: InstancePaths) -> SavedState | None:
    """The instance's SavedState; None when there is none. Newer, unreadable or incomplete: UsageError."""
    data = _read_versioned(paths.saved_info, SAVED_STATE_SCHEMA, f"{paths.saved_info} was written by",
                           f"`qemuvm start {paths.name} --discard-saved` boots afresh")
    if data is None:
        return None
    try:
        disks = [DiskPrint(**disk) for disk in data.get("disks") or []]
        return SavedState(**{**data, "disks": disks, "schema": SAVED_STATE_SCHEMA})
    except TypeError as exc:
        raise UsageError(f"{paths.saved_info} is incomplete ({exc}); `qemuvm start {paths.name} --discard-saved` "
                         "boots afresh") from None


TEMPLATE_SCHEMA = 1


@dataclass(frozen=True)
class TemplateRecord:
    """template.json: a saved, ready VM that clones start from (runtime/template.py), written last."""

    fingerprint: str  # of the compiled devices, the profile without its name and the files it started from
    profile_name: str  # the instance it was made from (for `template ls`)
    created_at: float
    saved_at: float  # when its state was saved: a clone's guest clock starts that far behind
    state_size: int  # bytes of saved.state
    macs: list[str] = field(default_factory=list)  # each NIC's MAC in the saved guest: every clone keeps it
    disks: dict[str, str] = field(default_factory=dict)  # disk index -> its frozen image in the template folder
    inputs: list[DiskPrint] = field(default_factory=list)  # the files it started from, as they were
    ready_after_s: float | None = None  # how long the cold boot to ready took
    source: str | None = None  # the profile file it was made from
    schema: int = TEMPLATE_SCHEMA


def write_template(path: Path, record: TemplateRecord) -> None:
    write_json_atomic(path, dataclasses.asdict(record))


def read_template(path: Path) -> TemplateRecord | None:
    """A template's record; None when there is none. Newer, unreadable or incomplete: UsageError."""
    remedy = f"`qemuvm template rm {path.parent.name}` removes it"
    data = _read_versioned(path, TEMPLATE_SCHEMA, f"{path} was written by", remedy)
    if data is None:
        return None
    try:
        inputs = [DiskPrint(**item) for item in data.get("inputs") or []]
        return TemplateRecord(**{**data, "inputs": inputs, "schema": TEMPLATE_SCHEMA})
    except TypeError as exc:
        raise UsageError(f"{path} is incomplete ({exc}); {remedy}") from None


@dataclass
class NetworkRecord:
    """A NAT network's record, written after every step of its creation: what exists is always recorded."""

    name: str
    subnet: str
    gateway: str
    bridge: str
    created_at: float
    bridge_created: bool = False  # the bridge (with the gateway address) is ours: `rm` deletes it
    nft_table: str | None = None  # our nftables table (ip family), once loaded
    ip_forward_enabled: bool = False  # this network turned net.ipv4.ip_forward on (the last one off turns it off)
    dnsmasq: dict[str, Any] | None = None  # {pid, start_time, cmdline}: the proof that a dnsmasq is ours
    complete: bool = False  # every step done
    schema: int = NETWORK_SCHEMA


def write_network(path: Path, record: NetworkRecord) -> None:
    write_json_atomic(path, dataclasses.asdict(record))


def read_network(path: Path) -> NetworkRecord | None:
    """A network's record; None when there is none; UsageError for a newer or unreadable one."""
    data = _read_versioned(path, NETWORK_SCHEMA, f"network {path.parent.name} was created by",
                           f"remove {path.parent} and the bridge and nftables table it names by hand")
    if data is None:
        return None
    return _typed(NetworkRecord, data, _NETWORK_FIELD_TYPES, path,
                  f"remove {path.parent} and the bridge and nftables table it names by hand")


def _typed(cls: type[Any], data: dict[str, Any], types: dict[str, tuple[type, ...]], path: Path, remedy: str) -> Any:
    """`cls` from a record's JSON object: unknown keys dropped, every field of `types` of its type (a bool is
    no number here); UsageError naming the fields and the remedy otherwise."""
    known = {f.name for f in dataclasses.fields(cls)}
    try:
        record = cls(**{**{k: v for k, v in data.items() if k in known}, "schema": NETWORK_SCHEMA})
    except TypeError as exc:
        raise UsageError(f"{path} is incomplete ({exc}); {remedy}") from None
    wrong = [name for name, kinds in types.items() if not isinstance(getattr(record, name), kinds)
             or (isinstance(getattr(record, name), bool) and bool not in kinds)]
    if wrong:
        raise UsageError(f"{path} is corrupt (wrong type of {', '.join(wrong)}); {remedy}")
    return record


_NETWORK_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "subnet": (str,), "gateway": (str,), "bridge": (str,), "created_at": (int, float),
    "bridge_created": (bool,), "nft_table": (str, type(None)), "ip_forward_enabled": (bool,),
    "dnsmasq": (dict, type(None)), "complete": (bool,)}


@dataclass(frozen=True)
class NetworkDefinition:
    """What outlives a reboot of a NAT network (virsh net-define): its name and subnet, in the definitions
    folder (runtime/netdefs.py); the bridge, table and dnsmasq are made again from it."""

    name: str
    subnet: str
    defined_at: float
    schema: int = NETWORK_SCHEMA


def write_network_definition(path: Path, definition: NetworkDefinition) -> None:
    write_json_atomic(path, dataclasses.asdict(definition))


def read_network_definition(path: Path) -> NetworkDefinition | None:
    """A network's definition; None when there is none; UsageError for a newer, unreadable or ill-typed one."""
    data = _read_versioned(path, NETWORK_SCHEMA, f"network definition {path.stem} was written by",
                           f"remove it ({path}) and create the network again")
    if data is None:
        return None
    return _typed(NetworkDefinition, data, {"name": (str,), "subnet": (str,), "defined_at": (int, float)}, path,
                  "remove it and create the network again")
