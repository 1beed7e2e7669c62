"""prepare(): disks, overlays, the cloud-init seed, UEFI variables, huge pages (real qemu-img, no VM)."""

from __future__ import annotations

import email
import hashlib
import io
import os
import shutil
import stat
from pathlib import Path

import pycdlib
import pytest
import yaml

from qemuvm.errors import UsageError
from qemuvm.paths import InstancePaths
from qemuvm.profile.load import load_text
from qemuvm.profile.validate import validate
from qemuvm.qemu import img, memory
from qemuvm.qemu.facts import HostFacts
from qemuvm.runtime.cloudinit import write_iso
from qemuvm.runtime.prepare import prepare, remove_ephemeral

# These tests run the real qemu-img (Debian package qemu-utils; scripts/setup installs it).
pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img: apt-get install qemu-utils")


def _profile(text: str, folder: Path):
    cwd = os.getcwd()
    os.chdir(folder)  # relative paths in the profile resolve against the current folder for load_text
    try:
        return validate(load_text(text, "vm.yaml"))
    finally:
        os.chdir(cwd)


@pytest.fixture
def paths(short_tmp: Path) -> InstancePaths:
    root = short_tmp / "home" / "vm"
    root.mkdir(parents=True, mode=0o700)
    return InstancePaths(root)


def _iso_files(iso_path: Path) -> tuple[str, dict[str, bytes]]:
    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        files = {}
        for name in ("user-data", "meta-data", "network-config"):
            out = io.BytesIO()
            try:
                iso.get_file_from_iso_fp(out, joliet_path=f"/{name}")
            except pycdlib.pycdlibexception.PyCdlibInvalidInput:
                continue
            files[name] = out.getvalue()
            rr = io.BytesIO()
            iso.get_file_from_iso_fp(rr, rr_path=f"/{name}")
            assert rr.getvalue() == files[name]  # Rock Ridge names too (Linux mounts use them)
        return label, files
    finally:
        iso.close()


# -- disks ---------------------------------------------------------------------------------------


def test_size_creates_a_missing_disk_once(short_tmp: Path, paths: InstancePaths) -> None:
    profile = _profile("disks:\n  - {file: root.raw, size: 7G}\n  - {file: data.qcow2, size: 1G}\n", short_tmp)
    prepare(profile, paths, HostFacts())
    assert img.info(short_tmp / "root.raw").format == "raw"
    assert img.info(short_tmp / "root.raw").virtual_size == 7 << 30
    assert img.info(short_tmp / "data.qcow2").format == "qcow2"
    # An existing file is never resized or overwritten, even when the profile's size changed.
    (short_tmp / "root.raw").write_bytes(b"installed system")
    bigger = _profile("disks:\n  - {file: root.raw, size: 9G}\n", short_tmp)
    prepare(bigger, paths, HostFacts())
    assert (short_tmp / "root.raw").read_bytes() == b"installed system"
    assert not [p for p in short_tmp.iterdir() if "partial" in p.name]


def test_missing_disk_without_size_is_a_usage_error(short_tmp: Path, paths: InstancePaths) -> None:
    profile = _profile("disks:\n  - {file: y.qcow2}\n", short_tmp)
    with pytest.raises(UsageError) as caught:
        prepare(profile, paths, HostFacts())
    assert str(caught.value) == f"disks[0].file: {short_tmp / 'y.qcow2'} does not exist (set size to create it)"


def test_missing_cdrom_is_a_usage_error(short_tmp: Path, paths: InstancePaths) -> None:
    profile = _profile("disks:\n  - {file: install.iso, media: cdrom, interface: sata}\n", short_tmp)
    with pytest.raises(UsageError, match=r"disks\[0\]\.file: .*install.iso does not exist"):
        prepare(profile, paths, HostFacts())


def test_existing_cdrom_is_left_alone(short_tmp: Path, paths: InstancePaths) -> None:
    (short_tmp / "install.iso").write_bytes(b"iso")
    profile = _profile("disks:\n  - {file: install.iso, media: cdrom, interface: sata}\n", short_tmp)
    prepare(profile, paths, HostFacts())
    assert (short_tmp / "install.iso").read_bytes() == b"iso"


def test_failed_create_leaves_nothing(short_tmp: Path, paths: InstancePaths, monkeypatch) -> None:
    profile = _profile("disks:\n  - {file: root.qcow2, size: 1G}\n", short_tmp)

    def broken(file, *args, **kwargs):
        Path(file).write_bytes(b"half")
        raise img.OperationError("qemu-img create failed: disk full")

    monkeypatch.setattr(img, "create", broken)
    with pytest.raises(img.OperationError):
        prepare(profile, paths, HostFacts())
    assert sorted(p.name for p in short_tmp.iterdir()) == ["home"]


def test_ephemeral_overlay_is_kept_and_the_base_untouched(short_tmp: Path, paths: InstancePaths) -> None:
    base = short_tmp / "base.qcow2"
    img.create(base, "64M", "qcow2")
    digest = hashlib.sha256(base.read_bytes()).hexdigest()
    profile = _profile("disks:\n  - {file: base.qcow2, ephemeral: true}\n", short_tmp)
    prepare(profile, paths, HostFacts())
    overlay = paths.overlay(0)
    info = img.info(overlay)
    assert (info.format, info.backing_filename, info.backing_format) == ("qcow2", str(base), "qcow2")
    assert stat.S_IMODE(overlay.stat().st_mode) == 0o600
    # A restart keeps the overlay (the instance's writes) as it is.
    overlay_inode = overlay.stat().st_ino
    prepare(profile, paths, HostFacts())
    assert overlay.stat().st_ino == overlay_inode
    assert hashlib.sha256(base.read_bytes()).hexdigest() == digest
    assert remove_ephemeral(paths) == [overlay]
    assert not overlay.exists() and base.exists()


def test_ephemeral_base_must_exist(short_tmp: Path, paths: InstancePaths) -> None:
    profile = _profile("disks:\n  - {file: gone.qcow2, ephemeral: true}\n", short_tmp)
    with pytest.raises(UsageError, match=r"disks\[0\]\.file: .*gone.qcow2 does not exist"):
        prepare(profile, paths, HostFacts())


# -- UEFI and huge pages -------------------------------------------------------------------------


def test_uefi_vars_are_copied_once(short_tmp: Path, paths: InstancePaths) -> None:
    template = short_tmp / "VARS.fd"
    template.write_bytes(b"\x01" * 4096)
    host = HostFacts(ovmf_vars=str(template))
    profile = _profile("machine: {firmware: uefi}\n", short_tmp)
    prepare(profile, paths, host)
    assert paths.uefi_vars.read_bytes() == template.read_bytes()
    assert stat.S_IMODE(paths.uefi_vars.stat().st_mode) == 0o600
    paths.uefi_vars.write_bytes(b"\x02" * 4096)  # the guest saved a boot entry
    prepare(profile, paths, host)
    assert paths.uefi_vars.read_bytes() == b"\x02" * 4096


def test_uefi_without_ovmf(short_tmp: Path, paths: InstancePaths) -> None:
    profile = _profile("machine: {firmware: uefi}\n", short_tmp)
    with pytest.raises(UsageError, match="apt-get install ovmf"):
        prepare(profile, paths, HostFacts(ovmf_vars=str(short_tmp / "none.fd")))


def _meminfo(folder: Path, total: int, free: int) -> Path:
    path = folder / "meminfo"
    path.write_text(f"MemTotal:       16000000 kB\nHugePages_Total:    {total}\nHugePages_Free:     {free}\n"
                    "Hugepagesize:       2048 kB\n")
    return path


def test_hugepages_none_free(short_tmp: Path, paths: InstancePaths, monkeypatch) -> None:
    monkeypatch.setattr(memory, "PROC_MEMINFO", _meminfo(short_tmp, 0, 0))
    profile = _profile("machine: {hugepages: true, memory: 1G}\n", short_tmp)
    with pytest.raises(UsageError) as caught:
        prepare(profile, paths, HostFacts())
    assert str(caught.value) == ("machine.hugepages: no free huge pages (HugePages_Free is 0); reserve some with: "
                                 "sysctl vm.nr_hugepages=512")


def test_hugepages_too_few_and_enough(short_tmp: Path) -> None:
    with pytest.raises(UsageError, match=r"needs 512 huge pages .* only 100 are free"):
        memory.check_hugepages(1024, _meminfo(short_tmp, 100, 100))
    memory.check_hugepages(1024, _meminfo(short_tmp, 600, 512))


def test_memory_tuning_reads_the_host_files(short_tmp: Path) -> None:
    ksm = short_tmp / "ksm"
    ksm.mkdir()
    (ksm / "run").write_text("1\n")
    (ksm / "pages_sharing").write_text("1234\n")
    thp = short_tmp / "thp"
    thp.write_text("always [madvise] never\n")
    report = memory.memory_tuning(_meminfo(short_tmp, 8, 4), ksm, thp)
    assert report == {"ksm": {"available": True, "run": 1, "pages_sharing": 1234, "pages_shared": None},
                      "transparent_hugepage": "madvise",
                      "hugepages": {"total": 8, "free": 4, "size_kib": 2048}}
    missing = memory.memory_tuning(_meminfo(short_tmp, 0, 0), short_tmp / "no-ksm", short_tmp / "no-thp")
    assert missing["ksm"]["available"] is False and missing["transparent_hugepage"] is None


# -- cloud-init ----------------------------------------------------------------------------------


def test_seed_inline_user_data_and_generated_key(short_tmp: Path, paths: InstancePaths) -> None:
    profile = _profile(
        "name: web1\ncloud_init:\n  user_data: {runcmd: [[touch, /marker]], ssh_authorized_keys: [ssh-rsa AAA x]}\n"
        "  network_config: {version: 2, ethernets: {eth0: {dhcp4: true}}}\n", short_tmp)
    prepare(profile, paths, HostFacts())
    key, pub = paths.ssh_key, Path(f"{paths.ssh_key}.pub")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and pub.read_text().startswith("ssh-ed25519 ")
    label, files = _iso_files(paths.seed_iso)
    assert label == "cidata"
    assert stat.S_IMODE(paths.seed_iso.stat().st_mode) == 0o600
    user = files["user-data"].decode()
    assert user.startswith("#cloud-config\n")
    config = yaml.safe_load(user)
    assert config["runcmd"] == [["touch", "/marker"]]
    assert config["ssh_authorized_keys"] == ["ssh-rsa AAA x", pub.read_text().strip()]
    assert config["disable_root"] is False  # ssh.user defaults to root
    assert yaml.safe_load(files["meta-data"]) == {"instance-id": "web1", "local-hostname": "web1"}
    assert yaml.safe_load(files["network-config"])["ethernets"]["eth0"] == {"dhcp4": True}
    # A restart keeps the key pair and rebuilds the same seed.
    first_key = key.read_bytes()
    prepare(profile, paths, HostFacts())
    assert key.read_bytes() == first_key
    assert _iso_files(paths.seed_iso)[1] == files


def test_seed_with_an_identity_injects_nothing(short_tmp: Path, paths: InstancePaths) -> None:
    profile = _profile("cloud_init:\n  user_data: {hostname: h}\n  meta_data: {instance-id: i-1}\n"
                       "ssh: {identity: ./mykey}\n", short_tmp)
    prepare(profile, paths, HostFacts())
    files = _iso_files(paths.seed_iso)[1]
    assert yaml.safe_load(files["user-data"]) == {"hostname": "h"}
    assert yaml.safe_load(files["meta-data"]) == {"instance-id": "i-1", "local-hostname": "vm"}
    assert "network-config" not in files
    assert not paths.ssh_key.exists()


def test_seed_cloud_config_file_is_merged(short_tmp: Path, paths: InstancePaths) -> None:
    (short_tmp / "user-data").write_text("#cloud-config\nhostname: filehost\n")
    profile = _profile("cloud_init: {user_data: ./user-data}\nssh: {user: debian}\n", short_tmp)
    prepare(profile, paths, HostFacts())
    config = yaml.safe_load(_iso_files(paths.seed_iso)[1]["user-data"])
    assert config["hostname"] == "filehost" and len(config["ssh_authorized_keys"]) == 1
    assert "disable_root" not in config


def test_seed_shell_script_becomes_multipart(short_tmp: Path, paths: InstancePaths) -> None:
    script = "#!/bin/sh\necho hello > /hello\n"
    (short_tmp / "user-data").write_text(script)
    profile = _profile("cloud_init: {user_data: ./user-data}\n", short_tmp)
    prepare(profile, paths, HostFacts())
    message = email.message_from_bytes(_iso_files(paths.seed_iso)[1]["user-data"])
    parts = {part.get_content_type(): part.get_payload(decode=True).decode() for part in message.walk()
             if not part.is_multipart()}
    assert parts["text/x-shellscript"] == script
    assert yaml.safe_load(parts["text/cloud-config"])["ssh_authorized_keys"] == [
        Path(f"{paths.ssh_key}.pub").read_text().strip()]


def test_seed_missing_user_data_file(short_tmp: Path, paths: InstancePaths) -> None:
    profile = _profile("cloud_init: {user_data: ./nope}\n", short_tmp)
    with pytest.raises(UsageError, match=r"cloud_init.user_data: .*nope does not exist"):
        prepare(profile, paths, HostFacts())
    assert not paths.seed_iso.exists()


def test_write_iso_is_atomic(short_tmp: Path) -> None:
    target = short_tmp / "seed.iso"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_iso({"user-data": "not bytes"}, target)  # type: ignore[dict-item]
    assert target.read_bytes() == b"old"
    assert [p.name for p in short_tmp.iterdir()] == ["seed.iso"]


def test_a_created_disk_goes_through_a_private_folder_and_leaves_nothing(tmp_path) -> None:
    from qemuvm.runtime import prepare

    seen = []

    def create(path):
        seen.append((path, path.parent.stat().st_mode & 0o777))
        path.write_bytes(b"disk")

    target = tmp_path / "disk.raw"
    prepare._create_atomically(target, create)
    (made, mode), = seen
    assert target.read_bytes() == b"disk" and mode == 0o700 and made.parent.parent == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.raw"]
