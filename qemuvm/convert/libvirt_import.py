"""libvirt domain XML (what `virsh dumpxml` prints, or /etc/libvirt/qemu/NAME.xml) -> a qemuvm profile.

`import_domain(data)` is pure: it parses with defusedxml (no DTDs, entities or external references), maps
what qemuvm can express and returns every other element or attribute as a Note (xmlwalk), so nothing is
dropped silently. Three things qemuvm only has as raw QEMU options (the SMBIOS UUID, virtio-rng, a
balloon, a USB tablet) are kept through qemu.extra_args, as the matching <qemu:commandline> would be.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from xml.etree.ElementTree import Element

from qemuvm.convert import libvirt_devices as devices
from qemuvm.convert.xmlwalk import Node, Note, tag_name
from qemuvm.errors import UsageError
from qemuvm.profile.types import NAME_PATTERN

MAX_XML = 4 << 20  # a domain definition is a few KiB; anything this big is not one
NAME = re.compile(NAME_PATTERN)
_UNITS = {"b": 1, "bytes": 1, "kb": 1000, "k": 1024, "kib": 1024, "mb": 1000**2, "m": 1 << 20, "mib": 1 << 20,
          "gb": 1000**3, "g": 1 << 30, "gib": 1 << 30, "tb": 1000**4, "t": 1 << 40, "tib": 1 << 40}
_ARCHES = {"x86_64": "x86_64", "i686": "i386", "aarch64": "aarch64", "ppc64le": "ppc64", "s390x": "s390x",
           "riscv64": "riscv64"}
_BOOT_DEVS = {"hd": "disk", "cdrom": "cdrom", "network": "network"}
# What a top-level element means when qemuvm does it anyway (implied) or cannot (unsupported).
_TOP_IMPLIED = {"metadata": "application data of libvirt's clients; qemuvm keeps none",
                "resource": "cgroup placement; qemuvm runs QEMU in the caller's own session"}
_TOP_UNSUPPORTED = {
    "seclabel": "qemuvm runs QEMU as the calling user, under no SELinux/AppArmor label of its own",
    "cputune": "no vCPU pinning or CPU quotas", "numatune": "no host NUMA placement",
    "memtune": "no memory limits", "blkiotune": "no block I/O weights", "iothreads": "no dedicated I/O threads",
    "sysinfo": "no custom SMBIOS tables", "pm": "QEMU's default ACPI sleep states apply",
    "maxMemory": "no memory hotplug", "idmap": "no user namespace mapping", "keywrap": "s390 only",
    "perf": "no perf events", "launchSecurity": "no SEV/TDX", "throttlegroups": "no I/O throttling",
}


@dataclass
class Imported:
    profile: dict[str, Any]
    notes: list[Note]
    vnc_password: str | None = None
    extra_args: list[str] = field(default_factory=list)
    device_boot: list[tuple[int, str, Node]] = field(default_factory=list)  # <boot order=N/> per device
    serials: int = 0

    @property
    def unsupported(self) -> list[Note]:
        return [note for note in self.notes if note.kind == "unsupported"]


def parse(data: bytes, source: str) -> Element:
    """defused parsing: a DTD, entity or external reference is refused, never expanded."""
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import ParseError, fromstring

    if len(data) > MAX_XML:
        raise UsageError(f"{source} is {len(data)} bytes; a libvirt domain definition is at most "
                         f"{MAX_XML >> 20} MiB")
    try:
        root = fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise UsageError(f"{source}: refused {type(exc).__name__} ({exc}); a domain definition needs no "
                         "DTD or entities") from None
    except ParseError as exc:
        line, column = getattr(exc, "position", (0, 0))
        raise UsageError(f"{source}:{line}:{column}: not well-formed XML ({str(exc).split(':')[0]})") from None
    _check_shape(root, source)
    if root.tag != "domain":
        raise UsageError(f"{source}: the root element is <{root.tag}>, not <domain>; give the XML that "
                         "`virsh dumpxml NAME` prints")
    return root


MAX_ELEMENTS, MAX_DEPTH = 10_000, 64  # libvirt's own largest test domains have a few hundred, 8 deep


def _check_shape(root: Element, source: str) -> None:
    """Bounded work and memory for what follows: a domain is never this big or this deep."""
    count, stack = 0, [(root, 1)]
    while stack:
        element, depth = stack.pop()
        count += 1
        if count > MAX_ELEMENTS or depth > MAX_DEPTH:
            what = f"more than {MAX_ELEMENTS} elements" if count > MAX_ELEMENTS else f"elements nested {depth} deep"
            raise UsageError(f"{source} has {what}; a libvirt domain definition has at most a few hundred "
                             f"elements, {MAX_DEPTH} deep")
        stack.extend((child, depth + 1) for child in element)


def import_domain(data: bytes, *, source: str = "<domain>", networks: frozenset[str] = frozenset(),
                  machines: tuple[str, ...] | frozenset[str] = ()) -> Imported:
    """The profile for one domain. networks: the qemuvm NAT networks that exist (an <interface
    type='network'> joins the one of its name, else becomes user-mode NAT); machines: the machine types this
    host's QEMU has (a versioned one it lacks becomes its family, pc or q35)."""
    root = Node.root(parse(data, source))
    out = Imported(profile={}, notes=root.notes)
    _domain_type(root, out)
    name = root.child("name")
    if name is None or not name.text:
        raise UsageError(f"{source}: the domain has no <name>")
    out.profile["name"] = _name(name)
    for tag in ("title", "description"):
        node = root.child(tag)
        if node is not None and node.text:
            out.profile["description"] = " — ".join(filter(None, [out.profile.get("description"), node.text]))
    uuid = root.child("uuid")
    if uuid is not None:
        out.extra_args += ["-uuid", uuid.text]
        uuid.kept("the guest's SMBIOS UUID, as -uuid")
    machine = out.profile.setdefault("machine", {})
    _memory(root, machine)
    _vcpus(root, machine)
    _cpu(root, machine)
    _os(root, out, machines)
    _lifecycle(root, out)
    for node in root.children("features"):
        _features(node)
    clock = root.child("clock")
    if clock is not None:
        _clock(clock)
    for tag, why in _TOP_IMPLIED.items():
        for node in root.children(tag):
            node.implied(why)
    for tag, why in _TOP_UNSUPPORTED.items():
        for node in root.children(tag):
            node.unsupported(why)
    devices_node = root.child("devices")
    if devices_node is not None:
        devices.convert(devices_node, out, networks)
    else:
        out.profile["network"] = []
    devices.boot_order(out)
    for commandline in root.children("qemu:commandline"):
        for arg in commandline.children("qemu:arg"):
            out.extra_args.append(arg.attr("value") or "")
        for env in commandline.children("qemu:env"):
            env.unsupported("QEMU runs with qemuvm's environment")
    if out.extra_args:
        out.profile.setdefault("qemu", {})["extra_args"] = out.extra_args
    root.finish()
    out.profile = _ordered(out.profile)
    return out


_ORDER = ("name", "description", "machine", "boot", "disks", "network", "shares", "display", "guest_agent",
          "restart", "qemu")


def _ordered(profile: dict[str, Any]) -> dict[str, Any]:
    """The profile's sections in PROFILE.md's order, empty ones left out (`network: []` means no NIC)."""
    return {key: profile[key] for key in _ORDER if key in profile and (profile[key] or key == "network")}


def _domain_type(root: Node, out: Imported) -> None:
    kind = root.attr("type")
    if kind not in ("kvm", "qemu"):
        raise UsageError(f"domain type {kind!r} is not a QEMU domain (allowed: kvm, qemu)")
    # libvirt's type='qemu' is QEMU without KVM: TCG.
    out.profile.setdefault("machine", {})["accel"] = "kvm" if kind == "kvm" else "tcg"
    for attr in list(root.element.attrib):
        if attr != "type":
            root.implied("XML namespace declaration", attr)


def _name(node: Node) -> str:
    if NAME.match(node.text):
        return node.text
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", node.text).strip("-._")[:63] or "imported"
    node.unsupported(f"renamed to {cleaned} (qemuvm names are [A-Za-z0-9][A-Za-z0-9_.-]{{0,62}})")
    return cleaned


def size_bytes(node: Node, default_unit: str = "KiB") -> int:
    unit = (node.attr("unit") or default_unit).lower()
    if unit not in _UNITS or not node.text.isdigit():
        raise UsageError(f"{node.path}: {node.text!r} {unit} is not a size libvirt writes")
    return int(node.text) * _UNITS[unit]


def mib_text(value: int) -> str:
    mib = -(-value // (1 << 20))
    return f"{mib >> 10}G" if mib % 1024 == 0 else f"{mib}M"


def _memory(root: Node, machine: dict[str, Any]) -> None:
    memory = root.child("memory")
    if memory is None:
        return
    total = size_bytes(memory)
    machine["memory"] = mib_text(total)
    if total % (1 << 20):
        memory.implied(f"rounded up to whole MiB ({machine['memory']})", "unit")
    current = root.child("currentMemory")
    if current is not None and size_bytes(current) < total:
        current.unsupported("a balloon target below <memory>: the guest starts with all of its memory")
    backing = root.child("memoryBacking")
    if backing is not None:
        for node in backing.children():
            tag = tag_name(node.element)
            if tag == "hugepages":
                machine["hugepages"] = True
                for page in node.children("page"):
                    page.unsupported("the host's default huge page size is used")
            elif tag == "nosharepages":
                machine["mem_merge"] = False
            elif tag in ("source", "access"):
                node.implied("qemuvm shares guest RAM itself where a virtiofs share needs it")
            else:
                node.unsupported()


def _vcpus(root: Node, machine: dict[str, Any]) -> None:
    vcpu = root.child("vcpu")
    if vcpu is None:
        return
    machine["cpus"] = int(vcpu.text) if vcpu.text.isdigit() else 1
    vcpu.implied("vCPUs float over the host's CPUs", "placement")
    if vcpu.element.get("cpuset"):
        vcpu.unsupported("no vCPU pinning", "cpuset")
    current = vcpu.attr("current")
    if current and current != vcpu.text:
        vcpu.unsupported(f"all {vcpu.text} vCPUs are online from the start (no vCPU hotplug)", "current")


def _cpu(root: Node, machine: dict[str, Any]) -> None:
    cpu = root.child("cpu")
    if cpu is None:
        return
    mode = cpu.attr("mode", "custom")
    model = cpu.child("model")
    if mode == "host-passthrough":
        machine["cpu"] = "host"
    elif mode == "maximum":
        machine["cpu"] = "max"
    elif mode == "host-model":
        machine["cpu"] = "host"
        cpu.unsupported("host-model becomes host (passthrough): the guest sees the host CPU itself", "mode")
    elif model is not None and model.text:
        machine["cpu"] = model.text
    if model is not None:
        model.implied("QEMU refuses a CPU model the host cannot run", "fallback")
    for attr, why in (("match", "the model is used as named"), ("check", "QEMU checks the model itself"),
                      ("migratable", "qemuvm does not migrate")):
        if cpu.element.get(attr) is not None:
            cpu.implied(why, attr)
    for tag, why in (("topology", "QEMU's default topology for the vCPU count applies"),
                     ("feature", "no CPU feature flags"), ("numa", "no guest NUMA nodes"),
                     ("cache", "no cache topology")):
        for node in cpu.children(tag):
            node.unsupported(why)


def _os(root: Node, out: Imported, machines: tuple[str, ...] | frozenset[str]) -> None:
    os_node = root.child("os")
    machine, boot = out.profile["machine"], out.profile.setdefault("boot", {})
    if os_node is None:
        return
    firmware = os_node.attr("firmware")
    if firmware == "efi":
        machine["firmware"] = "uefi"
    elif firmware == "bios":
        machine["firmware"] = "bios"
    kind = os_node.child("type")
    if kind is not None:
        if kind.text != "hvm":
            raise UsageError(f"os type {kind.text!r} is not a full virtual machine (allowed: hvm)")
        arch = kind.attr("arch", "x86_64") or "x86_64"
        if arch not in _ARCHES:
            raise UsageError(f"{kind.path}@arch={arch}: not an architecture qemuvm runs "
                             f"(allowed: {', '.join(_ARCHES)})")
        if arch == "aarch64":  # machine.arch: qemu-system-aarch64, virt and UEFI are its defaults
            machine["arch"] = "aarch64"
        elif arch != "x86_64":
            out.profile["qemu"] = {"binary": f"qemu-system-{_ARCHES[arch]}"}
        given = kind.attr("machine")
        if given:
            machine["type"] = given if given in machines else _machine_family(kind, given)
    _firmware(os_node, machine)
    order = [node for node in os_node.children("boot")]
    if order:
        names = []
        for node in order:
            dev = node.attr("dev") or ""
            if dev in _BOOT_DEVS:
                names.append(_BOOT_DEVS[dev])
            else:
                node.unsupported("no floppy drives: this boot device is left out")
        boot["order"] = list(dict.fromkeys(names))
    for tag, key in (("kernel", "kernel"), ("initrd", "initrd"), ("cmdline", "cmdline")):
        node = os_node.child(tag)
        if node is not None and node.text:
            boot[key] = node.text
    for tag, why in (("bootmenu", "no firmware boot menu"), ("bios", "SeaBIOS defaults apply"),
                     ("smbios", "no custom SMBIOS"), ("dtb", "no device tree"), ("acpi", "no extra ACPI tables"),
                     ("init", "containers only"), ("initarg", "containers only")):
        for node in os_node.children(tag):
            node.unsupported(why)


def _machine_family(node: Node, given: str) -> str:
    """pc-q35-10.0 -> q35: a versioned machine type this host's QEMU lacks (it names what the QEMU that
    defined the domain had) becomes the family, whose newest version this host has."""
    for prefix, family in (("pc-q35-", "q35"), ("pc-i440fx-", "pc"), ("virt-", "virt")):
        if given.startswith(prefix):
            node.unsupported(f"the versioned machine type becomes {family} (this host's newest of the family)",
                             "machine")
            return family
    return given


def _firmware(os_node: Node, machine: dict[str, Any]) -> None:
    loader = os_node.child("loader")
    if loader is not None:
        if loader.attr("type") == "pflash":
            machine["firmware"] = "uefi"
            loader.implied("qemuvm starts the host's OVMF (apt-get install ovmf)")
            if loader.element.get("readonly") == "no":
                loader.unsupported("one writable code+variables file: qemuvm starts read-only OVMF code with "
                                   "a per-instance copy of the variables")
            if loader.element.get("stateless") == "yes":
                loader.unsupported("the variables persist per instance (qemuvm has no stateless UEFI)")
            loader.consume()
        else:
            machine.setdefault("firmware", "bios")
            loader.implied("qemuvm starts QEMU's own SeaBIOS")
    nvram = os_node.child("nvram")
    if nvram is not None:
        nvram.unsupported("the instance starts from a fresh copy of OVMF's variables template; copy this file "
                          "over the instance's OVMF_VARS.fd (after `qemuvm define`) to keep its boot entries")
    firmware = os_node.child("firmware")
    if firmware is not None:
        features = {feature.attr("name"): feature for feature in firmware.children("feature")}
        for name, feature in features.items():
            enabled = feature.attr("enabled") == "yes"
            if name == "secure-boot":
                machine["secure_boot"] = enabled
                feature.implied("machine.secure_boot: OVMF's Secure Boot build, SMM on" if enabled else
                                "machine.secure_boot off (the default)")
            elif name == "enrolled-keys" and enabled:
                feature.implied("the Secure Boot variables have Microsoft's keys enrolled (OVMF_VARS_4M.ms.fd)")
            elif name == "enrolled-keys":
                feature.unsupported("qemuvm's Secure Boot variables have Microsoft's keys enrolled; name others "
                                    "with machine.uefi_vars")
            else:
                feature.unsupported(f"no firmware feature {name}")
            feature.consume()
    if loader is not None and loader.element.get("secure") == "yes":
        machine["secure_boot"] = True


def _lifecycle(root: Node, out: Imported) -> None:
    """on_crash restart -> restart.policy on-failure; on_poweroff restart too -> always."""
    restarts = ("restart", "rename-restart", "coredump-restart")
    crash, off, reboot = (root.child(tag) for tag in ("on_crash", "on_poweroff", "on_reboot"))
    crash_restarts = crash is not None and crash.text in restarts
    off_restarts = off is not None and off.text in restarts
    policy = "always" if off_restarts else "on-failure" if crash_restarts else "never"
    for node, ends in ((crash, "a crash"), (off, "a guest power-off")):
        if node is None:
            continue
        if node is crash and off_restarts and not crash_restarts:
            node.unsupported("a crash restarts the VM too (restart.policy always)")
        elif node.text in ("destroy", "restart"):
            node.implied(f"{ends} {'restarts the VM' if node.text == 'restart' else 'ends the VM'} "
                         f"(restart.policy {policy})")
        else:
            node.unsupported(f"{ends} is handled by restart.policy {policy}")
    if reboot is not None:
        if reboot.text == "restart":
            reboot.implied("a guest reboot resets the VM, as QEMU does")
        else:
            reboot.unsupported("a guest reboot resets the VM (qemuvm has no -no-reboot)")
    if policy != "never":
        out.profile["restart"] = {"policy": policy}
    for node in root.children("on_lockfailure"):
        node.unsupported("no lock manager")


def _features(node: Node) -> None:
    for feature in node.children():
        tag = tag_name(feature.element)
        if tag in ("acpi", "apic", "pae"):
            feature.implied("on in every pc and q35 machine")
        else:
            feature.unsupported("QEMU's default for the machine applies")


def _clock(clock: Node) -> None:
    offset = clock.attr("offset", "utc")
    if offset != "utc":
        clock.unsupported("the guest's RTC runs in UTC", "offset")
    for timer in clock.children("timer"):
        timer.unsupported("QEMU's default timers apply")


_SECTIONS = (("unsupported", "Not carried over, or only approximately"),
             ("kept", "Kept through qemu.extra_args"),
             ("implied", "Done by qemuvm itself"))


def render_profile(imported: Imported, source: str, password_file: str | None = None) -> str:
    """The commented YAML profile: what did not come over (element path: why) first, then the profile."""
    import yaml

    from qemuvm.convert.libvirt_devices import VNC_PASSWORD

    lines = [f"# qemuvm profile imported from the libvirt domain {source} (qemuvm import libvirt)."]
    for kind, title in _SECTIONS:
        notes = [note for note in imported.notes if note.kind == kind]
        if notes:
            lines += ["#", f"# {title} ({len(notes)}):", *(f"#   {note.line()}" for note in notes)]
    profile = imported.profile
    vnc = profile.get("display", {}).get("vnc", {})
    if vnc.get("password_file") == VNC_PASSWORD:
        vnc["password_file"] = password_file or VNC_PASSWORD
    body = yaml.safe_dump(profile, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1000)
    return "\n".join(lines) + "\n" + body
