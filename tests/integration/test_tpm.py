"""machine.tpm and machine.secure_boot on the test guest (profiles/secure-boot-tpm.yaml): /dev/tpm0 is a TPM 2.0;
what the guest writes into the TPM's NV memory survives down/start and save/start; swtpm is a supervised
helper (named in status when it dies, never left behind); Secure Boot is on, and through Debian's own signed chain
(shim, grub) a kernel whose signature is broken is refused by the firmware, and `up` says so."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml
from helpers import REPO, cli, guest_overrides, poll

from qemuvm.testing import VM, vm

pytestmark = pytest.mark.integration

SB_TPM = REPO / "profiles" / "secure-boot-tpm.yaml"

# Raw TPM 2.0 commands (TPM 2.0 Library, Part 3) that the busybox guest writes to /dev/tpm0: an NV index of the
# owner's, written and read with the empty owner password (a password session, TPM_RS_PW).
NV_INDEX, OWNER, TPM_RS_PW = 0x01500016, 0x40000001, 0x40000009
NV_OWNERWRITE, NV_OWNERREAD, NV_NO_DA = 1 << 1, 1 << 17, 1 << 25


def _command(code: int, handles: list[int], params: bytes) -> bytes:
    auth = struct.pack(">IHBH", TPM_RS_PW, 0, 0, 0)  # session handle, no nonce, no attributes, empty password
    body = b"".join(struct.pack(">I", h) for h in handles) + struct.pack(">I", len(auth)) + auth + params
    return struct.pack(">HII", 0x8002, 10 + len(body), code) + body  # TPM_ST_SESSIONS, size, command code


def nv_define(size: int) -> bytes:
    public = struct.pack(">IHIHH", NV_INDEX, 0x000B, NV_OWNERWRITE | NV_OWNERREAD | NV_NO_DA, 0, size)  # sha256
    return _command(0x12A, [OWNER], struct.pack(">HH", 0, len(public)) + public)  # TPM2_NV_DefineSpace


def nv_write(data: bytes) -> bytes:
    return _command(0x137, [OWNER, NV_INDEX], struct.pack(">H", len(data)) + data + struct.pack(">H", 0))


def nv_read(size: int) -> bytes:
    return _command(0x14E, [OWNER, NV_INDEX], struct.pack(">HH", size, 0))


def tpm(guest: VM, command: bytes) -> bytes:
    """Send one command to the guest's /dev/tpm0 (one write, one read on the same descriptor); the response, whose
    return code must be TPM_RC_SUCCESS."""
    octal = "".join(f"\\{byte:03o}" for byte in command)
    script = f"exec 3<>/dev/tpm0; printf '{octal}' >&3; dd bs=4096 count=1 <&3 2>/dev/null | od -An -tx1 -v"
    done = cli("ssh", guest.name, "--", script)
    assert done.returncode == 0, done.stderr
    response = bytes.fromhex("".join(done.stdout.split()))
    (code,) = struct.unpack(">I", response[6:10])
    assert code == 0, f"TPM response code {code:#x}"
    return response


def read_value(guest: VM, size: int) -> bytes:
    response = tpm(guest, nv_read(size))
    (length,) = struct.unpack(">H", response[14:16])  # after the header and the parameter size
    return response[16:16 + length]


def swtpm_pid(name: str) -> int | None:
    helpers = json.loads(cli("status", name, "--json").stdout)["helpers"]
    return next((h["pid"] for h in helpers if h["name"] == "swtpm" and h.get("running")), None)


@pytest.fixture
def guest(test_guest, qemuvm_home: Path) -> Iterator[VM]:
    with vm(SB_TPM, **guest_overrides(test_guest)) as running:
        yield running


def test_tpm_contents_survive_down_start_and_save_start(guest: VM, qemuvm_home: Path) -> None:
    serial = guest.serial_log
    assert "QEMUVM_GUEST_SECUREBOOT=1" in serial and "QEMUVM_GUEST_TPM=2" in serial
    state = qemuvm_home / guest.name / "tpm"
    assert oct(state.stat().st_mode & 0o777) == "0o700"
    assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in state.iterdir() if not f.name.startswith("."))
    tpm(guest, nv_define(8))
    tpm(guest, nv_write(b"qemuvm42"))
    first = swtpm_pid(guest.name)
    assert first is not None

    assert cli("down", guest.name, timeout=200).returncode == 0
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
    assert cli("start", guest.name, "--wait", timeout=300).returncode == 0
    assert read_value(guest, 8) == b"qemuvm42"  # the TPM's NV memory lasted: a new swtpm, the same state
    assert swtpm_pid(guest.name) not in (None, first)

    tpm(guest, nv_write(b"saved-42"))
    assert cli("save", guest.name, timeout=300).returncode == 0
    assert swtpm_pid(guest.name) is None  # nothing runs for a saved VM
    assert cli("start", guest.name, "--wait", timeout=300).returncode == 0
    assert read_value(guest, 8) == b"saved-42"


def test_a_dead_swtpm_is_named_and_nothing_is_left(guest: VM) -> None:
    pid = swtpm_pid(guest.name)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    def named() -> dict | None:
        status = json.loads(cli("status", guest.name, "--json").stdout)
        dead = [h for h in status["helpers"] if h["name"] == "swtpm" and not h.get("running")]
        return status if dead else None

    status = poll("status to name the dead swtpm", named)
    entry = next(h for h in status["helpers"] if h["name"] == "swtpm")
    assert "SIGKILL" in json.dumps(entry) and "swtpm" in json.dumps(status.get("problems")), status
    assert cli("rm", "--force", guest.name).returncode == 0
    assert not [p for p in psutil.process_iter(["name", "cmdline"]) if p.info["name"] == "swtpm"
                and str(guest.name) in " ".join(p.info["cmdline"] or [])]


@pytest.fixture(scope="module")
def signed_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Debian's Secure Boot chain from its packages: shim (signed by Microsoft) and grub (signed by Debian)."""
    folder = tmp_path_factory.mktemp("chain")
    for package in ("shim-signed", "grub-efi-amd64-signed"):
        done = subprocess.run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package], cwd=folder,
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot download {package} from the Debian registry: {done.stderr.strip()[-200:]}")
    for deb in folder.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(folder / "root")], check=True)
    return folder / "root"


def esp(folder: Path, chain: Path, kernel: bytes, guest) -> Path:
    """A folder QEMU shows as a FAT disk (vvfat): shim as the removable-media boot loader, grub beside it, and a
    grub.cfg that boots the test guest (commands, not a menu entry: a kernel grub refuses leaves it at its prompt,
    its error the last thing on the console, rather than in a menu that boots the entry again and again)."""
    boot = folder / "EFI" / "BOOT"
    boot.mkdir(parents=True)
    (boot / "BOOTX64.EFI").write_bytes((chain / "usr/lib/shim/shimx64.efi.signed").read_bytes())
    (boot / "grubx64.efi").write_bytes((chain / "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed").read_bytes())
    (folder / "EFI" / "debian").mkdir()
    config = "linux /vmlinuz console=ttyS0\ninitrd /initrd.gz\nboot\n"
    (folder / "EFI" / "debian" / "grub.cfg").write_text(config)
    (folder / "vmlinuz").write_bytes(kernel)
    (folder / "initrd.gz").write_bytes(guest.initrd.read_bytes())
    return folder


def chain_profile(folder: Path, esp_dir: Path) -> Path:
    profile = folder / "chain.yaml"
    profile.write_text(yaml.safe_dump({
        "name": "chain", "machine": {"accel": "tcg", "firmware": "uefi", "secure_boot": True, "memory": "512M"},
        "network": [], "ready": {"serial": "QEMUVM_GUEST_READY", "timeout": "240s"},
        "qemu": {"extra_args": ["-blockdev", f"driver=vvfat,node-name=esp,dir={esp_dir},fat-type=16,read-only=on",
                                "-device", "virtio-blk-pci,drive=esp,bootindex=1"]}}))
    return profile


def test_the_signed_chain_boots_and_a_broken_signature_is_refused(test_guest, signed_chain: Path, qemuvm_home: Path,
                                                                   short_tmp: Path) -> None:
    kernel = test_guest.vmlinuz.read_bytes()
    good = esp(short_tmp / "good", signed_chain, kernel, test_guest)
    up = cli("up", str(chain_profile(short_tmp / "good", good)), timeout=400)
    assert up.returncode == 0, up.stderr
    log = (qemuvm_home / "chain" / "serial.log").read_text(errors="replace")
    assert "EFI stub: UEFI Secure Boot is enabled" in log and "QEMUVM_GUEST_SECUREBOOT=1" in log
    assert cli("rm", "--force", "chain").returncode == 0

    broken = bytearray(kernel)
    broken[-100] ^= 0xFF  # inside the signature at the end of the PE image
    bad = esp(short_tmp / "bad", signed_chain, bytes(broken), test_guest)
    # Not `up --wait` with a ready timeout to wait out: wait for grub's verdict, then for ready, which fails at
    # once and quotes the serial log as up's wait does (one wait, shared by up, smoke and `qemuvm wait`).
    assert cli("up", str(chain_profile(short_tmp / "bad", bad)), "--no-wait").returncode == 0
    verdict = cli("wait", "chain", "--serial", "bad shim signature|QEMUVM_GUEST_READY", "--timeout", "300s")
    assert verdict.returncode == 0, verdict.stderr
    refused = cli("wait", "chain", "--ready", "--timeout", "1s")
    assert refused.returncode != 0
    assert "bad shim signature" in refused.stderr, refused.stderr  # the failure quotes the serial log
    assert "QEMUVM_GUEST_READY" not in (qemuvm_home / "chain" / "serial.log").read_text(errors="replace")
    assert cli("rm", "--force", "chain").returncode == 0


def test_warm_clones_each_get_a_copy_of_the_templates_tpm(test_guest, qemuvm_home: Path) -> None:
    """Both clones start from the template's TPM state, each on a copy of its own: an NV index one clone defines
    does not exist in the other (defining it there succeeds too)."""
    overrides = guest_overrides(test_guest)
    with vm(SB_TPM, warm=True, **overrides) as first, vm(SB_TPM, warm=True, **overrides) as second:
        assert "QEMUVM_GUEST_TPM=2" in second.serial_log
        tpm(first, nv_define(8))
        tpm(first, nv_write(b"clone-1!"))
        tpm(second, nv_define(8))  # not defined in this clone's TPM: its state is its own copy
        tpm(second, nv_write(b"clone-2!"))
        assert (read_value(first, 8), read_value(second, 8)) == (b"clone-1!", b"clone-2!")
    templates = json.loads(cli("template", "ls", "--json").stdout)
    assert len(templates) == 1 and templates[0]["hits"] == 2
    assert cli("template", "rm", templates[0]["fingerprint"]).returncode == 0
