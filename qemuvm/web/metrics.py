"""Per-VM metrics in the Prometheus exposition formats (`GET /metrics` of `qemuvm web`, `qemuvm metrics`).

The figures are `qemuvm top`'s sample (qemuvm/control/top.py: records, psutil on the proven QEMU process, one QMP
`query-blockstats`/`query-memory-size-summary` per running VM, tap counters), turned into metric families by a
prometheus_client collector; prometheus_client writes the text (0.0.4) or OpenMetrics exposition. Network bytes
exist only where the host sees them (tap and bridge NICs): QEMU 7.2 counts nothing per user-mode netdev.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from qemuvm.runtime import instance

STATES = instance.ALL_STATES  # a state series (0 or 1) for each state a record can hold
UP_STATES = (instance.RUNNING, instance.PAUSED, instance.SHUTDOWN)
OPENMETRICS = "application/openmetrics-text"


class InstanceCollector(Collector):
    """One scrape: the families of one sample of every instance (top's rows)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def collect(self) -> Iterator[Metric]:
        return iter(families(self.rows))


def families(rows: list[dict[str, Any]]) -> list[Metric]:
    """The metric families of one sample (pure: tests feed rows)."""
    state = GaugeMetricFamily("qemuvm_instance_state", "1 for the state the instance is in, 0 for the others",
                              labels=["name", "state"])
    up = GaugeMetricFamily("qemuvm_instance_up", "1 while the instance's QEMU runs (running, paused or shutting "
                           "down)", labels=["name"])
    uptime = GaugeMetricFamily("qemuvm_instance_uptime_seconds", "Seconds since QEMU started", labels=["name"])
    restarts = CounterMetricFamily("qemuvm_instance_restarts", "Restarts by the supervisor's policy",
                                   labels=["name"])
    cpu = CounterMetricFamily("qemuvm_qemu_cpu_seconds", "CPU seconds (user + system) of the QEMU process",
                              labels=["name"])
    rss = GaugeMetricFamily("qemuvm_qemu_resident_memory_bytes", "Resident memory of the QEMU process",
                            labels=["name"])
    guest = GaugeMetricFamily("qemuvm_guest_memory_bytes", "Guest RAM (QMP query-memory-size-summary, else -m)",
                              labels=["name"])
    vcpus = GaugeMetricFamily("qemuvm_guest_vcpus", "vCPUs of the guest", labels=["name"])
    disk = {key: CounterMetricFamily(f"qemuvm_disk_{key}", text, labels=["name", "device"]) for key, text in (
        ("read_bytes", "Bytes the guest read from the disk (QMP query-blockstats)"),
        ("written_bytes", "Bytes the guest wrote to the disk"),
        ("read_operations", "Read operations of the guest on the disk"),
        ("write_operations", "Write operations of the guest on the disk"))}
    nic = {key: CounterMetricFamily(f"qemuvm_nic_{key}", text, labels=["name", "interface"]) for key, text in (
        ("receive_bytes", "Bytes the guest received on the NIC (tap counters; not known for user-mode NICs)"),
        ("transmit_bytes", "Bytes the guest sent on the NIC"))}
    by_state: Counter[str] = Counter()
    for row in rows:
        name = row["name"]
        by_state[row["state"]] += 1
        for each in STATES:
            state.add_metric([name, each], 1.0 if row["state"] == each else 0.0)
        up.add_metric([name], 1.0 if row["state"] in UP_STATES and row.get("pid") else 0.0)
        restarts.add_metric([name], float(row.get("restarts") or 0))
        if row.get("uptime_s") is not None:
            uptime.add_metric([name], float(row["uptime_s"]))
        if row.get("cpu_seconds") is not None:
            cpu.add_metric([name], float(row["cpu_seconds"]))
        if row.get("rss_bytes") is not None:
            rss.add_metric([name], float(row["rss_bytes"]))
        if row.get("memory_bytes") is not None:
            guest.add_metric([name], float(row["memory_bytes"]))
        if row.get("vcpus") is not None:
            vcpus.add_metric([name], float(row["vcpus"]))
        for entry in row.get("disks") or []:
            device = _device(entry)
            for key, field in (("read_bytes", "rd_bytes"), ("written_bytes", "wr_bytes"),
                               ("read_operations", "rd_ops"), ("write_operations", "wr_ops")):
                disk[key].add_metric([name, device], float(entry[field]))
        for entry in row.get("net") or []:
            if entry.get("rx_bytes") is not None:
                nic["receive_bytes"].add_metric([name, entry["id"]], float(entry["rx_bytes"]))
                nic["transmit_bytes"].add_metric([name, entry["id"]], float(entry["tx_bytes"]))
    instances = GaugeMetricFamily("qemuvm_instances", "Instances by state", labels=["state"])
    for each in STATES:
        instances.add_metric([each], float(by_state.get(each, 0)))
    return [state, up, uptime, restarts, cpu, rss, guest, vcpus, *disk.values(), *nic.values(), instances]


def _device(entry: dict[str, Any]) -> str:
    """A disk's label: its device id without qemuvm's "-dev" (disk0), from a qdev path such as
    /machine/peripheral/disk0-dev/virtio-backend; else its node or legacy name."""
    match = re.search(r"/peripheral/([^/]+)", entry.get("qdev") or "")
    return match[1].removesuffix("-dev") if match else entry["name"]


def exposition(rows: list[dict[str, Any]], accept: str = "") -> tuple[bytes, str]:
    """(body, content type) of one scrape: OpenMetrics when `accept` asks for it, else the text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(InstanceCollector(rows))
    if OPENMETRICS in accept:
        from prometheus_client.openmetrics import exposition as om

        return om.generate_latest(registry), om.CONTENT_TYPE_LATEST
    from prometheus_client import exposition as text

    return text.generate_latest(registry), text.CONTENT_TYPE_LATEST
