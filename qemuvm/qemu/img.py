"""Typed wrappers over `qemu-img`: create, info, resize, convert, snapshot list.

Every call is an argv list; a failure raises OperationError quoting qemu-img's own message, so the
user sees e.g. `qemu-img create failed: ... Could not create ...: Permission denied`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qemuvm.errors import OperationError, UsageError

Format = Literal["raw", "qcow2"]
FORMATS: tuple[str, ...] = ("raw", "qcow2")
QEMU_IMG = "qemu-img"


@dataclass(frozen=True)
class Snapshot:
    """One internal qcow2 snapshot (`qemu-img snapshot -l`, `query-named-block-nodes`)."""

    id: str
    name: str
    vm_state_size: int
    date_sec: int
    date_nsec: int = 0
    vm_clock_nsec: int = 0


@dataclass(frozen=True)
class ImageInfo:
    """The fields of `qemu-img info --output=json` that qemuvm uses (the full answer is in `raw`)."""

    filename: str
    format: str
    virtual_size: int
    actual_size: int | None
    backing_filename: str | None
    backing_format: str | None
    snapshots: tuple[Snapshot, ...]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageInfo:
        return cls(
            filename=data["filename"],
            format=data["format"],
            virtual_size=int(data["virtual-size"]),
            actual_size=data.get("actual-size"),
            backing_filename=data.get("full-backing-filename") or data.get("backing-filename"),
            backing_format=data.get("backing-filename-format"),
            snapshots=tuple(_snapshot(s) for s in data.get("snapshots", [])),
            raw=data,
        )


def _snapshot(data: dict[str, Any]) -> Snapshot:
    return Snapshot(id=str(data["id"]), name=data["name"], vm_state_size=int(data.get("vm-state-size", 0)),
                    date_sec=int(data.get("date-sec", 0)), date_nsec=int(data.get("date-nsec", 0)),
                    vm_clock_nsec=int(data.get("vm-clock-nsec", 0)))


def _binary() -> str:
    found = shutil.which(QEMU_IMG)
    if not found:
        raise OperationError("qemu-img is not installed; install it with: apt-get install qemu-utils")
    return found


def run(args: list[str], action: str) -> str:
    """Run `qemu-img ARGS`; return stdout, or raise OperationError with qemu-img's message."""
    argv = [_binary(), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().replace("\n", " ") or f"exit status {proc.returncode}"
        # qemu-img prefixes its messages with "qemu-img: "; say it once.
        message = message.removeprefix("qemu-img: ")
        raise OperationError(f"qemu-img {action} failed: {message}")
    return proc.stdout


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"format {fmt!r} is not one of: {', '.join(FORMATS)}")
    return fmt


def create(
    file: str | os.PathLike[str],
    size: int | str | None,
    fmt: str = "qcow2",
    backing: str | os.PathLike[str] | None = None,
    backing_format: str | None = None,
) -> None:
    """`qemu-img create -f FMT [-b BACKING -F BFMT] FILE [SIZE]`; never overwrites an existing file.

    qemu-img itself truncates an existing file, so the check is here. A backing file is recorded as
    an absolute path so the overlay keeps working wherever it is opened from.
    """
    check_format(fmt)
    path = Path(file)
    if path.exists():
        raise UsageError(f"{path} already exists (qemuvm never overwrites an image)")
    args = ["create", "-q", "-f", fmt]
    if backing is not None:
        if fmt != "qcow2":
            raise UsageError("only a qcow2 image can have a backing file")
        base = Path(backing).resolve()
        args += ["-b", str(base), "-F", backing_format or info(base).format]
    elif size is None:
        raise UsageError("a new image needs a size (or a backing file)")
    args.append(str(path))
    if size is not None:
        args.append(str(size))
    run(args, "create")


def info(file: str | os.PathLike[str]) -> ImageInfo:
    """`qemu-img info -U --output=json FILE`: -U (force-share) reads an image a running VM holds."""
    path = Path(file)
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    return ImageInfo.from_json(json.loads(run(["info", "-U", "--output=json", str(path)], "info")))


def resize(file: str | os.PathLike[str], size: int | str, fmt: str | None = None) -> None:
    """`qemu-img resize`: grows (or, with a leading '-', shrinks) the virtual size. Refuses a shrink of
    a plain size smaller than the current one: losing the end of a disk should never be a typo away."""
    path = Path(file)
    current = info(path)
    args = ["resize", "-q", "-f", fmt or current.format]
    text = str(size)
    if text.startswith("-"):
        args.append("--shrink")
    elif not text.startswith("+"):
        from qemuvm.profile.types import parse_size

        try:
            wanted = parse_size(text)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if wanted < current.virtual_size:
            raise UsageError(f"{text} is smaller than the image's {current.virtual_size} bytes; shrinking loses "
                             f"data, so write it as -N (e.g. -1G) to mean it")
    run([*args, str(path), text], "resize")


def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], fmt: str = "qcow2",
            src_format: str | None = None) -> None:
    """`qemu-img convert -O FMT SRC DST` into a temporary name, renamed on success (no half image)."""
    check_format(fmt)
    source, target = Path(src), Path(dst)
    if not source.exists():
        raise UsageError(f"{source} does not exist")
    if target.exists():
        raise UsageError(f"{target} already exists (qemuvm never overwrites an image)")
    partial = target.with_name(f".{target.name}.partial")
    args = ["convert", "-U", "-O", fmt]
    if src_format:
        args += ["-f", src_format]
    try:
        run([*args, str(source), str(partial)], "convert")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def snapshots(file: str | os.PathLike[str]) -> list[Snapshot]:
    """The internal snapshots of a qcow2 image (works while a VM holds it)."""
    return list(info(file).snapshots)
