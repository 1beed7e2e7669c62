"""`qemuvm top` sampling math and mapping, with fake processes and fake QMP answers (no QEMU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil
import pytest

from qemuvm.cli.monitor import row_cells
from qemuvm.control import top
from qemuvm.control.top import ProcessSample, Sampler, argv_facts, cpu_percent, disk_stats, vcpu_threads


def test_cpu_percent_is_cpu_seconds_over_wall_seconds() -> None:
    assert cpu_percent(10.0, 10.5, 100.0, 101.0) == 50.0
    assert cpu_percent(0.0, 3.0, 0.0, 1.5) == 200.0  # two busy vCPUs: like top, above 100 %
    assert cpu_percent(5.0, 5.0, 0.0, 2.0) == 0.0


def test_cpu_percent_without_elapsed_time_or_with_a_reset_counter() -> None:
    assert cpu_percent(1.0, 2.0, 5.0, 5.0) is None
    assert cpu_percent(9.0, 1.0, 0.0, 1.0) == 0.0  # a restarted process: never negative


def test_vcpu_threads_from_qemu_thread_names() -> None:
    names = {10: "qemu-web", 11: "worker", 12: "CPU 1/KVM", 13: "CPU 0/KVM", 14: "IO mon_iothread",
             15: "CPU 10/TCG"}
    assert vcpu_threads(names) == {0: 13, 1: 12, 10: 15}
    assert list(vcpu_threads(names)) == [0, 1, 10]
    assert vcpu_threads({20: "ALL CPUs/TCG", 21: "qemu-x"}) == {"all": 20}
    assert vcpu_threads({1: "qemu-system-x86"}) == {}


@pytest.mark.parametrize(("argv", "vcpus", "memory"), [
    (["qemu", "-smp", "2", "-m", "256M"], 2, 256 << 20),
    (["qemu", "-smp", "cpus=4,sockets=1", "-m", "2G"], 4, 2 << 30),
    (["qemu", "-m", "512"], None, 512 << 20),  # a bare number is MiB, as in QEMU
    (["qemu", "-m", "size=1G,slots=2,maxmem=4G"], None, 1 << 30),
    ([], None, None),
])
def test_argv_facts_vcpus_and_memory(argv: list[str], vcpus: int | None, memory: int | None) -> None:
    facts = argv_facts(argv)
    assert (facts["vcpus"], facts["memory_bytes"]) == (vcpus, memory)


def test_argv_facts_nics_in_both_spellings() -> None:
    argv = ["qemu", "-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22",
            "-netdev", json.dumps({"type": "tap", "id": "net1", "ifname": "tap0"})]
    assert argv_facts(argv)["nics"] == [{"id": "net0", "mode": "user"}, {"id": "net1", "mode": "tap"}]


def test_disk_stats_names_blockdev_disks_by_node() -> None:
    answer = [
        {"device": "", "node-name": "disk0", "qdev": "/machine/peripheral/disk0-dev/virtio-backend",
         "stats": {"rd_bytes": 4096, "wr_bytes": 512, "rd_operations": 3, "wr_operations": 1}},
        {"device": "ide0-cd0", "qdev": "/machine/unattached/device[20]", "stats": {}},
    ]
    assert disk_stats(answer) == [
        {"name": "disk0", "qdev": "/machine/peripheral/disk0-dev/virtio-backend", "rd_bytes": 4096,
         "wr_bytes": 512, "rd_ops": 3, "wr_ops": 1},
        {"name": "ide0-cd0", "qdev": "/machine/unattached/device[20]", "rd_bytes": 0, "wr_bytes": 0,
         "rd_ops": 0, "wr_ops": 0},
    ]


# -- the sampler, with a fake instance, fake psutil samples and fake QMP answers ----------------------


class FakeProcess:
    pid = 4242

    def cmdline(self) -> list[str]:  # names no instance folder: never taken for a found supervisor
        return []


def _fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, running: bool = True) -> Path:
    (tmp_path / "vm").mkdir()
    argv = ["qemu-system-x86_64", "-smp", "2", "-m", "256M", "-netdev", "user,id=net0"]
    state = {"state": "running" if running else "stopped", "qemu_pid": FakeProcess.pid, "restarts": 1,
             "qemu_start_time": 1.0, "qemu_cmdline": argv, "accel": "tcg"}
    (tmp_path / "vm" / "state.json").write_text(json.dumps(state))
    (tmp_path / "vm" / "argv.json").write_text(json.dumps(argv))
    monkeypatch.setattr(top.instance, "proven_qemu", lambda s: FakeProcess() if running else None)
    monkeypatch.setattr(top.instance, "live_supervisor", lambda s: None)
    monkeypatch.setattr(top.instance, "process_if_alive", lambda pid, start: FakeProcess() if running else None)
    monkeypatch.setattr(top, "tap_counters", lambda pid: [])
    return tmp_path


def _samples(*samples: ProcessSample) -> Any:
    queue = list(samples)

    def read(_proc: Any) -> ProcessSample:
        return queue.pop(0)

    return read


NAMES = {100: "qemu-vm", 101: "CPU 0/TCG", 102: "CPU 1/TCG"}
QMP_ANSWER = {
    "query-status": {"status": "running"},
    "query-blockstats": [{"device": "", "node-name": "disk0", "qdev": "/machine/peripheral/disk0-dev/virtio-backend",
                          "stats": {"rd_bytes": 1000, "wr_bytes": 10, "rd_operations": 5, "wr_operations": 1}}],
    "query-cpus-fast": [{"cpu-index": 0, "thread-id": 101}, {"cpu-index": 1, "thread-id": 102}],
    "query-memory-size-summary": {"base-memory": 256 << 20, "plugged-memory": 0},
}


def test_sampler_cpu_percent_per_process_and_vcpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _fake_home(tmp_path, monkeypatch)
    first = ProcessSample(wall=10.0, cpu=1.0, rss=5000, threads={100: 0.5, 101: 0.3, 102: 0.2}, names=NAMES)
    second = ProcessSample(wall=12.0, cpu=2.5, rss=6000, threads={100: 0.6, 101: 1.3, 102: 0.6}, names=NAMES)
    sampler = Sampler(home, read=_samples(first, second), query=lambda sockets, timeout: {"vm": QMP_ANSWER})
    (primed,) = sampler.sample(qmp=False)
    assert primed["cpu_percent"] is None and primed["rss_bytes"] == 5000
    (row,) = sampler.sample()
    assert row["cpu_percent"] == 75.0  # 1.5 CPU s in 2 wall s
    assert [(v["index"], v["cpu_percent"]) for v in row["vcpu_percent"]] == [(0, 50.0), (1, 20.0)]
    assert row["rss_bytes"] == 6000
    assert row["vcpus"] == 2 and row["memory_bytes"] == 256 << 20 and row["restarts"] == 1
    assert row["disks"][0]["rd_bytes"] == 1000 and row["qmp"] == "ok"
    assert row["net"] == [{"id": "net0", "mode": "user", "rx_bytes": None, "tx_bytes": None}]
    assert row_cells(row)[10] == "n/a"


def test_sampler_busy_monitor_keeps_the_last_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _fake_home(tmp_path, monkeypatch)
    samples = [ProcessSample(wall=float(t), cpu=float(t), rss=1, threads={}, names=NAMES) for t in range(3)]
    answers = [{"vm": QMP_ANSWER}, {"vm": None}]
    sampler = Sampler(home, read=_samples(*samples), query=lambda sockets, timeout: answers.pop(0))
    sampler.sample(qmp=False)
    assert sampler.sample()[0]["qmp"] == "ok"
    (row,) = sampler.sample()
    assert row["qmp"] == "stale" and row["disks"][0]["rd_bytes"] == 1000 and "qmp_age_s" in row
    # Without query-cpus-fast mapping threads that exist, the thread names map the vCPUs.
    assert [v["thread_id"] for v in row["vcpu_percent"]] == [101, 102]


def test_sampler_process_gone_between_listing_and_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _fake_home(tmp_path, monkeypatch)

    def gone(_proc: Any) -> ProcessSample:
        raise psutil.NoSuchProcess(FakeProcess.pid)

    (row,) = Sampler(home, read=gone, query=lambda sockets, timeout: {}).sample()
    assert row["rss_bytes"] is None and row["cpu_percent"] is None


def test_sampler_stopped_instance_has_no_process_stats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _fake_home(tmp_path, monkeypatch, running=False)
    asked: list[dict[str, Path]] = []
    sampler = Sampler(home, read=_samples(), query=lambda sockets, timeout: asked.append(sockets) or {})
    (row,) = sampler.sample()
    assert row["state"] == "stopped" and row["pid"] is None
    assert row["cpu_percent"] is None and row["rss_bytes"] is None and row["disks"] == []
    assert row["vcpus"] == 2  # from argv.json
    assert asked == [{}]  # no QMP for a stopped instance
    assert row_cells(row)[3] == "-"
