"""Internal snapshots of a running VM (`virsh snapshot-*`): QMP snapshot-save/-load/-delete jobs (QEMU >= 6.0).

A snapshot covers every writable disk, which must therefore be qcow2 (a raw disk is an error that
names it); the VM state (RAM, devices) goes on the first writable qcow2 disk. Read-only media (ISOs,
the cloud-init seed) and the UEFI variables flash are not part of a snapshot.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu.qmp.protocol import Runstate

from qemuvm.control.client import Monitor, QmpSession
from qemuvm.errors import OperationError, UsageError

JOB_TIMEOUT = 600.0  # saving RAM to disk under TCG on a slow disk takes a while
_job_ids = itertools.count(1)


@dataclass(frozen=True)
class BlockDisk:
    """A writable disk as QMP sees it."""

    node: str  # the format node name (what snapshot jobs take)
    file: str
    format: str
    snapshots: tuple[dict[str, Any], ...]


async def writable_disks(session: QmpSession) -> list[BlockDisk]:
    """Writable disks from `query-block`, in the VM's device order; pflash (UEFI variables) is skipped."""
    disks = []
    for block in await session.execute("query-block"):
        inserted = block.get("inserted")
        qdev = block.get("qdev", "") or ""
        if (not inserted or inserted.get("ro") or "pflash" in block.get("device", "") or "flash" in qdev
                or inserted.get("node-name", "").startswith("pflash")):
            continue
        image = inserted.get("image", {})
        disks.append(BlockDisk(node=inserted["node-name"], file=image.get("filename") or inserted.get("file", "?"),
                               format=inserted.get("drv") or image.get("format", "?"),
                               snapshots=tuple(image.get("snapshots", []))))
    return disks


async def _snapshot_disks(session: QmpSession) -> list[BlockDisk]:
    disks = await writable_disks(session)
    raw = [d for d in disks if d.format != "qcow2"]
    if raw:
        names = ", ".join(f"{d.file} ({d.format})" for d in raw)
        raise UsageError(f"snapshots need qcow2 disks, but {names} is not qcow2; convert it with "
                         "`qemuvm image convert SRC DST --format qcow2` or make it ephemeral: true")
    if not disks:
        raise UsageError("the VM has no writable disk to hold a snapshot; add a qcow2 disk")
    return disks


async def _run_job(session: QmpSession, command: str, arguments: dict[str, Any], timeout: float) -> None:
    """Start a snapshot job, wait until it concludes (JOB_STATUS_CHANGE), report its error, dismiss it."""
    job_id = f"qemuvm-{command}-{os.getpid()}-{next(_job_ids)}"
    deadline = time.monotonic() + timeout
    with session.client.listener("JOB_STATUS_CHANGE") as listener:
        await session.execute(command, {"job-id": job_id, **arguments})
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OperationError(f"{command} did not finish within {timeout:.0f} s")
            try:
                event = await asyncio.wait_for(listener.get(), min(remaining, 1.0))
            except TimeoutError:
                if session.client.runstate != Runstate.RUNNING:  # QEMU went away: no event will ever come
                    raise OperationError(f"QEMU exited during {command}; the images keep their previous "
                                         "snapshots") from None
                continue
            data = event.get("data", {})
            if data.get("id") == job_id and data.get("status") == "concluded":
                break
    jobs = await session.execute("query-jobs")
    error = next((job.get("error") for job in jobs if job.get("id") == job_id), None)
    await session.execute("job-dismiss", {"id": job_id})
    if error:
        raise OperationError(f"{command} failed: {error}")


def _has(disk: BlockDisk, tag: str) -> bool:
    return any(s.get("name") == tag for s in disk.snapshots)


async def save(session: QmpSession, tag: str, timeout: float = JOB_TIMEOUT) -> None:
    disks = await _snapshot_disks(session)
    if any(_has(d, tag) for d in disks):
        raise UsageError(f"snapshot {tag!r} already exists; delete it first")
    await _run_job(session, "snapshot-save",
                   {"tag": tag, "vmstate": disks[0].node, "devices": [d.node for d in disks]}, timeout)


async def load(session: QmpSession, tag: str, timeout: float = JOB_TIMEOUT) -> None:
    disks = await _snapshot_disks(session)
    if not _has(disks[0], tag):
        raise UsageError(f"no snapshot {tag!r} (see `qemuvm snapshot list`)")
    await _run_job(session, "snapshot-load",
                   {"tag": tag, "vmstate": disks[0].node, "devices": [d.node for d in disks]}, timeout)


async def delete(session: QmpSession, tag: str, timeout: float = JOB_TIMEOUT) -> None:
    disks = await _snapshot_disks(session)
    holders = [d for d in disks if _has(d, tag)]
    if not holders:
        raise UsageError(f"no snapshot {tag!r} (see `qemuvm snapshot list`)")
    await _run_job(session, "snapshot-delete", {"tag": tag, "devices": [d.node for d in holders]}, timeout)


async def listing(session: QmpSession) -> list[dict[str, Any]]:
    """The snapshots on the VM-state disk (those a `load` can restore), oldest first."""
    disks = await _snapshot_disks(session)
    return [
        {"tag": s["name"], "id": s.get("id"), "vm_state_size": s.get("vm-state-size", 0),
         "date": s.get("date-sec", 0), "vm_clock_ns": s.get("vm-clock-nsec", 0)}
        for s in disks[0].snapshots
    ]


def run(socket: str | os.PathLike[str], action: str, tag: str | None = None, timeout: float = JOB_TIMEOUT) -> Any:
    """Sync entry point for the CLI: action is save | load | delete | list."""
    operations = {"save": save, "load": load, "delete": delete}

    async def go(session: QmpSession) -> Any:
        if action == "list":
            return await listing(session)
        assert tag is not None
        return await operations[action](session, tag, timeout)

    return Monitor(Path(socket), timeout=30.0).run(go)
