"""qemuvm's NAT networks on this host (root): `network create/rm/ls/status`, and a VM's taps on them.

A network's folder (`$QEMUVM_NETWORKS/NAME/`, default /run/qemuvm/networks: like the bridge it describes, it
does not outlive a reboot) holds network.json (records.NetworkRecord, written after every step of `create`,
so whatever exists is recorded and `rm` removes exactly that), dnsmasq's pidfile, leases file and log. The
names, address plan, dnsmasq command line and nftables ruleset are pure (qemu/natnet.py).

A VM's NICs on networks (the checks before `up`, its taps, addresses and problems) are runtime/nics.py;
the supervisor's one step, putting a VM's taps on their bridges, is runtime/taps.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemuvm.errors import OperationError, UsageError
from qemuvm.qemu import natnet
from qemuvm.runtime import instance, records

if TYPE_CHECKING:
    pass

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # as an instance name (profile/types.py NAME_PATTERN)
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
COMMAND_TIMEOUT = 30.0
INSTALL = "apt-get install iproute2 nftables dnsmasq-base"


def networks_dir() -> Path:
    return Path(os.environ.get("QEMUVM_NETWORKS") or "/run/qemuvm/networks")


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise UsageError(f"{name!r} is not a network name: letters, digits, '_', '.', '-', at most 63, starting "
                         "with a letter or digit")
    return name


def network_folder(name: str) -> Path:
    return networks_dir() / check_name(name)


def _record_path(name: str) -> Path:
    return network_folder(name) / "network.json"


def read(name: str) -> records.NetworkRecord | None:
    return records.read_network(_record_path(name))


def run(argv: list[str], what: str, stdin: str | None = None) -> str:
    """argv (never a shell); OperationError with its last error line when it fails."""
    try:
        feed: dict[str, Any] = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, **feed)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OperationError(f"{what} failed: {exc}") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        raise OperationError(f"{what} failed: {lines[-1].strip() if lines else f'exit code {done.returncode}'}")
    return done.stdout


def link_exists(ifname: str) -> bool:
    return Path("/sys/class/net", ifname).exists()


def host_routes() -> list[str]:
    """Every IPv4 route destination of this host (all tables), as `ip` prints them."""
    out = run(["ip", "-j", "-4", "route", "show", "table", "all"], "listing the host's routes")
    return [route["dst"] for route in json.loads(out or "[]")
            if route.get("dst") and route.get("type") not in ("broadcast", "multicast")]


def _require(what: str) -> None:
    if os.geteuid() != 0:
        raise UsageError(f"{what} needs root (it makes a bridge and nftables rules and runs dnsmasq): run it with "
                         "sudo")
    missing = [tool for tool in ("ip", "nft", "dnsmasq") if shutil.which(tool) is None]
    if missing:
        raise UsageError(f"{' and '.join(missing)} not installed; install with: {INSTALL}")


def _scan() -> list[tuple[Path, records.NetworkRecord | UsageError]]:
    """Every network folder with its record, or why the record cannot be read."""
    found: list[tuple[Path, records.NetworkRecord | UsageError]] = []
    if networks_dir().is_dir():
        for folder in sorted(path for path in networks_dir().iterdir() if path.is_dir()):
            try:
                record = records.read_network(folder / "network.json")
            except UsageError as exc:
                found.append((folder, exc))
                continue
            if record is not None:
                found.append((folder, record))
    return found


def names() -> frozenset[str]:
    """The networks that exist (readable records), for `import libvirt`: <interface type='network'> joins one."""
    return frozenset(record.name for record in _all_records())


def _all_records() -> list[records.NetworkRecord]:
    return [record for _folder, record in _scan() if isinstance(record, records.NetworkRecord)]


def _lock() -> contextlib.AbstractContextManager[int]:
    networks_dir().mkdir(parents=True, exist_ok=True, mode=0o700)
    return instance.locked(networks_dir() / ".lock", timeout=60)


def create(name: str, subnet: str | None = None) -> records.NetworkRecord:
    """Make network `name`: bridge, nftables table, IPv4 forwarding, dnsmasq; each step recorded as it is done,
    and everything undone when a step fails (nothing half-made is left)."""
    folder = network_folder(name)
    _require("qemuvm network create")
    with _lock():
        if read(name) is not None:
            raise UsageError(f"network {name} exists; see `qemuvm network status {name}`, or remove it first: "
                             f"qemuvm network rm {name}")
        bridge = natnet.bridge_name(name)
        if link_exists(bridge):
            raise UsageError(f"the host already has an interface {bridge} that qemuvm did not record; remove it "
                             f"(ip link del {bridge}) or choose another network name")
        routes, taken = host_routes(), [record.subnet for record in _all_records()]
        if subnet is None:
            subnet = natnet.first_free_subnet(routes, taken)
            if subnet is None:
                raise UsageError("every subnet from 192.168.122.0/24 to 192.168.254.0/24 overlaps a host route; "
                                 "choose one with --subnet")
        try:
            plan = natnet.address_plan(subnet)
        except ValueError as exc:
            raise UsageError(f"--subnet: {exc}") from None
        clash = natnet.overlapping(plan.subnet, [*routes, *taken])
        if clash is not None:
            free = natnet.first_free_subnet(routes, taken)
            raise UsageError(f"--subnet {plan.subnet} overlaps the host route {clash} (or another qemuvm network); "
                             f"choose one that does not{f', e.g. --subnet {free}' if free else ''}")
        folder.mkdir(mode=0o700)
        build = _Build(records.NetworkRecord(name=name, subnet=plan.subnet, gateway=plan.gateway, bridge=bridge,
                                             created_at=time.time()), plan, folder)
        records.write_network(build.path, build.record)
        try:
            for step in CREATE_STEPS:
                step.do(build)
                records.write_network(build.path, build.record)  # what exists is recorded as soon as it does
            build.record.complete = True
            records.write_network(build.path, build.record)
        except BaseException:
            _teardown(build.record)
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return build.record


# -- the steps of `create`, each with its undo (`rm` and a failed `create` walk them backwards) -------------


@dataclass
class _Build:
    record: records.NetworkRecord
    plan: natnet.AddressPlan
    folder: Path

    @property
    def path(self) -> Path:
        return self.folder / "network.json"


@dataclass(frozen=True)
class Step:
    name: str
    do: Callable[[_Build], None]  # makes its part and notes it in the record
    undo: Callable[[records.NetworkRecord], str | None] | None  # removes what the record says; why it could not


def _add_bridge(build: _Build) -> None:
    run(["ip", "link", "add", build.record.bridge, "type", "bridge"], f"creating bridge {build.record.bridge}")
    build.record.bridge_created = True


def _delete_bridge(record: records.NetworkRecord) -> str | None:
    if record.bridge_created and link_exists(record.bridge):
        try:
            run(["ip", "link", "del", record.bridge], f"deleting bridge {record.bridge}")
        except OperationError as exc:
            return str(exc)
    return None


def _address_bridge(build: _Build) -> None:  # undone with the bridge
    bridge, plan = build.record.bridge, build.plan
    run(["ip", "addr", "add", f"{plan.gateway}/{plan.prefix}", "dev", bridge], f"addressing {bridge}")
    run(["ip", "link", "set", bridge, "up"], f"bringing {bridge} up")


def _load_nftables(build: _Build) -> None:
    table = natnet.nft_table(build.record.name)
    run(["nft", "-f", "-"], f"loading nftables table {table}",
        stdin=natnet.nft_ruleset(table, build.record.bridge, build.plan))
    build.record.nft_table = table


def _delete_nftables(record: records.NetworkRecord) -> str | None:
    if record.nft_table:
        try:
            run(["nft", "delete", "table", "ip", record.nft_table], f"deleting nftables table {record.nft_table}")
        except OperationError as exc:
            if "No such file" not in str(exc):
                return str(exc)
    return None


def _forwarding_on(build: _Build) -> None:
    if IP_FORWARD.read_text().strip() != "1":
        IP_FORWARD.write_text("1\n")
        build.record.ip_forward_enabled = True


def _forwarding_back(record: records.NetworkRecord) -> None:
    if not record.ip_forward_enabled:
        return
    others = [other for other in _all_records() if other.name != record.name]
    if others:  # they rely on forwarding too: the last one to go turns it off
        others[0].ip_forward_enabled = True
        records.write_network(_record_path(others[0].name), others[0])
    elif not forwarding_users():
        with contextlib.suppress(OSError):
            IP_FORWARD.write_text("0\n")
    # else: bridges that are not ours appeared since (Docker's docker0, libvirt's virbr0, a container network):
    # they forward through the same switch, so it stays on.


def _dnsmasq(build: _Build) -> None:
    build.record.dnsmasq = _start_dnsmasq(build.record.bridge, build.plan, build.folder)


def _stop_dnsmasq(record: records.NetworkRecord) -> None:
    import psutil

    proc = proven_dnsmasq(record)
    if proc is None:
        return
    with contextlib.suppress(psutil.Error):
        proc.terminate()
    _gone, alive = psutil.wait_procs([proc], timeout=5)
    for still in alive:
        with contextlib.suppress(psutil.Error):
            still.kill()


CREATE_STEPS = (
    Step("bridge", _add_bridge, _delete_bridge),
    Step("address", _address_bridge, None),
    Step("nftables", _load_nftables, _delete_nftables),
    Step("ip_forward", _forwarding_on, _forwarding_back),
    Step("dnsmasq", _dnsmasq, _stop_dnsmasq),
)


def _teardown(record: records.NetworkRecord) -> list[str]:
    """Undo what `record` says was made, step by step in reverse; what could not be undone (each a sentence)."""
    return [problem for step in reversed(CREATE_STEPS) if step.undo is not None
            for problem in [step.undo(record)] if problem]


def _start_dnsmasq(bridge: str, plan: natnet.AddressPlan, folder: Path) -> dict[str, Any]:
    """dnsmasq as a daemon of the network's (it forks, reports start-up errors through its exit code, then
    drops root); its proof: pid, start time, command line."""
    import psutil

    argv = natnet.dnsmasq_argv(shutil.which("dnsmasq") or "dnsmasq", bridge, plan, str(folder))
    (folder / "leases").touch(mode=0o644)
    run(argv, "starting dnsmasq")
    try:
        pid = int((folder / "dnsmasq.pid").read_text().strip())
        proc = psutil.Process(pid)
        return {"pid": pid, "start_time": proc.create_time(), "cmdline": proc.cmdline()}
    except (OSError, ValueError, psutil.Error) as exc:
        raise OperationError(f"dnsmasq started but its pidfile {folder / 'dnsmasq.pid'} is unusable: {exc}") from None


def proven_dnsmasq(record: records.NetworkRecord) -> Any:
    import psutil

    entry = record.dnsmasq or {}
    proc = instance.process_if_alive(entry.get("pid"), entry.get("start_time"))
    try:
        return proc if proc is not None and proc.cmdline() == entry.get("cmdline") else None
    except psutil.Error:
        return None


def forwarding_users() -> list[str]:
    """The bridges on this host now that are not a qemuvm network's: whoever made them may rely on IPv4
    forwarding, which the last qemuvm network therefore never turns off under them."""
    ours = {record.bridge for record in _all_records()}
    found = []
    with contextlib.suppress(OSError):
        for link in sorted(os.listdir("/sys/class/net")):
            if os.path.isdir(f"/sys/class/net/{link}/bridge") and link not in ours:
                found.append(link)
    return found


def attached(record: records.NetworkRecord) -> list[str]:
    """The interfaces on the network's bridge now (the VMs' taps)."""
    with contextlib.suppress(OSError):
        return sorted(os.listdir(f"/sys/class/net/{record.bridge}/brif"))
    return []


def remove(name: str, force: bool = False) -> records.NetworkRecord:
    _require("qemuvm network rm")
    with _lock():
        record = read(name)
        if record is None:
            raise UsageError(f"no network named {name} (see `qemuvm network ls`)")
        taps = attached(record)
        if taps and not force:
            raise UsageError(f"network {name} is in use by {len(taps)} VM NIC(s) ({', '.join(taps)}); stop those "
                             f"VMs first, or remove it anyway with: qemuvm network rm {name} --force")
        problems = _teardown(record)
        if problems:
            raise OperationError(f"network {name} is partly removed ({'; '.join(problems)}); its record stays in "
                                 f"{network_folder(name)}: run `qemuvm network rm {name}` again")
        shutil.rmtree(network_folder(name), ignore_errors=True)
        return record


def current_leases(record: records.NetworkRecord) -> list[natnet.Lease]:
    with contextlib.suppress(OSError):
        text = (network_folder(record.name) / "leases").read_text()
        now = time.time()
        return [lease for lease in natnet.leases(text) if lease.expires == 0 or lease.expires > now]
    return []


def view(record: records.NetworkRecord) -> dict[str, Any]:
    """One row of `network ls --json` (and the base of `network status --json`): its state checked live."""
    problems = []
    if not record.complete:
        problems.append("its creation did not finish (run `qemuvm network rm` and create it again)")
    if not link_exists(record.bridge):
        problems.append(f"its bridge {record.bridge} is gone (the host rebooted, or another network namespace)")
    if proven_dnsmasq(record) is None:
        log = network_folder(record.name) / "dnsmasq.log"
        problems.append(f"its dnsmasq is not running (no DHCP or DNS); see {log}")
    return {"name": record.name, "state": "active" if not problems else "degraded", "problems": problems,
            "bridge": record.bridge, "subnet": record.subnet, "gateway": record.gateway,
            "nft_table": record.nft_table, "dnsmasq_pid": (record.dnsmasq or {}).get("pid"),
            "leases": len(current_leases(record)), "attached": attached(record),
            "dir": str(network_folder(record.name))}


def list_all() -> list[dict[str, Any]]:
    """Every network's view; one whose record cannot be read is listed as `unreadable`, with why."""
    return [view(record) if isinstance(record, records.NetworkRecord) else
            not_up(folder.name, "unreadable", problems=[str(record)], folder=folder)
            for folder, record in _scan()]


def not_up(name: str, state: str, *, problems: list[str] | None = None, subnet: str | None = None,
           folder: Path | None = None) -> dict[str, Any]:
    """A `network ls` row of a network with nothing live to show: unreadable, or defined but not up."""
    return {"name": name, "state": state, "problems": problems or [], "bridge": None, "subnet": subnet,
            "gateway": None, "nft_table": None, "dnsmasq_pid": None, "leases": 0, "attached": [],
            "dir": str(folder) if folder else None}


def status(name: str) -> dict[str, Any]:
    record = read(name)
    if record is None:
        raise UsageError(f"no network named {name} (see `qemuvm network ls`)")
    return {**view(record), "leases": [{"mac": lease.mac, "address": lease.address, "hostname": lease.hostname,
                                        "expires": lease.expires} for lease in current_leases(record)]}
