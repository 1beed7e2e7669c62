"""Host folders in the guest over 9p, on the test guest built on Debian's generic kernel (it has 9p;
the guest mounts every tag at /mnt/TAG): byte-exact both ways, odd names, owners and modes, read-only; a source
that cannot be shared is refused naming the field, and a VM with a share is never saved."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from helpers import cli, guest_profile

from qemuvm import api
from qemuvm.control import ssh as ssh_

pytestmark = pytest.mark.integration

NAMES = ["with space.txt", "com,ma.txt", "ünïcødé ☃.txt"]


def _in_guest(name: str, command: str, ok: bool = True) -> Any:
    done = ssh_.run(name, command, timeout=120)
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def _profile(tmp_path: Path, guest: Any, name: str, shares: list[dict[str, Any]]) -> Path:
    return guest_profile(tmp_path, guest, name, shares=shares, ssh={"identity": str(guest.key)},
                         network=[{"mode": "user"}])


def test_a_9p_share_reads_and_writes_both_ways(home: Path, test_guest_9p: Any, tmp_path: Path) -> None:
    folder, readonly = tmp_path / "src", tmp_path / "ro"
    folder.mkdir()
    readonly.mkdir()
    blob = os.urandom(64 << 20)
    (folder / "from host.bin").write_bytes(blob)
    for name in NAMES:
        (folder / name).write_text(name)
    (folder / "mode.txt").write_text("m")
    (folder / "mode.txt").chmod(0o640)
    (readonly / "kept.txt").write_text("kept")
    profile = _profile(tmp_path, test_guest_9p, "shared", [{"source": str(folder), "tag": "src"},
                                                         {"source": str(readonly), "tag": "ro", "readonly": True}])
    assert api.up(str(profile))["ready"] is True

    # Host -> guest, byte-exact; the names as they are on the host.
    assert _in_guest("shared", "sha256sum '/mnt/src/from host.bin'").stdout.split()[0] == \
        hashlib.sha256(blob).hexdigest()
    # printf, not ls: busybox ls shows non-ASCII bytes as '?'
    assert set(NAMES) <= set(_in_guest("shared", "cd /mnt/src && printf '%s\\n' *").stdout.splitlines())
    assert _in_guest("shared", "cat '/mnt/src/ünïcødé ☃.txt'").stdout == "ünïcødé ☃.txt"
    # security_model=none: the guest sees the host's owners and modes.
    assert _in_guest("shared", "stat -c '%a %u' /mnt/src/mode.txt").stdout.split() == \
        ["640", str(os.getuid())]

    # Guest -> host, byte-exact; what the guest creates belongs to the user running QEMU.
    written = _in_guest("shared", "head -c 67108864 /dev/urandom > /mnt/src/from-guest.bin && sync && "
                                  "sha256sum /mnt/src/from-guest.bin").stdout.split()[0]
    created = folder / "from-guest.bin"
    assert hashlib.sha256(created.read_bytes()).hexdigest() == written
    assert created.stat().st_uid == os.getuid()
    _in_guest("shared", "echo guest > '/mnt/src/com,ma from guest.txt'")
    assert (folder / "com,ma from guest.txt").read_text() == "guest\n"

    # Read-only: the guest's writes fail with EROFS; the host still writes, and the guest sees it.
    refused = _in_guest("shared", "echo no > /mnt/ro/new.txt", ok=False)
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr
    assert not (readonly / "new.txt").exists()
    (readonly / "later.txt").write_text("later")
    assert _in_guest("shared", "cat /mnt/ro/kept.txt /mnt/ro/later.txt").stdout == "keptlater"

    # A mounted share blocks QEMU's save: refused up front, naming the share; the VM runs on.
    for command in (("save", "shared"), ("snapshot", "save", "shared", "snap")):
        done = cli(*command)
        assert done.returncode == 2 and "shares[0] (tag src)" in done.stderr, done.stderr
    assert api.status("shared")["state"] == "running"
    api.down("shared", force=True)


@pytest.mark.parametrize(("source", "expected"), [
    ("missing", "does not exist"),
    ("file.txt", "is not a folder"),
    ("a,b", "has a comma in its path"),
])
def test_a_source_that_cannot_be_shared_is_refused(home: Path, test_guest_9p: Any, tmp_path: Path,
                                                   source: str, expected: str) -> None:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "a,b").mkdir()
    path = tmp_path / source
    profile = _profile(tmp_path, test_guest_9p, "noshare", [{"source": str(path), "tag": "src"}])
    done = cli("up", str(profile))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"shares[0].source: {path} {expected}" in done.stderr
    assert not (home / "noshare").exists()
