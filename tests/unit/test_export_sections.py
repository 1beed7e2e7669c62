"""`export libvirt` is a table of named sections (convert/libvirt_export.SECTIONS), tested without libvirt:
each section makes its own elements, in libvirt's order, and only its own."""

from __future__ import annotations

from xml.etree.ElementTree import Element, fromstring

import pytest

from qemuvm.convert import libvirt_export
from qemuvm.profile.model import Profile

# A profile every section has something to say about (a UUID, a balloon and rng through extra_args too).
PROFILE = Profile.model_validate({
    "name": "full", "description": "all sections",
    "machine": {"memory": 512, "cpus": 2, "accel": "tcg", "tpm": True},
    "disks": [{"file": "/images/root.qcow2"}], "network": [{"mode": "user"}],
    "shares": [{"source": "/srv", "tag": "srv", "type": "9p"}], "guest_agent": True,
    "display": {"vga": "std", "vnc": {"listen": "127.0.0.1", "port": 5901}},
    "qemu": {"extra_args": ["-uuid", "1b4e28ba-2fa1-11d2-883f-0016d3cca427", "-device", "virtio-rng-pci",
                            "-device", "virtio-balloon-pci", "-no-hpet"]}})
# What each section adds (a tag path under <domain>), so that a section left out is missed.
MADE_BY = {
    "name, uuid, description": ["name", "uuid", "description"],
    "memory, hugepages, vcpus": ["memory", "vcpu"],
    "os, firmware, boot order": ["os/type"],
    "features, cpu": ["features/acpi", "cpu"],
    "on_poweroff, on_reboot, on_crash": ["on_poweroff", "on_reboot", "on_crash"],
    "emulator, disks, usb controller": ["devices/emulator", "devices/disk", "devices/controller"],
    "interfaces": ["devices/interface"],
    "filesystems": ["devices/filesystem"],
    "serial, console, agent channel": ["devices/serial", "devices/console", "devices/channel"],
    "graphics, video": ["devices/graphics", "devices/video"],
    "input, memballoon, rng, tpm": ["devices/memballoon", "devices/rng", "devices/tpm"],
    "qemu:commandline, fields libvirt cannot say": [f"{{{libvirt_export.QEMU_NS}}}commandline"],
}


def _built(skip: str | None = None) -> Element:
    d = libvirt_export._Domain(PROFILE, None, Element("domain"), list(PROFILE.qemu.extra_args))
    for name, build in libvirt_export.SECTIONS:
        if name != skip:
            build(d)
    return d.domain


def test_every_section_is_named_and_the_table_is_whole() -> None:
    assert [name for name, _ in libvirt_export.SECTIONS] == list(MADE_BY)
    domain = fromstring(libvirt_export.export_domain(PROFILE).xml)
    assert all(domain.find(path) is not None for paths in MADE_BY.values() for path in paths)
    # The extra args with a libvirt element were taken by their sections: only -no-hpet stays verbatim.
    assert [arg.get("value") for arg in domain.iter(f"{{{libvirt_export.QEMU_NS}}}arg")] == ["-no-hpet"]


@pytest.mark.parametrize("section", list(MADE_BY))
def test_a_section_makes_its_elements_and_only_it(section: str) -> None:
    without = _built(skip=section)
    assert [path for path in MADE_BY[section] if without.find(path) is not None] == []
    assert [path for name, paths in MADE_BY.items() if name != section for path in paths
            if without.find(path) is None] == []
