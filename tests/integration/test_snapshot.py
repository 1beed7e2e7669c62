"""`qemuvm snapshot save|load|list|delete`: internal snapshots of a running VM's qcow2 disks (QMP jobs), on VMs
started by `qemuvm up`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import CI_SMOKE, cli, guest_overrides

from qemuvm.testing import vm

pytestmark = pytest.mark.integration


def test_save_delete_file_load_brings_it_back(qemuvm_home: Path, test_guest) -> None:
    # ci-smoke's data disk is ephemeral: the guest writes to a qcow2 overlay in the instance folder, which
    # holds the snapshots too; build/guest/data.qcow2 is never written.
    with vm(CI_SMOKE, **guest_overrides(test_guest)) as guest:  # waits for READY and SSH

        def ssh(command: str) -> str:
            result = guest.ssh(command)
            assert result.returncode == 0, f"{command}: {result.stderr}"
            return result.stdout

        ssh("echo precious > /mnt/data/snap.txt && sync")
        started = time.monotonic()
        result = cli("snapshot", "save", guest.name, "before")
        save_seconds = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        listed = json.loads(cli("snapshot", "list", guest.name, "--json").stdout)
        assert [s["tag"] for s in listed] == ["before"] and listed[0]["vm_state_size"] > 0
        assert guest.qmp("query-status")["status"] == "running"  # the save paused the VM and resumed it

        ssh("rm /mnt/data/snap.txt && sync")
        assert "snap.txt" not in ssh("ls /mnt/data")
        started = time.monotonic()
        result = cli("snapshot", "load", guest.name, "before")
        load_seconds = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert ssh("cat /mnt/data/snap.txt") == "precious\n"
        assert guest.status()["state"] == "running"

        # Saving a tag twice is refused; unknown tags are clear errors; delete removes it.
        again = cli("snapshot", "save", guest.name, "before")
        assert (again.returncode, again.stderr.strip()) == (
            2, "qemuvm: snapshot 'before' already exists; delete it first")
        missing = cli("snapshot", "load", guest.name, "nope")
        assert missing.returncode == 2 and "no snapshot 'nope'" in missing.stderr
        assert cli("snapshot", "delete", guest.name, "before").returncode == 0
        assert json.loads(cli("snapshot", "list", guest.name, "--json").stdout) == []
    print(f"snapshot save {save_seconds:.2f} s, load {load_seconds:.2f} s (256M guest, TCG)")


def test_raw_disk_is_a_clear_error(qemuvm_home: Path, short_tmp: Path, test_guest) -> None:
    raw = short_tmp / "data.raw"
    raw.write_bytes(b"\0" * (1 << 20))
    overrides = {**guest_overrides(test_guest), "disks.0.file": str(raw), "disks.0.ephemeral": False}
    # No wait: the guest finds no ext4 on the blank disk; the error comes before any guest matters.
    with vm(CI_SMOKE, wait=False, **overrides) as guest:
        assert guest.status()["state"] == "running"
        result = cli("snapshot", "save", guest.name, "t1")
        listing = cli("snapshot", "list", guest.name)
    message = (f"qemuvm: snapshots need qcow2 disks, but {raw} (raw) is not qcow2; convert it with "
               "`qemuvm image convert SRC DST --format qcow2` or make it ephemeral: true")
    assert (result.returncode, result.stderr.strip()) == (2, message)
    assert (listing.returncode, listing.stderr.strip()) == (2, message)
    assert raw.read_bytes() == b"\0" * (1 << 20)  # nothing was written into the raw disk
