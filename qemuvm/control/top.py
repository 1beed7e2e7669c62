"""`qemuvm top`: one sample of every instance — state, CPU (process and per vCPU), memory, disk, network.

Sources, cheapest first:
- state.json (state, uptime, restarts) and argv.json (vCPUs, guest memory, NICs) — no process needed;
- psutil on the proven QEMU pid: CPU seconds of the process and of each thread, RSS; the supervisor's RSS;
- QMP on the client monitor, for the moment of one sample only: `query-blockstats` (per-disk bytes and
  operations), `query-cpus-fast` (vCPU index -> thread id), `query-memory-size-summary`. All instances are
  sampled concurrently, each connection is closed right after its queries. The client monitor serves one
  client at a time: when it is busy (no greeting within QMP_TIMEOUT) the previous values are shown, marked
  stale, instead of waiting;
- network: QEMU 7.2 has no per-netdev counters in QMP (`query-stats` only has KVM providers, and returns
  nothing under TCG), so user-mode NICs read "n/a". A tap NIC (mode tap or bridge) is a host interface: its
  counters come from /sys/class/net/IF/statistics, found through the tun fd's `iff:` line in
  /proc/PID/fdinfo, and are reported from the guest's point of view (guest rx = the tap's tx).

CPU % is like top's: CPU seconds used between two samples / wall seconds between them * 100, so a
process with two busy vCPUs shows ~200 %. The first sample of an instance has no CPU % (None).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from qemuvm.paths import InstancePaths
from qemuvm.runtime import instance
from qemuvm.runtime.records import StateView

QMP_TIMEOUT = 0.5  # connect (greeting) and per-query deadline; longer means "busy", not "slow"
_QUERIES = ("query-status", "query-blockstats", "query-cpus-fast", "query-memory-size-summary")
# QEMU names vCPU threads `CPU <n>/<accel>` with -name ...,debug-threads=on; single-threaded TCG has one
# `ALL CPUs/TCG` thread.
_VCPU_THREAD = re.compile(r"^CPU (\d+)/(\w+)$")
_ALL_VCPUS_THREAD = re.compile(r"^ALL CPUs/(\w+)$")
_SIZE = {"": 1 << 20, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


# -- the math ---------------------------------------------------------------------------------------


def cpu_percent(before: float, after: float, wall_before: float, wall_after: float) -> float | None:
    """CPU % between two samples of (CPU seconds, wall seconds); None when no time passed."""
    wall = wall_after - wall_before
    if wall <= 0:
        return None
    # A restarted QEMU (or a thread that went away) can look like negative time: report 0, not nonsense.
    return round(max(0.0, after - before) / wall * 100.0, 1)


def vcpu_threads(names: dict[int, str]) -> dict[int | str, int]:
    """vCPU index -> thread id from thread names (`CPU 1/KVM`); "all" for single-threaded TCG."""
    found: dict[int | str, int] = {}
    for tid, name in names.items():
        match = _VCPU_THREAD.match(name.strip())
        if match:
            found[int(match.group(1))] = tid
        elif _ALL_VCPUS_THREAD.match(name.strip()):
            found["all"] = tid
    return dict(sorted(found.items(), key=lambda kv: (isinstance(kv[0], str), kv[0])))


def argv_facts(argv: list[str] | None) -> dict[str, Any]:
    """vCPUs, guest memory (bytes) and NICs (netdev id + mode) as the QEMU command line states them."""
    facts: dict[str, Any] = {"vcpus": None, "memory_bytes": None, "nics": []}
    for option, value in itertools.pairwise(argv or []):
        if option == "-smp":
            first = value.split(",")[0]
            cpus = first if first.isdigit() else next(
                (part.split("=", 1)[1] for part in value.split(",") if part.startswith("cpus=")), None)
            facts["vcpus"] = int(cpus) if cpus and cpus.isdigit() else facts["vcpus"]
        elif option == "-m":
            size = value.split(",")[0].removeprefix("size=")
            match = re.fullmatch(r"(\d+)([KMGT]?)B?", size.upper())
            if match:
                facts["memory_bytes"] = int(match.group(1)) * _SIZE[match.group(2)]
        elif option == "-netdev":
            if value.startswith("{"):
                with contextlib.suppress(ValueError):
                    spec = json.loads(value)
                    facts["nics"].append({"id": spec.get("id"), "mode": spec.get("type")})
            else:
                parts = value.split(",")
                ident = next((p.split("=", 1)[1] for p in parts[1:] if p.startswith("id=")), None)
                facts["nics"].append({"id": ident, "mode": parts[0]})
    return facts


def disk_stats(blockstats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per guest disk (the top-level `query-blockstats` entries): bytes and operations read/written."""
    disks = []
    for entry in blockstats:
        stats = entry.get("stats") or {}
        qdev = entry.get("qdev") or None
        # -blockdev disks have no legacy device name: name them by their node, else by the device.
        name = entry.get("device") or entry.get("node-name") or qdev
        disks.append({"name": name, "qdev": qdev,
                      "rd_bytes": stats.get("rd_bytes", 0), "wr_bytes": stats.get("wr_bytes", 0),
                      "rd_ops": stats.get("rd_operations", 0), "wr_ops": stats.get("wr_operations", 0)})
    return disks


# -- reading processes ------------------------------------------------------------------------------


@dataclass
class ProcessSample:
    """CPU seconds of a process and of each of its threads, at one moment."""

    wall: float
    cpu: float
    rss: int
    threads: dict[int, float]  # tid -> CPU seconds
    names: dict[int, str]  # tid -> thread name


def thread_names(pid: int) -> dict[int, str]:
    names = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/comm") as handle:
                names[int(tid)] = handle.read().strip()
    return names


def read_process(proc: psutil.Process) -> ProcessSample:
    """psutil's view of one process (raises psutil.Error when it is gone)."""
    with proc.oneshot():
        times = proc.cpu_times()
        rss = proc.memory_info().rss
        threads = {t.id: t.user_time + t.system_time for t in proc.threads()}
    return ProcessSample(wall=time.monotonic(), cpu=times.user + times.system, rss=rss, threads=threads,
                         names=thread_names(proc.pid))


def tap_counters(pid: int) -> list[dict[str, Any]]:
    """Counters of the tap devices QEMU holds open, from the guest's point of view."""
    found = []
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") != "/dev/net/tun":
                    continue
                with open(f"/proc/{pid}/fdinfo/{fd}") as handle:
                    iff = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("iff:")), None)
                if not iff:
                    continue
                stats = Path("/sys/class/net") / iff / "statistics"
                tx, rx = (int((stats / f).read_text()) for f in ("tx_bytes", "rx_bytes"))
                found.append({"ifname": iff, "rx_bytes": tx, "tx_bytes": rx})
    return found


# -- QMP, for the moment of one sample ----------------------------------------------------------------


async def _query(socket: Path, timeout: float) -> dict[str, Any] | None:
    """Connect, run _QUERIES, disconnect. None when the monitor is busy, missing or slow."""
    from qemu.qmp import QMPClient

    client = QMPClient("qemuvm-top")
    try:
        await asyncio.wait_for(client.connect(str(socket)), timeout)
        return {command: await asyncio.wait_for(client.execute(command), timeout) for command in _QUERIES}
    except Exception:  # busy (no greeting), gone, or an error: the caller shows the last values
        return None
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.disconnect(), timeout)


def query_all(sockets: dict[str, Path], timeout: float = QMP_TIMEOUT) -> dict[str, dict[str, Any] | None]:
    """_QUERIES on every monitor at once (one asyncio.run; each connection held only for its queries)."""
    if not sockets:
        return {}
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)  # failed connects are expected here

    async def gather() -> list[dict[str, Any] | None]:
        return await asyncio.gather(*(_query(path, timeout) for path in sockets.values()))

    return dict(zip(sockets, asyncio.run(gather()), strict=True))


# -- the sampler ------------------------------------------------------------------------------------


@dataclass
class _Memory:
    """What the sampler remembers of an instance between samples."""

    qemu_pid: int | None = None
    process: ProcessSample | None = None
    qmp: dict[str, Any] | None = None
    qmp_time: float | None = None


@dataclass
class Sampler:
    """Samples every instance below `home`; keeps the previous sample for CPU % and stale QMP values."""

    home: Path | None = None
    qmp_timeout: float = QMP_TIMEOUT
    read: Callable[[psutil.Process], ProcessSample] = read_process
    query: Callable[[dict[str, Path], float], dict[str, dict[str, Any] | None]] = query_all
    _memory: dict[str, _Memory] = field(default_factory=dict)

    def sample(self, qmp: bool = True) -> list[dict[str, Any]]:
        """One row per instance (sorted by name). qmp False: processes only (a cheap priming sample)."""
        rows, live = [], {}
        for paths in instance.list_instances(self.home):
            state = instance.read_state(paths)
            row, proc = self._base(paths, state)
            rows.append(row)
            if proc is not None:
                live[paths.name] = (paths, proc, row)
        answers = self.query({n: p.qmp_socket for n, (p, _, _) in live.items()}, self.qmp_timeout) if qmp else {}
        for name, (_paths, proc, row) in live.items():
            self._fill(row, proc, answers.get(name), qmp)
        for gone in set(self._memory) - set(live):
            del self._memory[gone]
        return rows

    def _base(self, paths: InstancePaths, state: StateView | None) -> tuple[dict[str, Any], Any]:
        view = instance.effective_state(state)
        proc = instance.proven_qemu(state)
        argv = view.qemu_cmdline if proc is not None else instance_argv(paths)
        facts = argv_facts(argv)
        supervisor = instance.live_supervisor(state)
        row: dict[str, Any] = {
            "name": paths.name,
            "state": view.state,
            "pid": proc.pid if proc is not None else None,
            "accel": view.accel if proc is not None else None,
            "vcpus": facts["vcpus"],
            "memory_bytes": facts["memory_bytes"],
            "uptime_s": view.uptime_s,
            "restarts": view.restarts,
            "cpu_percent": None,
            "vcpu_percent": [],
            "rss_bytes": None,
            "supervisor_rss_bytes": _rss(supervisor),
            "disks": [],
            "net": [{"id": nic["id"], "mode": nic["mode"], "rx_bytes": None, "tx_bytes": None}
                    for nic in facts["nics"]],
            "qmp": None,
        }
        return row, proc

    def _fill(self, row: dict[str, Any], proc: psutil.Process, answer: dict[str, Any] | None, asked: bool) -> None:
        memory = self._memory.get(row["name"])
        if memory is None or memory.qemu_pid != proc.pid:  # new, or restarted: nothing of an old QEMU applies
            memory = self._memory[row["name"]] = _Memory(qemu_pid=proc.pid)
        try:
            now = self.read(proc)
        except psutil.Error:
            return  # exited between the listing and now
        before, memory.process = memory.process, now
        row["rss_bytes"] = now.rss
        row["cpu_seconds"] = now.cpu  # user + system of the QEMU process since it started (a counter)
        if answer is not None:
            memory.qmp, memory.qmp_time = answer, time.time()
            row["qmp"] = "ok"
        elif asked and memory.qmp is not None:
            row["qmp"] = "stale"  # busy monitor: the previous values, with their age
            row["qmp_age_s"] = round(time.time() - (memory.qmp_time or 0), 1)
        elif asked:
            row["qmp"] = "unavailable"
        self._fill_qmp(row, memory.qmp)
        self._fill_cpu(row, before, now, memory.qmp)
        taps = tap_counters(proc.pid)
        if taps:
            row["net"] = [n for n in row["net"] if n["mode"] not in ("tap", "bridge")] + \
                [{"id": t["ifname"], "mode": "tap", "rx_bytes": t["rx_bytes"], "tx_bytes": t["tx_bytes"]}
                 for t in taps]

    @staticmethod
    def _fill_qmp(row: dict[str, Any], answer: dict[str, Any] | None) -> None:
        if not answer:
            return
        row["disks"] = disk_stats(answer.get("query-blockstats") or [])
        summary = answer.get("query-memory-size-summary") or {}
        if summary.get("base-memory"):
            row["memory_bytes"] = summary["base-memory"] + summary.get("plugged-memory", 0)
        cpus = answer.get("query-cpus-fast") or []
        if cpus:
            row["vcpus"] = len(cpus)
        status = (answer.get("query-status") or {}).get("status")
        if status:
            row["qmp_status"] = status

    @staticmethod
    def _fill_cpu(row: dict[str, Any], before: ProcessSample | None, now: ProcessSample,
                  answer: dict[str, Any] | None) -> None:
        # QMP knows which thread runs which vCPU; thread names are the fallback.
        mapping: dict[int | str, int] = {c["cpu-index"]: c["thread-id"] for c in (answer or {}).get(
            "query-cpus-fast") or [] if "thread-id" in c}
        named = vcpu_threads(now.names)
        if not mapping or not set(mapping.values()) <= set(now.threads):
            mapping = named
        if row["vcpus"] is None and mapping:
            row["vcpus"] = len(mapping) if "all" not in mapping else None
        if before is None:
            row["vcpu_percent"] = [{"index": i, "thread_id": tid, "cpu_percent": None} for i, tid in mapping.items()]
            return
        row["cpu_percent"] = cpu_percent(before.cpu, now.cpu, before.wall, now.wall)
        row["vcpu_percent"] = [
            {"index": index, "thread_id": tid,
             "cpu_percent": cpu_percent(before.threads[tid], now.threads[tid], before.wall, now.wall)
             if tid in before.threads and tid in now.threads else None}
            for index, tid in mapping.items()]


def _rss(proc: psutil.Process | None) -> int | None:
    if proc is None:
        return None
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return None


def instance_argv(paths: InstancePaths) -> list[str] | None:
    """argv.json of a stopped instance (what it would run with), for its vCPUs, memory and NICs."""
    try:
        data = json.loads(paths.argv.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, list) else None


def sample_once(home: Path | None = None, interval: float = 1.0) -> list[dict[str, Any]]:
    """A complete sample: processes read twice `interval` apart (for CPU %), QMP queried once at the end."""
    sampler = Sampler(home)
    sampler.sample(qmp=False)
    time.sleep(interval)
    return sampler.sample()
