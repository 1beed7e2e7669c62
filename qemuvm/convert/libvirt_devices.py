"""The <devices> of a libvirt domain -> disks, network, shares, display, guest_agent (libvirt_import's half
for devices). Each function reads one device element through xmlwalk.Node, so whatever it leaves unread
is reported."""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Any

from qemuvm.convert.xmlwalk import Node, tag_name
from qemuvm.profile.model import ARCH_DEFAULTS

if TYPE_CHECKING:
    from qemuvm.convert.libvirt_import import Imported

VNC_PASSWORD = "<vnc-password>"  # placeholder for the password file the API writes
SERIAL = re.compile(r"^[A-Za-z0-9_.-]{1,20}$")
TAG = re.compile(r"^[A-Za-z0-9_.-]{1,31}$")
_BUSES = {"virtio": "virtio", "scsi": "scsi", "ide": "ide", "sata": "sata", "nvme": "nvme"}
_DEV_PREFIX = {"vd": "virtio", "sd": "scsi", "hd": "ide", "nvme": "nvme"}
_CACHES = ("none", "writeback", "writethrough", "directsync", "unsafe")
_NIC_MODELS = ("virtio", "e1000", "rtl8139")
_VGA = {"vga": "std", "virtio": "virtio", "none": "none", "cirrus": "std", "qxl": "std", "bochs": "std"}
_EXTRA = {"rng": ["-device", "virtio-rng-pci"], "balloon": ["-device", "virtio-balloon-pci"],
          "tablet": ["-usb", "-device", "usb-tablet"]}
_UNSUPPORTED = {
    "hostdev": "no PCI/USB host device passthrough", "redirdev": "no USB redirection",
    "sound": "no sound device", "watchdog": "no watchdog device", "smartcard": "no smartcard",
    "hub": "no USB hub", "panic": "no pvpanic device", "shmem": "no shared memory device", "lease": "no leases",
    "iommu": "no vIOMMU", "vsock": "no vsock device", "crypto": "no virtio-crypto", "memory": "no memory hotplug",
    "parallel": "no parallel port", "pstore": "no pstore device",
}


def convert(devices: Node, out: Imported, networks: frozenset[str]) -> None:
    profile = out.profile
    for node in devices.children():
        tag = tag_name(node.element)
        if tag == "emulator":
            _emulator(node, profile)
        elif tag == "disk":
            disk = _disk(node, out)
            if disk is not None:
                profile.setdefault("disks", []).append(disk)
        elif tag == "interface":
            nic = _nic(node, out, networks)
            if nic is not None:
                profile.setdefault("network", []).append(nic)
        elif tag == "filesystem":
            share = _share(node)
            if share is not None:
                profile.setdefault("shares", []).append(share)
        elif tag == "graphics":
            _graphics(node, out)
        elif tag == "video":
            _video(node, out)
        elif tag in ("serial", "console", "channel"):
            _console(node, tag, out)
        elif tag == "tpm":
            _tpm(node, out)
        elif tag == "controller":
            _controller(node)
        elif tag in ("input", "memballoon", "rng", "audio"):
            _small_device(node, tag, out)
        else:
            node.unsupported(_UNSUPPORTED.get(tag, "qemuvm has no equivalent"))
    profile.setdefault("network", [])  # a domain without <interface> has no NIC


def _emulator(node: Node, profile: dict[str, Any]) -> None:
    arch = profile.get("machine", {}).get("arch", "x86_64")
    binary = profile.get("qemu", {}).get("binary", ARCH_DEFAULTS.get(arch, ARCH_DEFAULTS["x86_64"])["binary"])
    if node.text.rsplit("/", 1)[-1] == binary:
        node.implied(f"qemuvm runs {binary} from PATH")
    else:
        node.unsupported(f"qemuvm runs {binary} from PATH (set qemu.binary to run another)")


def _disk(node: Node, out: Imported) -> dict[str, Any] | None:
    kind, device = node.attr("type", "file"), node.attr("device", "disk")
    if device not in ("disk", "cdrom"):
        node.unsupported(f"no {device} drives: this drive is left out")
        return None
    if kind not in ("file", "block"):
        node.unsupported(f"a {kind} disk has no file or block device qemuvm can open: this drive is left out")
        return None
    source = node.child("source")
    path = source.attr("file" if kind == "file" else "dev") if source is not None else None
    if not path:
        node.unsupported("an empty drive (no medium): qemuvm's drives always hold a file, so it is left out")
        return None
    disk: dict[str, Any] = {"file": path}
    driver = node.child("driver")
    if driver is not None:
        driver.attr("name")  # always qemu
        image = driver.attr("type")
        if image in ("raw", "qcow2"):
            disk["format"] = image
        elif image is not None:
            node.unsupported(f"a {image} image: qemuvm opens raw and qcow2 only, so this drive is left out")
            return None
        cache = driver.attr("cache")
        if cache in _CACHES:
            disk["cache"] = cache
        elif cache is not None and cache != "default":
            driver.unsupported("QEMU's default cache mode applies", "cache")
        discard = driver.attr("discard")
        if discard == "unmap":
            disk["discard"] = True
    target = node.child("target")
    if target is not None:
        dev = target.attr("dev") or ""
        bus = target.attr("bus") or next((b for p, b in _DEV_PREFIX.items() if dev.startswith(p)), "virtio")
        if bus in _BUSES:
            disk["interface"] = _BUSES[bus]
        else:
            target.unsupported(f"no {bus} bus: the disk is on virtio instead", "bus")
        target.implied("the guest names disks by bus and order", "dev")
    if device == "cdrom":
        disk["media"] = "cdrom"
    for flag in node.children("readonly"):
        if device == "disk":
            disk["readonly"] = True
        else:
            flag.implied("cdrom media are read-only")
    for transient in node.children("transient"):
        disk["ephemeral"] = True
        transient.unsupported("ephemeral: writes go to an overlay that lasts until `qemuvm rm`, not until the "
                              "VM stops")
    serial = node.child("serial")
    if serial is not None:
        if SERIAL.match(serial.text):
            disk["serial"] = serial.text
        else:
            serial.unsupported("qemuvm's serials are 1-20 of [A-Za-z0-9_.-]")
    _common(node, out, "cdrom" if device == "cdrom" else "disk")
    for backing in node.children("backingStore"):
        backing.implied("QEMU reads the backing chain from the image itself")
    for shared in node.children("shareable"):
        shared.unsupported("no disk shared between VMs: the image is locked by one QEMU")
    return disk


def _common(node: Node, out: Imported, boot_kind: str) -> None:
    """What every device has: its bus address and alias (qemuvm places devices itself) and <boot order>."""
    for tag in ("address", "alias"):
        for child in node.children(tag):
            child.implied("qemuvm places its devices itself")
    boot = node.child("boot")
    if boot is not None:
        order = boot.attr("order") or ""
        if order.isdigit():
            out.device_boot.append((int(order), boot_kind, boot))
        else:
            boot.unsupported()


def _nic(node: Node, out: Imported, networks: frozenset[str]) -> dict[str, Any] | None:
    kind = node.attr("type")
    source = node.child("source")
    nic: dict[str, Any]
    if kind == "network" and source is not None:
        name = source.attr("network") or ""
        if name in networks:
            nic = {"mode": "bridge", "network": name}
        else:
            nic = {"mode": "user"}
            source.unsupported(f"no qemuvm network {name!r}: user-mode NAT instead (`qemuvm network create "
                               "NAME` (root) makes one, joined with mode: bridge, network: NAME)", "network")
    elif kind == "bridge" and source is not None and source.attr("bridge"):
        nic = {"mode": "bridge", "bridge": source.attr("bridge")}
    elif kind == "user":
        backend = node.child("backend")
        nic = {"mode": "passt" if backend is not None and backend.attr("type") == "passt" else "user"}
        if backend is not None:
            for attr in ("logFile", "hostname", "fqdn"):
                if backend.element.get(attr) is not None:
                    backend.unsupported("passt runs with qemuvm's options", attr)
        if source is not None:
            source.unsupported("the guest's traffic leaves by the host's default route")
        forwards = _forwards(node)
        if forwards:
            nic["forwards"] = forwards
        for tag in ("ip", "route"):
            for child in node.children(tag):
                child.unsupported("user-mode NAT gives the guest 10.0.2.15/24 (its default)")
    elif kind == "ethernet":
        target = node.child("target")
        if target is None or not target.attr("dev"):
            node.unsupported("an ethernet interface without <target dev>: qemuvm only joins an existing tap "
                             "(mode: tap), so it is left out")
            return None
        nic = {"mode": "tap", "ifname": target.attr("dev")}
        target.implied("the tap exists already (mode: tap)", "managed")
    else:
        node.unsupported(f"no {kind} interfaces: this NIC is left out")
        return None
    if kind != "ethernet":
        for target in node.children("target"):
            target.implied("qemuvm names its taps itself")
    mac = node.child("mac")
    if mac is not None and mac.attr("address"):
        nic["mac"] = mac.attr("address")
    model = node.child("model")
    if model is not None:
        name = model.attr("type") or "virtio"
        if name in _NIC_MODELS:
            nic["model"] = name
        else:
            model.unsupported(f"a virtio NIC instead of {name} (qemuvm has virtio, e1000, rtl8139)")
    _common(node, out, "network")
    return nic


def _forwards(node: Node) -> list[dict[str, Any]]:
    """<portForward proto address><range start to/> -> {host: start, guest: to, address}; ranges with end or
    exclude are not forwards qemuvm can list."""
    forwards = []
    for forward in node.children("portForward"):
        protocol = forward.attr("proto", "tcp")
        address = forward.attr("address") or ""
        if address and address != "127.0.0.1":
            forward.unsupported("bound to 127.0.0.1 instead; set the forward's address to expose it", "address")
        elif not address:
            forward.implied("bound to 127.0.0.1 (libvirt binds every address; set address to expose it)",
                            "proto")
        for item in forward.children("range"):
            start, to = item.attr("start") or "", item.attr("to")
            if item.attr("end") or item.attr("exclude") == "yes" or not start.isdigit():
                item.unsupported("a port range: list each port as its own forward")
                continue
            forwards.append({"host": int(start), "guest": int(to or start), "protocol": protocol,
                             "address": "127.0.0.1"})
    return forwards


def _share(node: Node) -> dict[str, Any] | None:
    if node.attr("type", "mount") != "mount":
        node.unsupported("only a host folder (type mount) can be shared: left out")
        return None
    driver = node.child("driver")
    virtiofs = driver is not None and driver.attr("type") == "virtiofs"
    if driver is not None and not virtiofs:
        driver.implied("9p (QEMU's own file server)", "type")
    source, target = node.child("source"), node.child("target")
    folder = source.attr("dir") if source is not None else None
    tag = target.attr("dir") if target is not None else None
    if not folder or not tag:
        node.unsupported("a share needs <source dir> and <target dir>: left out")
        return None
    share: dict[str, Any] = {"source": folder, "tag": tag, "type": "virtiofs" if virtiofs else "9p"}
    if not TAG.match(tag):
        share["tag"] = re.sub(r"[^A-Za-z0-9_.-]", "_", tag.strip("/"))[:31] or "share"
        target.unsupported(f"mount tag {share['tag']} (qemuvm tags are 1-31 of [A-Za-z0-9_.-])", "dir")
    mode = node.attr("accessmode", "passthrough")
    if virtiofs and mode == "passthrough":
        node.implied("virtiofsd maps owners as they are", "accessmode")
    elif not virtiofs and mode != "squash":
        node.unsupported("qemuvm's 9p serves with security_model=none (libvirt's squash)", "accessmode")
    if node.children("readonly"):
        share["readonly"] = True
    binary = node.child("binary")
    if binary is not None:
        binary.implied("qemuvm starts the host's virtiofsd", "path")
        cache = binary.child("cache")
        if cache is not None and cache.attr("mode") in ("always", "none", "auto"):
            share["cache"] = cache.attr("mode")
    for child in node.children("address") + node.children("alias"):
        child.implied("qemuvm places its devices itself")
    for boot in node.children("boot"):
        boot.unsupported("qemuvm boots from disks, cdroms and the network only")
    return share


def _graphics(node: Node, out: Imported) -> None:
    kind = node.attr("type")
    display = out.profile.setdefault("display", {})
    if kind != "vnc" or "vnc" in display:
        node.unsupported(f"no {kind} display (qemuvm has one VNC server)" if kind != "vnc" else
                         "one VNC server only")
        return
    vnc: dict[str, Any] = {}
    address = node.attr("listen")
    for listen in node.children("listen"):
        how = listen.attr("type", "address")
        if how == "address" and listen.attr("address"):
            address = listen.attr("address")
        elif how == "socket":
            vnc["port"] = "unix"
            if listen.element.get("socket"):
                listen.implied("the socket is vnc.sock in the instance folder", "socket")
        elif how != "address":
            listen.unsupported("listens on 127.0.0.1 instead")
    port, autoport = node.attr("port") or "", node.attr("autoport")
    if "port" not in vnc:
        vnc["port"] = int(port) if port.isdigit() and int(port) >= 5900 and autoport != "yes" else "auto"
    out.vnc_password = node.attr("passwd") or None
    if out.vnc_password:
        vnc["password_file"] = VNC_PASSWORD  # the API writes the file and names it here
    if address and vnc["port"] != "unix":
        if loopback(address) or out.vnc_password:
            vnc["listen"] = address
        else:
            node.unsupported(f"listens on 127.0.0.1: {address} without a password would be open to the "
                             "network", "listen")
    display["vnc"] = vnc


def _video(node: Node, out: Imported) -> None:
    model = node.child("model")
    name = (model.attr("type") if model is not None else None) or "vga"
    vga = _VGA.get(name)
    if vga == "none":
        node.implied("no display device: qemuvm's default (no display section)")
        return
    display = out.profile.setdefault("display", {})
    if vga is None or "vga" in display:
        node.unsupported("one display device only (std, virtio or none)" if vga else f"no {name} display device")
        return
    display["vga"] = vga
    if model is not None:
        if name not in ("vga", "virtio", "none"):
            model.unsupported(f"a standard VGA instead of {name}", "type")
        for attr in ("vram", "heads", "primary"):
            if model.element.get(attr) is not None:
                model.implied("QEMU's default for the display device", attr)
        for child in model.children("acceleration"):
            child.unsupported()
    for child in node.children("address") + node.children("alias"):
        child.implied("qemuvm places its devices itself")


def _console(node: Node, tag: str, out: Imported) -> None:
    target = node.child("target")
    if tag == "channel":
        name = target.attr("name") if target is not None else None
        if name == "org.qemu.guest_agent.0" and target is not None and target.attr("type") == "virtio":
            out.profile["guest_agent"] = True
            node.implied("guest_agent: the channel is qga.sock in the instance folder")
        else:
            node.unsupported(f"no virtio-serial channel {name or '(unnamed)'}: only the guest agent's")
        return
    if tag == "console" and target is not None and target.attr("type") not in (None, "serial"):
        node.unsupported(f"no {target.attr('type')} console: the guest's console is the serial port")
        return
    if tag == "serial":
        out.serials += 1
        if out.serials > 1:
            node.unsupported("one serial port: qemuvm's console")
            return
    kind = node.attr("type", "pty")
    if kind in ("file", "tcp", "udp", "dev"):
        node.unsupported(f"the console is serial.sock and serial.log in the instance folder, not a {kind}")
    else:
        node.implied("the console is serial.sock (`qemuvm console`) and serial.log in the instance folder")


def _controller(node: Node) -> None:
    kind, model = node.attr("type"), node.attr("model")
    if kind == "scsi" and model not in (None, "virtio-scsi"):
        node.unsupported(f"scsi disks sit on virtio-scsi, not {model}")
    else:
        node.implied("qemuvm adds the controllers its devices need")


def _tpm(node: Node, out: Imported) -> None:
    """<tpm model='tpm-crb|tpm-tis'><backend type='emulator' version='2.0'/></tpm> -> machine.tpm."""
    backend = node.child("backend")
    if backend is None or backend.attr("type") != "emulator" or (backend.attr("version") or "2.0") != "2.0":
        node.unsupported("qemuvm's TPM is a TPM 2.0 that swtpm emulates (backend type emulator, version 2.0)")
        return
    out.profile.setdefault("machine", {})["tpm"] = True
    for child, why in (("encryption", "swtpm's state is not encrypted (it lives in the 0700 instance folder)"),
                       ("active_pcr_banks", "swtpm_setup activates its default PCR bank (sha256)"),
                       ("source", "the TPM's state lives in the instance folder"),
                       ("profile", "swtpm's default profile")):
        found = backend.child(child)
        if found is not None:
            found.unsupported(why)
            found.consume()
    if backend.attr("debug"):
        backend.unsupported("swtpm logs at level 1 to swtpm.log in the instance folder", "debug")
    if node.attr("model") not in (None, "tpm-crb"):
        node.implied("qemuvm's TPM device is tpm-crb (tpm-tis-device on aarch64)", "model")
    node.implied("machine.tpm: swtpm's TPM 2.0, its state in the instance folder")
    for attribute in ("type", "version"):
        backend.attr(attribute)


def _small_device(node: Node, tag: str, out: Imported) -> None:
    model, kind = node.attr("model"), node.attr("type")
    extra: list[str] | None = None
    if tag == "input":
        bus = node.attr("bus")
        if bus == "ps2" or (bus is None and kind in ("mouse", "keyboard")):
            node.implied("a PS/2 mouse and keyboard come with pc and q35")
        elif kind == "tablet" and bus in (None, "usb"):
            extra = _EXTRA["tablet"]
        else:
            node.unsupported(f"no {bus} {kind}")
    elif tag == "memballoon":
        if model == "none":
            node.implied("qemuvm adds no balloon")
        elif model == "virtio":
            extra = _EXTRA["balloon"]
        else:
            node.unsupported(f"no {model} balloon")
    elif tag == "rng":
        backend = node.child("backend")
        if model == "virtio" and backend is not None and backend.attr("model") == "random":
            extra = _EXTRA["rng"]
        else:
            node.unsupported("a virtio-rng reads the host's /dev/urandom only")
    elif kind == "none":
        node.implied("qemuvm adds no sound")
    else:
        node.unsupported("no audio backend")
    if extra is not None:
        if not _contains(out.extra_args, extra):
            out.extra_args += extra
        node.kept(f"qemu.extra_args {' '.join(extra)}")


def _contains(args: list[str], part: list[str]) -> bool:
    return any(args[i:i + len(part)] == part for i in range(len(args)))


def boot_order(out: Imported) -> None:
    """Per-device <boot order=N/> -> boot.order by device kind, which is what qemuvm expresses; exact when
    each kind's devices are next to each other in the order."""
    if not out.device_boot:
        return
    ranked = sorted(out.device_boot, key=lambda item: item[0])
    kinds = [kind for _, kind, _ in ranked]
    order = list(dict.fromkeys(kinds))
    exact = kinds == [kind for kind in order for _ in range(kinds.count(kind))]
    out.profile.setdefault("boot", {})["order"] = order
    for _, _, node in ranked:
        if exact:
            node.implied(f"boot.order {order}")
        else:
            node.unsupported(f"boot.order {order}: qemuvm orders kinds of device, not each device")


def loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False

