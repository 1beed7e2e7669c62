"""A qemuvm profile -> libvirt domain XML (`qemuvm export libvirt`, the way back; virsh dumpxml's counterpart).

Pure: a validated Profile in, the XML text and the list of profile fields libvirt has no place for out.
What qemuvm can only say through qemu.extra_args goes back to its libvirt element where there is one (the
UUID, virtio-rng, the balloon, a USB tablet) and to <qemu:commandline> otherwise, so import(export(p))
gives back every field both formats express (tests/unit/test_libvirt_roundtrip.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from xml.etree.ElementTree import Element, SubElement, indent, register_namespace, tostring

from qemuvm.profile.model import Disk, Nic, Profile

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
_BUS_PREFIX = {"virtio": "vd", "scsi": "sd", "sata": "sd", "ide": "hd", "nvme": "sd"}
_BOOT = {"disk": "hd", "cdrom": "cdrom", "network": "network"}
_VIDEO = {"std": "vga", "virtio": "virtio", "none": "none"}
_EXTRA = {("-device", "virtio-rng-pci"): "rng", ("-device", "virtio-balloon-pci"): "balloon"}


@dataclass
class Exported:
    xml: str
    not_expressed: list[str] = field(default_factory=list)  # "field: why"


@dataclass
class _Domain:
    """What the sections below share while they build one domain."""

    profile: Profile
    vnc_password: str | None
    domain: Element
    extra: list[str]  # qemu.extra_args not yet given their libvirt element: each section takes its own
    lost: list[str] = field(default_factory=list)

    @property
    def kvm(self) -> bool:
        return self.profile.machine.accel != "tcg"

    @property
    def devices(self) -> Element:
        found = self.domain.find("devices")
        return found if found is not None else SubElement(self.domain, "devices")


def _identity(d: _Domain) -> None:
    SubElement(d.domain, "name").text = d.profile.name
    uuid = _take(d.extra, "-uuid", 1)
    if uuid:
        SubElement(d.domain, "uuid").text = uuid[0]
    if d.profile.description:
        SubElement(d.domain, "description").text = d.profile.description


def _memory_and_vcpus(d: _Domain) -> None:
    machine = d.profile.machine
    SubElement(d.domain, "memory", {"unit": "MiB"}).text = str(machine.memory)
    backing = _memory_backing(d.profile)
    if backing is not None:
        d.domain.append(backing)
    SubElement(d.domain, "vcpu", {"placement": "static"}).text = str(machine.cpus)


def _features_and_cpu(d: _Domain) -> None:
    features = SubElement(d.domain, "features")
    SubElement(features, "acpi")
    if d.profile.machine.arch == "aarch64":
        SubElement(features, "gic", {"version": "3"})  # what compile gives virt (no APIC on Arm)
    else:
        SubElement(features, "apic")
    if d.profile.machine.secure_boot:
        SubElement(features, "smm", {"state": "on"})
    cpu = d.profile.machine.cpu or ("host" if d.kvm else "max")
    if cpu == "host":
        SubElement(d.domain, "cpu", {"mode": "host-passthrough"})
    elif cpu == "max":
        SubElement(d.domain, "cpu", {"mode": "maximum"})
    else:
        SubElement(SubElement(d.domain, "cpu", {"mode": "custom", "match": "exact"}), "model").text = cpu


def _lifecycle(d: _Domain) -> None:
    policy = d.profile.restart.policy
    SubElement(d.domain, "on_poweroff").text = "restart" if policy == "always" else "destroy"
    SubElement(d.domain, "on_reboot").text = "restart"
    SubElement(d.domain, "on_crash").text = "destroy" if policy == "never" else "restart"


def _emulator_and_disks(d: _Domain) -> None:
    binary = d.profile.qemu.binary
    SubElement(d.devices, "emulator").text = binary if os.path.isabs(binary) else f"/usr/bin/{binary}"
    counters: dict[str, int] = {}
    for index, disk in enumerate(d.profile.disks):
        d.devices.append(_disk(disk, index, counters, d.lost, d.profile.machine.arch))
    SubElement(d.devices, "controller", {"type": "usb", "model": "none"})  # qemuvm adds no USB by itself


def _interfaces(d: _Domain) -> None:
    for index, nic in enumerate(d.profile.network):
        element = _interface(nic, index, d.lost)
        if element is not None:
            d.devices.append(element)


def _filesystems(d: _Domain) -> None:
    for index, share in enumerate(d.profile.shares):
        fs = SubElement(d.devices, "filesystem", {"type": "mount", "accessmode":
                                                   "passthrough" if share.type == "virtiofs" else "squash"})
        SubElement(fs, "driver", {"type": "virtiofs" if share.type == "virtiofs" else "path"})
        if share.type == "virtiofs" and share.cache != "auto":
            SubElement(SubElement(fs, "binary"), "cache", {"mode": share.cache})
        SubElement(fs, "source", {"dir": share.source})
        SubElement(fs, "target", {"dir": share.tag})
        if share.readonly:
            SubElement(fs, "readonly")
        if share.type == "auto":
            d.lost.append(f"shares[{index}].type: auto becomes 9p (libvirt's virtiofs needs virtiofsd as root)")
        if share.mount:
            d.lost.append(f"shares[{index}].mount: libvirt mounts nothing in the guest")


def _consoles(d: _Domain) -> None:
    SubElement(SubElement(d.devices, "serial", {"type": "pty"}), "target", {"port": "0"})
    SubElement(SubElement(d.devices, "console", {"type": "pty"}), "target", {"type": "serial", "port": "0"})
    if d.profile.guest_agent:
        channel = SubElement(d.devices, "channel", {"type": "unix"})
        SubElement(channel, "target", {"type": "virtio", "name": "org.qemu.guest_agent.0"})


def _input_balloon_rng(d: _Domain) -> None:
    """The devices qemuvm can only name through qemu.extra_args, back to their libvirt elements."""
    if "-usb" in d.extra and _take(d.extra, "-device", 1, "usb-tablet") is not None:
        _take(d.extra, "-usb", 0)
        d.devices.find("controller[@type='usb']").set("model", "qemu-xhci")  # type: ignore[union-attr]
        SubElement(d.devices, "input", {"type": "tablet", "bus": "usb"})
    balloon = _take(d.extra, "-device", 1, "virtio-balloon-pci") is not None
    SubElement(d.devices, "memballoon", {"model": "virtio" if balloon else "none"})
    if _take(d.extra, "-device", 1, "virtio-rng-pci") is not None:
        rng = SubElement(d.devices, "rng", {"model": "virtio"})
        SubElement(rng, "backend", {"model": "random"}).text = "/dev/urandom"
    if d.profile.machine.tpm:  # swtpm as libvirt runs it too (its state under /var/lib/libvirt/swtpm)
        tpm = SubElement(d.devices, "tpm", {"model": "tpm-tis" if d.profile.machine.arch == "aarch64" else "tpm-crb"})
        SubElement(tpm, "backend", {"type": "emulator", "version": "2.0"})


def _commandline(d: _Domain) -> None:
    """What is left of qemu.extra_args: <qemu:commandline>, verbatim."""
    if d.extra:
        register_namespace("qemu", QEMU_NS)
        commandline = SubElement(d.domain, f"{{{QEMU_NS}}}commandline")
        for arg in d.extra:
            SubElement(commandline, f"{{{QEMU_NS}}}arg", {"value": arg})
    d.lost += _not_in_libvirt(d.profile)


# The domain's sections in libvirt's element order (virsh dumpxml's), each named; one builds on the
# elements the ones before it made (the devices), and takes the extra args it maps.
SECTIONS: tuple[tuple[str, Callable[[_Domain], None]], ...] = (
    ("name, uuid, description", _identity),
    ("memory, hugepages, vcpus", _memory_and_vcpus),
    ("os, firmware, boot order", lambda d: _os(d.domain, d.profile, d.lost)),
    ("features, cpu", _features_and_cpu),
    ("on_poweroff, on_reboot, on_crash", _lifecycle),
    ("emulator, disks, usb controller", _emulator_and_disks),
    ("interfaces", _interfaces),
    ("filesystems", _filesystems),
    ("serial, console, agent channel", _consoles),
    ("graphics, video", lambda d: _display(d.devices, d.profile, d.vnc_password, d.lost)),
    ("input, memballoon, rng, tpm", _input_balloon_rng),
    ("qemu:commandline, fields libvirt cannot say", _commandline),
)


def export_domain(profile: Profile, vnc_password: str | None = None) -> Exported:
    """vnc_password: put the VNC password into the XML (virsh dumpxml --security-info does the same)."""
    d = _Domain(profile, vnc_password, Element("domain", {"type": "kvm" if profile.machine.accel != "tcg" else "qemu"}),
                list(profile.qemu.extra_args))
    for _name, build in SECTIONS:
        build(d)
    indent(d.domain, "  ")
    return Exported(tostring(d.domain, encoding="unicode") + "\n", d.lost)


def _take(args: list[str], option: str, values: int, value: str | None = None) -> list[str] | None:
    """Remove the first `option` (followed by `values` values, the first of them `value` if given) from args."""
    for index, arg in enumerate(args):
        following = args[index + 1:index + 1 + values]
        if arg == option and len(following) == values and (value is None or following[:1] == [value]):
            del args[index:index + 1 + values]
            return following
    return None


def _memory_backing(profile: Profile) -> Element | None:
    backing = Element("memoryBacking")
    if profile.machine.hugepages:
        SubElement(backing, "hugepages")
    if not profile.machine.mem_merge:
        SubElement(backing, "nosharepages")
    if any(share.type == "virtiofs" for share in profile.shares):  # vhost-user needs shared guest RAM
        SubElement(backing, "source", {"type": "memfd"})
        SubElement(backing, "access", {"mode": "shared"})
    return backing if len(backing) else None


def _os(domain: Element, profile: Profile, lost: list[str]) -> None:
    attrs = {"firmware": "efi"} if profile.machine.firmware == "uefi" else {}
    os_node = SubElement(domain, "os", attrs)
    # A binary named for its target (qemu-system-i386) says the arch; else (a path of one's own) machine.arch.
    name = profile.qemu.binary.rsplit("/", 1)[-1]
    arch = name.removeprefix("qemu-system-") if name.startswith("qemu-system-") else profile.machine.arch
    SubElement(os_node, "type", {"arch": {"i386": "i686"}.get(arch, arch), "machine": profile.machine.type}
               ).text = "hvm"
    if profile.machine.secure_boot:  # libvirt picks the firmware build with these features (its JSON descriptors)
        firmware = SubElement(os_node, "firmware")
        SubElement(firmware, "feature", {"enabled": "yes", "name": "enrolled-keys"})
        SubElement(firmware, "feature", {"enabled": "yes", "name": "secure-boot"})
    if profile.machine.uefi_vars:
        lost.append(f"machine.uefi_vars: libvirt starts from its own variables template (copy "
                    f"{profile.machine.uefi_vars} over the domain's nvram file)")
    boot = profile.boot
    for key in ("kernel", "initrd", "cmdline"):
        value = getattr(boot, key)
        if value:
            SubElement(os_node, key).text = value
    for device in boot.order or []:
        SubElement(os_node, "boot", {"dev": _BOOT[device]})
    if boot.once:
        lost.append(f"boot.once: libvirt boots by boot order only (put {boot.once} first and change it back)")


def _disk(disk: Disk, index: int, counters: dict[str, int], lost: list[str], arch: str) -> Element:
    block = disk.path.startswith("/dev/")
    element = Element("disk", {"type": "block" if block else "file", "device": disk.media})
    driver = {"name": "qemu", "type": disk.image_format, "cache": disk.cache}
    if disk.discard:
        driver["discard"] = "unmap"
    SubElement(element, "driver", driver)
    SubElement(element, "source", {"dev" if block else "file": disk.path})
    bus = disk.interface
    if disk.interface == "nvme":  # Arm's virt has no AHCI: there it becomes scsi
        bus = "scsi" if arch == "aarch64" else "sata"
        lost.append(f"disks[{index}].interface: nvme becomes {bus} (this libvirt schema has no nvme bus)")
    prefix = _BUS_PREFIX[bus]
    number = counters.get(prefix, 0)
    counters[prefix] = number + 1
    SubElement(element, "target", {"dev": prefix + _letters(number), "bus": bus})
    if disk.readonly or disk.media == "cdrom":
        SubElement(element, "readonly")
    if disk.ephemeral:
        SubElement(element, "transient")
    if disk.serial:
        SubElement(element, "serial").text = disk.serial
    if disk.size is not None:
        lost.append(f"disks[{index}].size: libvirt opens existing images only (create it with qemu-img)")
    return element


def _letters(number: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa: how libvirt names the disks on one bus (vda, vdb, ... vdaa)."""
    text = ""
    number += 1
    while number:
        number, rest = divmod(number - 1, 26)
        text = chr(ord("a") + rest) + text
    return text


def _interface(nic: Nic, index: int, lost: list[str]) -> Element | None:
    if nic.mode == "segment":
        lost.append(f"network[{index}]: a segment has no libvirt counterpart (a libvirt network of its own is one)")
        return None
    kinds = {"user": "user", "passt": "user", "bridge": "network" if nic.network else "bridge", "tap": "ethernet"}
    element = Element("interface", {"type": kinds[nic.mode]})
    if nic.mac != "auto":
        SubElement(element, "mac", {"address": nic.mac})
    if nic.mode == "bridge":
        SubElement(element, "source", {"network": nic.network} if nic.network else {"bridge": nic.bridge or "br0"})
    if nic.mode == "tap":
        SubElement(element, "target", {"dev": nic.ifname or "", "managed": "no"})
    SubElement(element, "model", {"type": nic.model})
    if nic.mode in ("user", "passt") and (nic.mode == "passt" or nic.forwards):
        # libvirt forwards ports only through passt: a user NIC with forwards becomes passt.
        SubElement(element, "backend", {"type": "passt"})
        if nic.mode == "user":
            lost.append(f"network[{index}]: user-mode NAT with forwards becomes passt (libvirt's slirp has none)")
        for forward in nic.forwards:
            attrs = {"proto": forward.protocol}
            if forward.address:
                attrs["address"] = forward.address
            rule = SubElement(element, "portForward", attrs)
            if forward.host == 0:
                lost.append(f"network[{index}].forwards: host port 0 (any free port) becomes the guest's port")
            SubElement(rule, "range", {"start": str(forward.host or forward.guest), "to": str(forward.guest)})
    return element


def _display(devices: Element, profile: Profile, vnc_password: str | None, lost: list[str]) -> None:
    display = profile.display
    if display is None:
        SubElement(SubElement(devices, "video"), "model", {"type": "none"})
        return
    vnc = display.vnc
    if vnc is not None:
        graphics = SubElement(devices, "graphics", {"type": "vnc"})
        if vnc.port == "unix":
            SubElement(graphics, "listen", {"type": "socket"})
        else:
            if vnc.port == "auto":
                graphics.set("autoport", "yes")
            else:
                graphics.set("port", str(vnc.port))
                graphics.set("autoport", "no")
            graphics.set("listen", vnc.listen)
            SubElement(graphics, "listen", {"type": "address", "address": vnc.listen})
        if vnc.password_file and vnc_password:
            graphics.set("passwd", vnc_password)
        elif vnc.password_file:
            lost.append("display.vnc.password_file: the password is left out (as virsh dumpxml does; "
                        "--security-info puts it in)")
        elif vnc.needs_password:
            lost.append("display.vnc.password: auto (a password per instance) has no libvirt counterpart; "
                        "libvirt's VNC has none unless passwd is set")
    SubElement(SubElement(devices, "video"), "model", {"type": _VIDEO[display.vga]})


def _not_in_libvirt(profile: Profile) -> list[str]:
    """Profile fields that are set and that a domain definition has no place for."""
    lost = []
    fields = profile.model_fields_set
    for name, why in (("cloud_init", "libvirt has no cloud-init seed (virt-install --cloud-init makes one)"),
                      ("ready", "what `up --wait` waits for is qemuvm's"), ("smoke", "qemuvm's smoke checks"),
                      ("ssh", "qemuvm's ssh settings"), ("shutdown", "virsh shutdown waits as long as it is told")):
        if name in fields:
            lost.append(f"{name}: {why}")
    if profile.machine.accel == "auto":
        lost.append("machine.accel: auto becomes kvm (libvirt's type='kvm')")
    if profile.restart.policy != "never" and profile.restart.model_fields_set - {"policy"}:
        lost.append("restart.max_retries/backoff: libvirt restarts without a limit or delay")
    if "serial" in fields:
        lost.append("serial: libvirt logs the console only with <log file=...>")
    return lost
