"""The test guests keep their contract (scripts/guest/README.md), checked with raw QEMU + QMP.

Everything boots under TCG; every test kills its QEMU on the way out (RawQemu context manager).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from pathlib import Path

import pytest
from conftest import TestGuest
from helpers import REPO
from rawqemu import RawQemu

pytestmark = pytest.mark.integration

READY = "QEMUVM_GUEST_READY"
BOOT_TIMEOUT = 180.0  # TCG: READY takes 3-10 s idle, far longer on a loaded CI host (as in the other suites)
POWEROFF = "QEMUVM_GUEST_POWEROFF"


def ssh(key: Path, port: int, command: str, timeout: float = 60) -> str:
    argv = [
        "ssh",
        "-i",
        str(key),
        "-p",
        str(port),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=20",
        "root@127.0.0.1",
        command,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"ssh {command!r} failed ({proc.returncode}): {proc.stderr}"
    return proc.stdout


def direct_boot(
    guest: TestGuest, cmdline: str = "", *, port: int | None = None, data: bool = False, extra: list[str] | None = None
) -> list[str]:
    """QEMU arguments for a direct kernel boot of the busybox guest."""
    args = ["-kernel", str(guest.vmlinuz), "-initrd", str(guest.initrd), "-append", f"console=ttyS0 {cmdline}".strip()]
    if port is not None:
        args += ["-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22", "-device", "virtio-net-pci,netdev=n0"]
    if data:
        # snapshot=on: tests never modify the shared data disk.
        args += [
            "-drive",
            f"if=none,id=data,format=qcow2,snapshot=on,file={guest.data_disk}",
            "-device",
            "virtio-blk-pci,drive=data",
        ]
    return args + (extra or [])


def test_ready_ssh_and_data_disk(test_guest: TestGuest) -> None:
    with RawQemu(direct_boot(test_guest, port=0, data=True)) as vm:  # port 0: QEMU picks a free one
        port = vm.host_port(22)
        vm.wait_serial("QEMUVM_GUEST_FIRMWARE=bios", BOOT_TIMEOUT)
        print(f"direct boot: READY after {vm.wait_serial(READY, BOOT_TIMEOUT):.1f} s")
        assert ssh(test_guest.key, port, "uname -r").strip() == test_guest.kernel_version
        assert ssh(test_guest.key, port, "cat /mnt/data/marker.txt").strip() == "QEMUVM_DATA_MARKER"
        assert ssh(test_guest.key, port, "hostname").strip() == "qemuvm-guest"


def test_acpi_powerdown_exits_zero(test_guest: TestGuest) -> None:
    with RawQemu(direct_boot(test_guest, data=True)) as vm:
        vm.wait_serial(READY, BOOT_TIMEOUT)
        vm.qmp("system_powerdown")
        assert vm.wait_exit(30) == 0
        assert POWEROFF in vm.serial_text()


def test_noacpi_ignores_powerdown(test_guest: TestGuest) -> None:
    with RawQemu(direct_boot(test_guest, "qemuvm.noacpi")) as vm:
        vm.wait_serial(READY, BOOT_TIMEOUT)
        vm.qmp("system_powerdown")
        # A guest that honoured the button would print POWEROFF within a second or so.
        with pytest.raises(AssertionError):
            vm.wait_serial(POWEROFF, 5)
        assert vm.running()
        assert vm.qmp("query-status")["status"] == "running"
        vm.qmp("quit")
        vm.wait_exit(10)


def test_poweroff_after(test_guest: TestGuest) -> None:
    with RawQemu(direct_boot(test_guest, "qemuvm.poweroff_after=1", data=True)) as vm:
        vm.wait_serial(READY, BOOT_TIMEOUT)
        assert vm.wait_exit(30) == 0
        assert POWEROFF in vm.serial_text()


def test_panic_after_emits_guest_panicked(test_guest: TestGuest) -> None:
    with RawQemu(direct_boot(test_guest, "qemuvm.panic_after=1", extra=["-device", "pvpanic"]), paused=True) as vm:

        async def watch() -> str:
            # Listen before the guest runs: events sent while nobody listens are lost.
            client = vm.qmp_session()
            await asyncio.wait_for(client.connect(str(vm.qmp_sock)), 10)
            try:
                with client.listener("GUEST_PANICKED") as listener:
                    await client.execute("cont")
                    event = await asyncio.wait_for(listener.get(), 60)
                    return event["data"]["action"]
            finally:
                # QEMU's default panic action shuts it down: the connection may already be gone.
                with contextlib.suppress(EOFError):
                    await client.disconnect()

        assert asyncio.run(watch()) in ("pause", "poweroff", "run")
        assert READY in vm.serial_text()


def test_uefi_boot(test_guest: TestGuest) -> None:
    with RawQemu(direct_boot(test_guest), uefi=True) as vm:
        vm.wait_serial("QEMUVM_GUEST_FIRMWARE=uefi", 60)
        print(f"UEFI: READY after {vm.wait_serial(READY, BOOT_TIMEOUT):.1f} s")


def test_iso_boots_from_cdrom(test_guest: TestGuest) -> None:
    with RawQemu(["-cdrom", str(test_guest.iso), "-boot", "d"]) as vm:
        vm.wait_serial("QEMUVM_GUEST_FIRMWARE=bios", 60)
        print(f"cdrom: READY after {vm.wait_serial(READY, BOOT_TIMEOUT):.1f} s")


def test_serial_shell(test_guest: TestGuest) -> None:
    with RawQemu(direct_boot(test_guest, "qemuvm.shell")) as vm:
        vm.wait_serial(READY, BOOT_TIMEOUT)
        # Typing before the shell owns the tty loses input: wait for its prompt.
        vm.wait_serial("qemuvm-guest# ", 30)
        start = len(vm.serial_text())
        vm.serial_write("echo hi$((1+1))\n")
        vm.wait_serial("hi2", 10, start=start)


def test_second_build_is_a_noop(test_guest: TestGuest) -> None:
    files = ["manifest.json", "vmlinuz", "initrd.gz", "id_ed25519", "id_ed25519.pub", "data.qcow2", "guest.iso"]
    before = {f: (test_guest.outdir / f).stat().st_mtime_ns for f in files}
    manifest = (test_guest.outdir / "manifest.json").read_text()
    subprocess.run([str(REPO / "scripts/build-test-guest"), str(test_guest.outdir)], check=True, capture_output=True)
    assert (test_guest.outdir / "manifest.json").read_text() == manifest
    assert {f: (test_guest.outdir / f).stat().st_mtime_ns for f in files} == before
    assert (test_guest.key.stat().st_mode & 0o777) == 0o600


def test_offline_without_cache_fails_cleanly(tmp_path: Path) -> None:
    # An empty cache and an unreachable registry (apt pointed at a closed local port).
    env = dict(
        os.environ,
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        http_proxy="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
    )
    conf = tmp_path / "apt.conf"
    conf.write_text('Acquire::http::Proxy "http://127.0.0.1:9";\nAcquire::Retries "0";\n')
    env["APT_CONFIG"] = str(conf)
    proc = subprocess.run(
        [str(REPO / "scripts/build-test-guest"), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "registry" in proc.stderr and "cached: nothing" in proc.stderr


# ---------------------------------------------------------------------------------------------
# Debian 12 image (slow: built by debootstrap, boots systemd in about a minute under TCG)


# The Debian image (scripts/build-debian-image) is proven once, through `qemuvm smoke`: see
# tests/integration/test_smoke.py::test_smoke_on_the_debian_image.
