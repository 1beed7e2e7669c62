"""`qemuvm import libvirt` / `export libvirt`: hostile XML, the mapping of what the corpus lacks, the files it
writes. Hostile cases run the real CLI under a memory limit (test_hostile_input's harness): exit 2 and one
sentence, never a traceback, nothing written."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from hostile import qemuvm, refused

from qemuvm.convert import libvirt_export, libvirt_import
from qemuvm.errors import UsageError
from qemuvm.profile.load import load_text
from qemuvm.profile.validate import validate

HEAD = "<domain type='kvm'><name>web1</name><memory unit='MiB'>1024</memory><vcpu>2</vcpu>"
TYPE = "<type arch='x86_64' machine='q35'>hvm</type>"


def domain(body: str = "", os_body: str = "", head: str = HEAD) -> bytes:
    return f"{head}<os>{TYPE}{os_body}</os>{body}</domain>".encode()


def devices(xml: str) -> bytes:
    return domain(f"<devices>{xml}</devices>")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.mark.parametrize(("xml", "needle"), [
    ("<?xml version='1.0'?><!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;'>"
     "<!ENTITY c '&b;&b;&b;&b;&b;&b;&b;&b;&b;'>]><domain type='kvm'><name>&c;</name></domain>", "refused"),
    ("<!DOCTYPE d [<!ENTITY x SYSTEM 'file:///etc/passwd'>]><domain type='kvm'><name>&x;</name></domain>",
     "refused"),
    ("<domain type='kvm'><name>x</name>", "not well-formed XML"),
    ("not xml at all", ":1:0: not well-formed XML"),
    ("<network><name>default</name></network>", "the root element is <network>, not <domain>"),
    ("<domain type='xen'><name>x</name></domain>", "domain type 'xen' is not a QEMU domain"),
    ("<domain type='kvm'><memory>1</memory></domain>", "the domain has no <name>"),
    ("<domain type='kvm'><name>x</name><memory unit='furlong'>1</memory></domain>", "is not a size libvirt"),
    ("<domain type='kvm'><name>x</name><os><type arch='sparc'>hvm</type></os></domain>",
     "not an architecture qemuvm runs"),
    ("<domain type='kvm'><name>x</name><os><type>exe</type></os></domain>", "is not a full virtual machine"),
    ("<domain type='kvm'><name>x</name>" + "<a>" * 70 + "</a>" * 70 + "</domain>", "elements nested 65 deep"),
    ("<domain type='kvm'><name>x</name><devices>" + "<sound/>" * 10_001 + "</devices></domain>",
     "more than 10000 elements"),
], ids=["entity-bomb", "external-entity", "truncated", "not-xml", "not-a-domain", "xen", "no-name",
        "bad-unit", "bad-arch", "not-hvm", "deep", "wide"])
def test_hostile_domain_xml_is_one_sentence(xml: str, needle: str, tmp_path: Path, home: Path) -> None:
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    out = tmp_path / "out.yaml"
    refused(qemuvm("import", "libvirt", path, "-o", out, home=home), needle)
    assert not out.exists() and not home.exists()


@pytest.mark.parametrize("path", ["/dev/zero", "/nonexistent.xml"])
def test_special_or_missing_files_are_refused(path: str, home: Path) -> None:
    refused(qemuvm("import", "libvirt", path, home=home), "the domain XML")


def test_a_huge_file_is_refused_before_parsing(tmp_path: Path, home: Path) -> None:
    path = tmp_path / "huge.xml"
    path.write_bytes(b"<domain>" + b" " * (5 << 20) + b"</domain>")
    refused(qemuvm("import", "libvirt", path, home=home), "more than the 4 MiB allowed")


def test_strict_refuses_what_cannot_come_over(tmp_path: Path, home: Path) -> None:
    path = tmp_path / "d.xml"
    path.write_bytes(devices("<sound model='ich9'/>"))
    done = qemuvm("import", "libvirt", "--strict", path, home=home)
    refused(done, "not carried over: /domain/devices/sound: no sound device", "--strict")
    assert done.stdout == ""
    fine = qemuvm("import", "libvirt", path, home=home)
    assert fine.returncode == 0 and "#   /domain/devices/sound: no sound device" in fine.stdout
    assert "not carried over: /domain/devices/sound" in fine.stderr


def test_vnc_password_goes_to_a_private_file_next_to_the_profile(tmp_path: Path, home: Path) -> None:
    path = tmp_path / "d.xml"
    path.write_bytes(devices("<graphics type='vnc' port='5905' autoport='no' listen='0.0.0.0' passwd='s3cret'/>"))
    refused(qemuvm("import", "libvirt", path, home=home), "give -o PROFILE.yaml")
    out = tmp_path / "vm.yaml"
    done = qemuvm("import", "libvirt", path, "-o", out, home=home)
    assert done.returncode == 0, done.stderr
    secret = tmp_path / "vm.vnc-password"
    assert secret.read_text() == "s3cret\n" and stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert "s3cret" not in out.read_text()
    profile = validate(load_text(out.read_text(), str(out)))
    assert profile.display and profile.display.vnc
    assert (profile.display.vnc.listen, profile.display.vnc.port) == ("0.0.0.0", 5905)
    assert profile.display.vnc.password_file == "vm.vnc-password" or \
        Path(profile.display.vnc.password_file).name == "vm.vnc-password"
    refused(qemuvm("import", "libvirt", path, "-o", out, home=home), "the file exists")


def test_open_vnc_without_a_password_stays_on_loopback() -> None:
    out = libvirt_import.import_domain(devices("<graphics type='vnc' listen='192.0.2.1'/>"))
    assert "listen" not in out.profile["display"]["vnc"]
    assert any("without a password" in note.why for note in out.unsupported)


def test_kernel_boot_bridge_tap_network_and_restart() -> None:
    xml = domain(os_body="<kernel>/boot/vmlinuz</kernel><initrd>/boot/initrd</initrd>"
                 "<cmdline>console=ttyS0</cmdline>",
                 body="<on_poweroff>restart</on_poweroff><on_crash>restart</on_crash><devices>"
                 "<interface type='bridge'><source bridge='br0'/><model type='e1000'/></interface>"
                 "<interface type='ethernet'><target dev='tap7' managed='no'/></interface>"
                 "<interface type='network'><source network='default'/><mac address='52:54:00:12:34:56'/>"
                 "</interface><interface type='network'><source network='lab'/></interface></devices>")
    out = libvirt_import.import_domain(xml, networks=frozenset({"default"}))
    profile = out.profile
    assert profile["boot"] == {"kernel": "/boot/vmlinuz", "initrd": "/boot/initrd", "cmdline": "console=ttyS0"}
    assert profile["network"] == [
        {"mode": "bridge", "bridge": "br0", "model": "e1000"}, {"mode": "tap", "ifname": "tap7"},
        {"mode": "bridge", "network": "default", "mac": "52:54:00:12:34:56"}, {"mode": "user"}]
    assert any("no qemuvm network 'lab'" in note.why for note in out.unsupported)
    assert profile["restart"] == {"policy": "always"}
    assert profile["machine"]["accel"] == "kvm" and profile["machine"]["memory"] == "1G"
    validate(load_text(libvirt_import.render_profile(out, "d.xml"), "d.yaml"))


def test_per_device_boot_order_by_kind() -> None:
    disk = "<disk type='file' device='{0}'><source file='/i/{1}'/><target dev='{1}'/><boot order='{2}'/></disk>"
    exact = libvirt_import.import_domain(devices(disk.format("cdrom", "sda", 1) + disk.format("disk", "vda", 2)))
    assert exact.profile["boot"]["order"] == ["cdrom", "disk"] and not exact.unsupported
    mixed = libvirt_import.import_domain(devices(
        disk.format("disk", "vda", 1) + disk.format("cdrom", "sda", 2) + disk.format("disk", "vdb", 3)))
    assert mixed.profile["boot"]["order"] == ["disk", "cdrom"]
    assert any("not each device" in note.why for note in mixed.unsupported)


def test_unknown_attributes_and_elements_are_listed_never_dropped() -> None:
    out = libvirt_import.import_domain(devices(
        "<disk type='file' device='disk'><driver name='qemu' type='raw' io='native'/><source file='/i/a'/>"
        "<target dev='vda' bus='virtio'/><iotune><total_bytes_sec>1</total_bytes_sec></iotune></disk>"))
    paths = [note.path for note in out.unsupported]
    assert paths == ["/domain/devices/disk/driver@io=native", "/domain/devices/disk/iotune"]


def test_a_name_qemuvm_cannot_use_is_renamed_and_said() -> None:
    out = libvirt_import.import_domain(domain(head=HEAD.replace("web1", "my vm/1")))
    assert out.profile["name"] == "my-vm-1" and out.unsupported[0].path == "/domain/name"


def test_export_leaves_the_vnc_password_out_unless_asked() -> None:
    text = "name: v\ndisplay: {vnc: {listen: 0.0.0.0, password_file: pw}}\n"
    profile = validate(load_text(text, "v.yaml"))
    plain = libvirt_export.export_domain(profile)
    assert "passwd" not in plain.xml and any("password" in line for line in plain.not_expressed)
    assert "passwd=\"hunter2\"" in libvirt_export.export_domain(profile, "hunter2").xml


def test_export_refuses_what_is_neither_profile_nor_instance(home: Path) -> None:
    refused(qemuvm("export", "libvirt", "no-such-vm", home=home), "neither a profile file nor an instance")


def test_import_errors_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        libvirt_import.import_domain(b"<domain type='kvm'/>")
