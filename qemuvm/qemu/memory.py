"""The host's memory tuning from the classic KVM how-to: KSM, transparent huge pages, huge pages.

Read-only: `doctor` reports it, `prepare` checks huge pages for `machine.hugepages: true`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from qemuvm.errors import UsageError

PROC_MEMINFO = Path("/proc/meminfo")
KSM = Path("/sys/kernel/mm/ksm")
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _int(path: Path) -> int | None:
    text = _read(path)
    return int(text) if text is not None and text.isdigit() else None


def meminfo(path: Path | None = None) -> dict[str, int]:
    """/proc/meminfo as numbers (kB fields stay in kB, counts stay counts)."""
    values: dict[str, int] = {}
    for line in (_read(path or PROC_MEMINFO) or "").splitlines():
        match = re.match(r"^([^:]+):\s+(\d+)", line)
        if match:
            values[match.group(1)] = int(match.group(2))
    return values


def _selected(text: str | None) -> str | None:
    """`always [madvise] never` -> `madvise`."""
    match = re.search(r"\[(\w+)\]", text or "")
    return match.group(1) if match else text


def memory_tuning(meminfo_path: Path | None = None, ksm: Path | None = None,
                  thp: Path | None = None) -> dict[str, Any]:
    """What `doctor` shows: KSM (run state, pages shared), THP mode, huge pages. None = not available."""
    info = meminfo(meminfo_path)
    ksm, thp = ksm or KSM, thp or THP
    run = _int(ksm / "run")
    return {
        "ksm": {
            "available": run is not None,
            "run": run,  # 0 stopped, 1 merging, 2 unmerge
            "pages_sharing": _int(ksm / "pages_sharing"),
            "pages_shared": _int(ksm / "pages_shared"),
        },
        "transparent_hugepage": _selected(_read(thp)),
        "hugepages": {
            "total": info.get("HugePages_Total"),
            "free": info.get("HugePages_Free"),
            "size_kib": info.get("Hugepagesize"),
        },
    }


def check_hugepages(memory_mib: int, meminfo_path: Path | None = None) -> None:
    """For `machine.hugepages: true`: enough free huge pages for the guest's RAM, or a UsageError."""
    info = meminfo(meminfo_path)
    free = info.get("HugePages_Free", 0)
    size_kib = info.get("Hugepagesize", 2048) or 2048
    needed = -(-memory_mib * 1024 // size_kib)  # ceiling division
    if free <= 0:
        raise UsageError(
            "machine.hugepages: no free huge pages (HugePages_Free is 0); reserve some with: "
            f"sysctl vm.nr_hugepages={needed}"
        )
    if free < needed:
        raise UsageError(
            f"machine.hugepages: {memory_mib} MiB needs {needed} huge pages of {size_kib} KiB but only {free} "
            f"are free; reserve more with: sysctl vm.nr_hugepages={info.get('HugePages_Total', 0) + needed - free}"
        )
