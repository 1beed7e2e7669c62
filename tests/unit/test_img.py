"""qemu-img wrappers: real qemu-img on small files (no VM)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from qemuvm.errors import OperationError, UsageError
from qemuvm.qemu import img

# These tests run the real qemu-img (Debian package qemu-utils; scripts/setup installs it).
pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img: apt-get install qemu-utils")


def test_create_info_qcow2(short_tmp: Path) -> None:
    disk = short_tmp / "a.qcow2"
    img.create(disk, 64 << 20, "qcow2")
    info = img.info(disk)
    assert (info.format, info.virtual_size, info.backing_filename) == ("qcow2", 64 << 20, None)
    assert info.snapshots == ()


def test_create_raw_is_sparse(short_tmp: Path) -> None:
    disk = short_tmp / "a.raw"
    img.create(disk, "7G", "raw")
    assert disk.stat().st_size == 7 << 30
    assert disk.stat().st_blocks * 512 < 1 << 20  # sparse: nothing allocated


def test_create_never_overwrites(short_tmp: Path) -> None:
    disk = short_tmp / "a.raw"
    disk.write_bytes(b"precious")
    with pytest.raises(UsageError, match="already exists"):
        img.create(disk, "1G", "raw")
    assert disk.read_bytes() == b"precious"


def test_backing_is_absolute_and_typed(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img.create(short_tmp / "base.raw", "16M", "raw")
    monkeypatch.chdir(short_tmp)
    img.create("over.qcow2", None, "qcow2", backing="base.raw")
    info = img.info(short_tmp / "over.qcow2")
    assert info.backing_filename == str(short_tmp / "base.raw")
    assert info.backing_format == "raw"
    assert info.virtual_size == 16 << 20


def test_failure_quotes_qemu_img(short_tmp: Path) -> None:
    with pytest.raises(OperationError, match=r"qemu-img create failed: .*No such file or directory"):
        img.create(short_tmp / "missing" / "a.raw", "1G", "raw")


def test_info_of_a_non_image_and_a_missing_file(short_tmp: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        img.info(short_tmp / "nope.qcow2")
    bogus = short_tmp / "bogus.qcow2"
    bogus.write_bytes(b"\0" * 1024)
    # qemu-img probes a file of zeros as raw: info works, format says so.
    assert img.info(bogus).format == "raw"


def test_info_works_while_another_process_holds_the_image(short_tmp: Path) -> None:
    """-U: a running VM holds a write lock; qemu-img info must still read the image."""
    disk = short_tmp / "held.qcow2"
    img.create(disk, "16M", "qcow2")
    # qemu-io (qemu-utils) opens the image read-write and keeps the lock while it waits on stdin.
    holder = subprocess.Popen(["qemu-io", str(disk)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    try:
        holder.stdin.write(b"help\n")  # the answer proves the image is open
        holder.stdin.flush()
        assert holder.stdout.readline()
        plain = subprocess.run(["qemu-img", "info", str(disk)], capture_output=True, text=True)
        assert plain.returncode != 0 and "lock" in plain.stderr  # without -U it fails
        assert img.info(disk).virtual_size == 16 << 20
    finally:
        holder.communicate(b"quit\n", timeout=10)


def test_resize_grows_and_refuses_an_accidental_shrink(short_tmp: Path) -> None:
    disk = short_tmp / "a.qcow2"
    img.create(disk, "32M", "qcow2")
    img.resize(disk, "64M")
    assert img.info(disk).virtual_size == 64 << 20
    img.resize(disk, "+16M")
    assert img.info(disk).virtual_size == 80 << 20
    with pytest.raises(UsageError, match="shrinking loses data"):
        img.resize(disk, "32M")
    img.resize(disk, "-16M")
    assert img.info(disk).virtual_size == 64 << 20


def test_convert_is_atomic_and_never_overwrites(short_tmp: Path) -> None:
    src = short_tmp / "a.raw"
    src.write_bytes(b"x" * 65536)
    img.convert(src, short_tmp / "a.qcow2", "qcow2")
    assert img.info(short_tmp / "a.qcow2").format == "qcow2"
    with pytest.raises(UsageError, match="already exists"):
        img.convert(src, short_tmp / "a.qcow2", "qcow2")
    with pytest.raises(OperationError, match="qemu-img convert failed"):
        img.convert(src, short_tmp / "b.qcow2", "qcow2", src_format="vmdk")
    assert sorted(p.name for p in short_tmp.iterdir()) == ["a.qcow2", "a.raw"]  # no partial left


def test_unknown_format_is_a_usage_error(short_tmp: Path) -> None:
    with pytest.raises(UsageError, match="not one of: raw, qcow2"):
        img.create(short_tmp / "a.vdi", "1G", "vdi")
