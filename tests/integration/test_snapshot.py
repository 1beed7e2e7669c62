"""`qemuvm snapshot save|load|list|delete`: internal snapshots of a running VM's qcow2 disks (QMP jobs)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from test_screenshot import qemuvm
from vmrun import Vm, free_port, profile_from

pytestmark = pytest.mark.integration


def guest_profile(test_guest, folder: Path, disk: str, port: int) -> str:
    return f"""
machine: {{accel: tcg, memory: 256M}}
boot: {{kernel: {test_guest.vmlinuz}, initrd: {test_guest.initrd}, cmdline: console=ttyS0}}
disks: [{{file: {disk}}}]
network:
  - mode: user
    forwards: ["tcp:127.0.0.1:{port}-:22"]
"""


def test_save_delete_file_load_brings_it_back(short_tmp: Path, test_guest) -> None:
    shutil.copyfile(test_guest.data_disk, short_tmp / "data.qcow2")  # the VM writes to it
    port = free_port()
    profile = profile_from(guest_profile(test_guest, short_tmp, "data.qcow2", port), short_tmp, "snap")
    home = short_tmp / "home"
    with Vm(profile, home) as vm:
        vm.wait_serial("QEMUVM_GUEST_READY", 120)

        def ssh(command: str) -> str:
            result = vm.ssh(test_guest.key, port, command)
            assert result.returncode == 0, f"{command}: {result.stderr}"
            return result.stdout

        ssh("echo precious > /mnt/data/snap.txt && sync")
        started = time.monotonic()
        result = qemuvm(home, "snapshot", "save", "snap", "before")
        save_seconds = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        listed = json.loads(qemuvm(home, "snapshot", "list", "snap", "--json").stdout)
        assert [s["tag"] for s in listed] == ["before"] and listed[0]["vm_state_size"] > 0
        assert vm.qmp("query-status")["status"] == "running"  # the save paused the VM and resumed it

        ssh("rm /mnt/data/snap.txt && sync")
        assert "snap.txt" not in ssh("ls /mnt/data")
        started = time.monotonic()
        result = qemuvm(home, "snapshot", "load", "snap", "before")
        load_seconds = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert ssh("cat /mnt/data/snap.txt") == "precious\n"

        # Saving a tag twice is refused; unknown tags are clear errors; delete removes it.
        again = qemuvm(home, "snapshot", "save", "snap", "before")
        assert (again.returncode, again.stderr.strip()) == (
            2, "qemuvm: snapshot 'before' already exists; delete it first")
        missing = qemuvm(home, "snapshot", "load", "snap", "nope")
        assert missing.returncode == 2 and "no snapshot 'nope'" in missing.stderr
        assert qemuvm(home, "snapshot", "delete", "snap", "before").returncode == 0
        assert json.loads(qemuvm(home, "snapshot", "list", "snap", "--json").stdout) == []
    print(f"snapshot save {save_seconds:.2f} s, load {load_seconds:.2f} s (256M guest, TCG)")


def test_raw_disk_is_a_clear_error(short_tmp: Path, test_guest) -> None:
    raw = short_tmp / "data.raw"
    raw.write_bytes(b"\0" * (1 << 20))
    profile = profile_from(guest_profile(test_guest, short_tmp, "data.raw", free_port()), short_tmp, "rawsnap")
    home = short_tmp / "home"
    with Vm(profile, home):
        result = qemuvm(home, "snapshot", "save", "rawsnap", "t1")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"qemuvm: snapshots need qcow2 disks, but {raw} (raw) is not qcow2; convert it with "
        "`qemuvm image convert SRC DST --format qcow2` or make it ephemeral: true")
