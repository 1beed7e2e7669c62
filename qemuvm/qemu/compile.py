"""Profile + instance paths + host facts -> the QEMU argv. Pure: no I/O, no subprocess, no clock.

Every `Option` carries the profile fields that produced it (`qemuvm render --explain`); options qemuvm
always adds carry a pseudo-field such as "(qemuvm: supervisor monitor)". Values with user text go
through `options.keyvals`/`escape` (commas doubled). The few host-dependent impossibilities (UEFI
without OVMF, a bridge without qemu-bridge-helper, too many IDE disks) raise `UsageError`.

Choices worth knowing:
- Disks use `-blockdev` (a file node `diskN-file` + a format node `diskN`) and `-device`; no `-drive`.
- Boot order: SeaBIOS follows `-boot order=...,once=...` (its CMOS class order: hard disk, cd, network)
  only for devices *without* a bootindex -- checked on QEMU 7.2: with bootindex set, `once=d` is ignored.
  OVMF ignores `-boot` and follows only bootindex. So firmware bios -> `-boot` letters and no bootindex,
  firmware uefi -> bootindex per device from `boot.order`, and `boot.once` is refused under UEFI.
- `-S` is added only with `start_paused=True`: the launcher uses it to connect QMP before the guest runs.
- machine.secure_boot: OVMF's Secure Boot build (its variables: Microsoft's keys, or machine.uefi_vars), SMM on
  and the flash's secure property set, so only SMM code can write the variables; machine.tpm: swtpm's socket
  (qemu/tpm.py) as a tpm-crb (tpm-tis-device on aarch64).
- `machine.arch` picks a row of qemu/arch.py: on aarch64 the virt machine (GICv3 under TCG, the host's GIC
  under KVM), AAVMF as the pflash pair, ramfb or virtio-gpu-pci for a display, pvpanic-pci.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field

from qemuvm.errors import UsageError
from qemuvm.paths import InstancePaths
from qemuvm.profile.model import Disk, Nic, Profile
from qemuvm.qemu import natnet, passt, segment
from qemuvm.qemu import shares as shares_
from qemuvm.qemu.arch import ARCHES
from qemuvm.qemu.facts import HostFacts
from qemuvm.qemu.options import derive_mac, escape, keyvals


@dataclass(frozen=True)
class PortPlan:
    """Host ports chosen at launch time (prepare), so compile stays pure.

    Absent (the default), compile emits what the profile says: `port: auto` VNC becomes QEMU's
    "first free display from 0" (`:0,to=99`) and `host: 0` forwards are left for QEMU to pick.
    """

    vnc_port: int | None = None  # TCP port for `display.vnc.port: auto`
    forwards: dict[tuple[int, int], int] = field(default_factory=dict)  # (nic, forward) -> host port for host: 0
    ssh_host_port: int | None = None  # an extra loopback forward to ssh.port when no forward covers it


@dataclass(frozen=True)
class Option:
    """One QEMU option (e.g. ("-m", "512M")) and the profile fields that produced it (for --explain)."""

    args: tuple[str, ...]
    fields: tuple[str, ...] = ()


# cache mode -> (cache.direct, cache.no-flush, device write-cache); None = QEMU's default (off/off/on).
_CACHE: dict[str, tuple[bool | None, bool | None, bool | None]] = {
    "writeback": (None, None, None),
    "none": (True, None, None),
    "writethrough": (None, None, False),
    "directsync": (True, None, False),
    "unsafe": (None, True, None),
}
_BOOT_LETTER = {"disk": "c", "cdrom": "d", "network": "n"}
_NIC_MODEL = {"virtio": "virtio-net-pci", "e1000": "e1000", "rtl8139": "rtl8139"}
_SANDBOX = {"obsolete": "deny", "elevateprivileges": "deny", "spawn": "deny", "resourcecontrol": "deny"}


def effective_accel(profile: Profile, host: HostFacts) -> str:
    """kvm or tcg: `auto` means kvm only where KVM is usable *and* hardware-assisted (a software KVM
    such as kvm_pvm runs guests far slower than TCG and fails on common CPU models) *and* the guest is of
    the host's architecture."""
    if profile.machine.accel != "auto":
        return profile.machine.accel
    native = profile.machine.arch == host.arch
    return "kvm" if native and host.kvm_usable and host.kvm_hardware else "tcg"


def accel_notice(profile: Profile, host: HostFacts) -> str | None:
    """The notice the runtime prints when `accel: auto` falls back to TCG (None otherwise)."""
    if profile.machine.accel != "auto" or effective_accel(profile, host) == "kvm":
        return None
    if profile.machine.arch != host.arch:
        why = f"an {profile.machine.arch} guest on an {host.arch} host"
    else:
        why = "KVM is software-only on this host" if host.kvm_usable else "/dev/kvm is not usable"
    return f"machine.accel auto: using TCG ({why})"


def effective_cpu(profile: Profile, host: HostFacts) -> str:
    """The -cpu value. `machine.cpu` is passed as written (a model with optional `,feature=on` flags,
    as `-cpu` takes them); the default is host under KVM and max under TCG. On a software KVM,
    `-cpu host` aborts while setting MSR 0x10a (IA32_ARCH_CAPABILITIES): leave that MSR out."""
    if profile.machine.cpu:
        return profile.machine.cpu
    if effective_accel(profile, host) == "tcg":
        return ARCHES[profile.machine.arch].tcg_cpu
    return "host" if host.kvm_hardware or profile.machine.arch != "x86_64" else "host,arch-capabilities=off"


def kvm_problem(profile: Profile, host: HostFacts) -> str | None:
    """Why the profile cannot run here under KVM (for the launcher; `render` still shows the argv)."""
    if effective_accel(profile, host) != "kvm":
        return None
    if profile.machine.arch != host.arch:
        return (f"machine.accel is kvm, but KVM runs only {host.arch} guests on this {host.arch} host and this "
                f"guest is {profile.machine.arch}: use accel: tcg or auto")
    if not host.kvm_usable:
        return "machine.accel is kvm but /dev/kvm is not usable here: use accel: tcg or auto"
    return None


class _Compiler:
    def __init__(self, profile: Profile, paths: InstancePaths, host: HostFacts, ports: PortPlan) -> None:
        self.p = profile
        self.paths = paths
        self.host = host
        self.ports = ports
        self.out: list[Option] = []
        kind = profile.machine.type
        self.microvm = kind == "microvm"
        self.q35 = kind == "q35" or kind.startswith("pc-q35")
        self.uefi = profile.machine.firmware == "uefi"
        self.arch = ARCHES[profile.machine.arch]
        self.virt = profile.machine.arch == "aarch64"
        self.bootindex = self._bootindex_plan()
        self.scsi_controller = False
        self.ide_slots: list[str] = []  # buses already taken on the machine's IDE/AHCI
        self.sata_ports = 0  # ports used on the extra ich9-ahci of a pc machine
        self.virtiofs = shares_.any_virtiofs(profile, host)

    def add(self, fields: tuple[str, ...] | str, *args: str) -> None:
        self.out.append(Option(tuple(args), (fields,) if isinstance(fields, str) else fields))

    # -- machine ---------------------------------------------------------------------------------------
    def machine(self) -> None:
        m = self.p.machine
        if m.type not in self.host.machines:
            raise UsageError(f"machine.type: {m.type!r} is not a machine of {self.p.qemu.binary} "
                             f"(see {self.p.qemu.binary} -machine help)")
        self.add("name", "-name", keyvals(None, {"guest": self.p.name, "process": f"qemu-{self.p.name}",
                                                 "debug-threads": True}))
        props: dict[str, str | int | bool | None] = {"mem-merge": m.mem_merge}
        fields = ["machine.type", "machine.mem_merge"]
        if m.hugepages or self.virtiofs:
            props["memory-backend"] = "mem0"
            fields.append("machine.hugepages" if m.hugepages else "shares")
        if self.virt:
            # GICv3 lets a TCG guest have more than 8 vCPUs; under KVM the interrupt controller is the host's.
            props["gic-version"] = "host" if effective_accel(self.p, self.host) == "kvm" else 3
            fields.append("machine.arch")
        if self.uefi:
            props.update({"pflash0": "pflash0", "pflash1": "pflash1"})
            fields.append("machine.firmware")
        if m.secure_boot:
            props["smm"] = True  # the variable store is written from SMM only: the OS cannot turn Secure Boot off
            fields.append("machine.secure_boot")
        self.add(tuple(fields), "-machine", keyvals(m.type, props))
        self.add("machine.accel", "-accel", effective_accel(self.p, self.host))
        cpu_fields = ("machine.cpu",) if m.cpu else ("machine.cpu", "machine.accel")
        self.add(cpu_fields, "-cpu", effective_cpu(self.p, self.host))
        self.add("machine.cpus", "-smp", str(m.cpus))
        self.add("machine.memory", "-m", f"{m.memory}M")
        if m.hugepages:
            self.add(("machine.hugepages", "machine.memory"), "-object", keyvals("memory-backend-file", {
                "id": "mem0", "size": f"{m.memory}M", "mem-path": "/dev/hugepages", "share": True,
                "prealloc": True, "merge": m.mem_merge}))
        elif self.virtiofs:
            # vhost-user: virtiofsd maps guest RAM, so it must be shared memory (hugepages above already is).
            self.add(("shares", "machine.memory"), "-object", keyvals("memory-backend-memfd", {
                "id": "mem0", "size": f"{m.memory}M", "share": True, "merge": m.mem_merge}))
        if self.uefi:
            self.firmware()
        self.add("(qemuvm: no default devices)", "-nodefaults")
        self.add("(qemuvm: no host config files)", "-no-user-config")

    def firmware(self) -> None:
        if not self.host.ovmf_code:
            firmware = "AAVMF" if self.virt else "OVMF"
            raise UsageError(f"machine.firmware: uefi needs {firmware} (apt-get install {self.arch.firmware_package})")
        code = self.host.ovmf_code
        if self.p.machine.secure_boot:
            if not self.host.ovmf_secboot_code:
                raise UsageError("machine.secure_boot needs OVMF's Secure Boot build (OVMF_CODE_4M.secboot.fd; "
                                 "apt-get install ovmf)")
            code = self.host.ovmf_secboot_code
            self.add("machine.secure_boot", "-global", "driver=cfi.pflash01,property=secure,value=on")
        for node, path, readonly in (("pflash0", code, True),
                                     ("pflash1", str(self.paths.uefi_vars), False)):
            self.add("machine.firmware", "-blockdev", keyvals(None, {
                "driver": "file", "node-name": f"{node}-file", "filename": path, "read-only": readonly or None}))
            self.add("machine.firmware", "-blockdev", keyvals(None, {
                "driver": "raw", "node-name": node, "file": f"{node}-file", "read-only": readonly or None}))

    # -- process and monitors ----------------------------------------------------------------------------
    def process(self, start_paused: bool) -> None:
        self.add("(qemuvm: pidfile)", "-pidfile", str(self.paths.pidfile))
        self.add("(qemuvm: log timestamps)", "-msg", "timestamp=on")
        bridged = [f"network[{i}].mode" for i, nic in enumerate(self.p.network)
                   if nic.mode == "bridge" and not nic.network]
        if not bridged:
            # The seccomp filter also sets no_new_privs, which would stop the setuid qemu-bridge-helper:
            # a VM with a bridge NIC runs without the sandbox.
            self.add("(qemuvm: seccomp sandbox)", "-sandbox", keyvals("on", _SANDBOX))
        for chardev, path, why in (("qmp-supervisor", self.paths.supervisor_socket, "supervisor monitor"),
                                   ("qmp", self.paths.qmp_socket, "client monitor")):
            self.add(f"(qemuvm: {why})", "-chardev", self._socket(chardev, str(path)))
            self.add(f"(qemuvm: {why})", "-mon", keyvals(None, {"chardev": chardev, "mode": "control"}))
        if start_paused:
            self.add("(qemuvm: start paused until the supervisor is connected)", "-S")

    @staticmethod
    def _socket(chardev: str, path: str, extra: dict[str, str | bool] | None = None) -> str:
        return keyvals("socket", {"id": chardev, "path": path, "server": True, "wait": False, **(extra or {})})

    def serial(self) -> None:
        extra: dict[str, str | bool] = {}
        if self.p.serial.log:
            extra = {"logfile": str(self.paths.serial_log), "logappend": True}
        self.add("serial.log", "-chardev", self._socket("serial0", str(self.paths.serial_socket), extra))
        self.add("serial", "-serial", "chardev:serial0")

    # -- boot --------------------------------------------------------------------------------------------
    def _bootindex_plan(self) -> dict[tuple[str, int], int]:
        """UEFI only: (kind, index) -> bootindex, following boot.order (see the module docstring)."""
        boot = self.p.boot
        if not self.uefi or not boot.order:
            return {}
        plan: dict[tuple[str, int], int] = {}
        for kind in boot.order:
            if kind == "network":
                members = [("nic", i) for i in range(len(self.p.network))]
            else:
                members = [("disk", i) for i, d in enumerate(self.p.disks) if (kind == "cdrom") == d.is_cdrom]
            for member in members:
                plan[member] = len(plan) + 1
        return plan

    def boot(self, first_boot: bool) -> None:
        boot = self.p.boot
        if boot.kernel:
            self.add("boot.kernel", "-kernel", boot.kernel)
            if boot.initrd:
                self.add("boot.initrd", "-initrd", boot.initrd)
            shared, addresses = shares_.kernel_params(self.p, self.host), segment.kernel_params(self.p)
            if boot.cmdline or shared or addresses:
                fields = ("boot.cmdline", *(["shares"] if shared else []), *(["network"] if addresses else []))
                self.add(fields, "-append", " ".join([*([boot.cmdline] if boot.cmdline else []), *shared,
                                                       *addresses]))
        once = boot.once if first_boot else None
        if self.uefi or not (boot.order or once):
            return
        props: dict[str, str | int | bool | None] = {}
        fields = []
        if boot.order:
            props["order"] = "".join(_BOOT_LETTER[d] for d in boot.order)
            fields.append("boot.order")
        if once:
            props["once"] = _BOOT_LETTER[once]
            fields.append("boot.once")
        self.add(tuple(fields), "-boot", keyvals(None, props))

    # -- disks -------------------------------------------------------------------------------------------
    def disks(self) -> None:
        for index, disk in enumerate(self.p.disks):
            self.disk(index, disk)
        if self.p.cloud_init is not None:
            self.seed()

    def _blockdev(self, node: str, filename: str, fmt: str, fields: tuple[str, ...],
                  common: dict[str, str | int | bool | None], protocol: str = "file") -> None:
        self.add(fields, "-blockdev", keyvals(None, {
            "driver": protocol, "node-name": f"{node}-file", "filename": filename, **common}))
        self.add(fields, "-blockdev", keyvals(None, {
            "driver": fmt, "node-name": node, "file": f"{node}-file", **common}))

    def disk(self, index: int, disk: Disk) -> None:
        at = f"disks[{index}]"
        node = f"disk{index}"
        direct, no_flush, write_cache = _CACHE[disk.cache]
        readonly = disk.readonly or disk.is_cdrom
        common = {"cache.direct": direct, "cache.no-flush": no_flush,
                  "discard": "unmap" if disk.discard else None, "read-only": True if readonly else None}
        fields = [f"{at}.file"]
        fields += [f"{at}.{n}" for n in ("format", "cache", "discard", "readonly") if n in disk.model_fields_set]
        if disk.ephemeral:
            # The per-instance overlay (made by prepare) names the image as its backing file.
            self._blockdev(node, str(self.paths.overlay(index)), "qcow2", (*fields, f"{at}.ephemeral"), common)
        else:
            # QEMU's `file` driver refuses a device node: a block device (a path under /dev, as libvirt's
            # <disk type='block'>) is opened with host_device, an optical drive with host_cdrom.
            protocol = ("host_cdrom" if disk.is_cdrom else "host_device") if disk.path.startswith("/dev/") else "file"
            self._blockdev(node, disk.path, disk.image_format, tuple(fields), common, protocol)
        driver, placement = self._disk_device(index, disk)
        props: dict[str, str | int | bool | None] = {**placement, "drive": node, "id": f"{node}-dev"}
        props["serial"] = disk.serial or (f"disk{index}" if disk.interface == "nvme" else None)
        props["write-cache"] = write_cache
        props["bootindex"] = self.bootindex.get(("disk", index))
        device_fields = [f"{at}.interface"] + [f"{at}.{n}" for n in ("media", "serial") if n in disk.model_fields_set]
        self.add(tuple(device_fields), "-device", keyvals(driver, props))

    def _disk_device(self, index: int, disk: Disk) -> tuple[str, dict[str, str | int | bool | None]]:
        at = f"disks[{index}].interface"
        cd = disk.is_cdrom
        if disk.interface == "virtio":
            return ("virtio-blk-device" if self.microvm else "virtio-blk-pci"), {}
        if disk.interface == "nvme":
            return "nvme", {}
        if disk.interface == "scsi":
            self._scsi_controller(at)
            return ("scsi-cd" if cd else "scsi-hd"), {"bus": "scsi0.0"}
        driver = "ide-cd" if cd else "ide-hd"
        if disk.interface == "sata" and not self.q35:
            # A pc machine has no AHCI: add an ich9-ahci controller (6 ports).
            if self.sata_ports == 0:
                self.add(at, "-device", keyvals("ich9-ahci", {"id": "sata0"}))
            if self.sata_ports == 6:
                raise UsageError(f"{at}: at most 6 sata disks fit on the AHCI controller")
            self.sata_ports += 1
            return driver, {"bus": f"sata0.{self.sata_ports - 1}"}
        # ide on pc: two IDE buses with two units each; ide and sata on q35: the built-in AHCI's 6 ports.
        used = len(self.ide_slots)
        if self.q35:
            if used == 6:
                raise UsageError(f"{at}: at most 6 ide/sata disks fit on the q35 AHCI controller")
            self.ide_slots.append(f"ide.{used}")
            return driver, {"bus": f"ide.{used}"}
        if used == 4:
            raise UsageError(f"{at}: at most 4 ide disks fit on a pc machine")
        self.ide_slots.append(f"ide.{used // 2}")
        return driver, {"bus": f"ide.{used // 2}", "unit": used % 2}

    def _scsi_controller(self, fields: str) -> None:
        if not self.scsi_controller:
            self.add(fields, "-device", keyvals("virtio-scsi-pci", {"id": "scsi0"}))
            self.scsi_controller = True

    def seed(self) -> None:
        """The NoCloud seed ISO (built by prepare): on virtio-scsi, since Debian's cloud kernel has no AHCI;
        a microvm has no PCI, so there it is a read-only virtio-blk-device."""
        self._blockdev("seed", str(self.paths.seed_iso), "raw", ("cloud_init",), {"read-only": True})
        if self.microvm:
            self.add("cloud_init", "-device", keyvals("virtio-blk-device", {"drive": "seed", "id": "seed-dev"}))
            return
        self._scsi_controller("cloud_init")
        self.add("cloud_init", "-device", keyvals("scsi-cd", {"bus": "scsi0.0", "drive": "seed", "id": "seed-dev"}))

    # -- network -----------------------------------------------------------------------------------------
    def network(self) -> None:
        ssh_pending = self.ports.ssh_host_port is not None
        for index, nic in enumerate(self.p.network):
            at = f"network[{index}]"
            netdev, fields = self._netdev(index, nic)
            if ssh_pending and nic.mode in ("user", "passt"):
                if nic.mode == "user":  # passt's forwards are on its own command line (qemu/passt.py)
                    netdev += f",hostfwd=tcp:127.0.0.1:{self.ports.ssh_host_port}-:{self.p.ssh.port}"
                fields = (*fields, "(qemuvm: ssh forward)", "ssh.port")
                ssh_pending = False
            self.add(fields, "-netdev", netdev)
            driver = "virtio-net-device" if self.microvm else _NIC_MODEL[nic.model]
            mac = derive_mac(self.p.name, index) if nic.mac == "auto" else nic.mac.lower()
            self.add((f"{at}.model", f"{at}.mac"), "-device", keyvals(driver, {
                "netdev": f"net{index}", "id": f"net{index}-dev", "mac": mac,
                "bootindex": self.bootindex.get(("nic", index))}))

    def _netdev(self, index: int, nic: Nic) -> tuple[str, tuple[str, ...]]:
        at = f"network[{index}]"
        if nic.mode == "bridge" and nic.network:
            # QEMU opens (and on exit removes) the tap; the supervisor puts it on the network's bridge.
            return keyvals("tap", {"id": f"net{index}", "ifname": natnet.tap_name(self.p.name, index),
                                   "script": "no", "downscript": "no"}), (f"{at}.mode", f"{at}.network")
        if nic.mode == "bridge":
            if not self.host.bridge_helper:
                raise UsageError(f"{at}.mode: bridge needs qemu-bridge-helper (apt-get install qemu-system-common)")
            return keyvals("bridge", {"id": f"net{index}", "br": nic.bridge or "br0",
                                      "helper": self.host.bridge_helper}), (f"{at}.mode", f"{at}.bridge")
        if nic.mode == "passt":
            if not self.host.passt:
                raise UsageError(f"{at}.mode: passt is not installed (apt-get install passt), or use mode user")
            # passt (started by the supervisor before QEMU) is the other end of this stream socket.
            return keyvals("stream", {"id": f"net{index}", "server": False, "addr.type": "unix",
                                      "addr.path": passt.socket(self.paths, index)}), \
                (f"{at}.mode", *((f"{at}.forwards",) if nic.forwards else ()))
        if nic.mode == "segment":
            # Its port (runtime/segment.py, started by the supervisor before QEMU) is the other end.
            return keyvals("stream", {"id": f"net{index}", "server": False, "addr.type": "unix",
                                      "addr.path": segment.socket(self.paths, index)}), \
                (f"{at}.mode", f"{at}.segment")
        if nic.mode == "tap":
            return keyvals("tap", {"id": f"net{index}", "ifname": nic.ifname, "script": "no",
                                   "downscript": "no"}), (f"{at}.mode", f"{at}.ifname")
        text = keyvals("user", {"id": f"net{index}"})
        for number, fwd in enumerate(nic.forwards):
            host_port = self.ports.forwards.get((index, number), fwd.host) if fwd.host == 0 else fwd.host
            text += ",hostfwd=" + escape(f"{fwd.protocol}:{fwd.address}:{host_port}-:{fwd.guest}")
        return text, ((f"{at}.mode", f"{at}.forwards") if nic.forwards else (f"{at}.mode",))

    # -- shares, agent, panic ----------------------------------------------------------------------------
    def shares(self) -> None:
        shares_.check(self.p, self.host)
        driver = "virtio-9p-device" if self.microvm else "virtio-9p-pci"
        for index, share in enumerate(self.p.shares):
            at = f"shares[{index}]"
            if shares_.kind(share, self.host) == shares_.VIRTIOFS:
                # virtiofsd (started by the supervisor before QEMU) serves the folder on this socket.
                self.add((f"{at}.type", f"{at}.source"), "-chardev", keyvals("socket", {
                    "id": f"vfs{index}", "path": shares_.socket(self.paths, index)}))
                self.add(f"{at}.tag", "-device", keyvals(
                    "vhost-user-fs-device" if self.microvm else "vhost-user-fs-pci",
                    {"chardev": f"vfs{index}", "tag": share.tag, "id": f"fs{index}-dev"}))
                continue
            # security_model=none: the guest sees the host's owners and modes, and files it creates belong
            # to the (non-root) user running QEMU -- right for sharing your own folders. mapped-xattr would
            # hide ownership in xattrs that other host tools do not understand.
            self.add((f"{at}.source", f"{at}.readonly"), "-fsdev", keyvals("local", {
                "id": f"fs{index}", "path": share.source, "security_model": "none",
                "readonly": True if share.readonly else None}))
            self.add(f"{at}.tag", "-device", keyvals(driver, {
                "fsdev": f"fs{index}", "mount_tag": share.tag, "id": f"fs{index}-dev"}))

    def tpm(self) -> None:
        if not self.p.machine.tpm:
            return
        if not self.host.swtpm:
            raise UsageError("machine.tpm needs swtpm (apt-get install swtpm swtpm-tools)")
        self.add("machine.tpm", "-chardev", keyvals("socket", {"id": "tpm0-ctrl", "path": str(self.paths.tpm_socket)}))
        self.add("machine.tpm", "-tpmdev", keyvals("emulator", {"id": "tpm0", "chardev": "tpm0-ctrl"}))
        self.add("machine.tpm", "-device", keyvals(self.arch.tpm_device, {"tpmdev": "tpm0", "id": "tpm0-dev"}))

    def guest_agent(self) -> None:
        if not self.p.guest_agent:
            return
        self.add("guest_agent", "-device", keyvals(
            "virtio-serial-device" if self.microvm else "virtio-serial-pci", {"id": "vserial0"}))
        self.add("guest_agent", "-chardev", self._socket("qga0", str(self.paths.guest_agent_socket)))
        self.add("guest_agent", "-device", keyvals("virtserialport", {
            "bus": "vserial0.0", "chardev": "qga0", "name": "org.qemu.guest_agent.0"}))

    def panic(self) -> None:
        # An ISA device; microvm has an ISA bus too (checked with QEMU 7.2); virt has none: pvpanic-pci.
        # Gives GUEST_PANICKED events.
        self.add("(qemuvm: guest panic events)", "-device", self.arch.panic_device)

    # -- display -----------------------------------------------------------------------------------------
    def display(self) -> None:
        # qemuvm never opens a window; a VNC server (below) is independent of -display.
        self.add("display", "-display", "none")
        display = self.p.display
        if display is None:
            return
        vga = display.vga
        if vga == "none" and display.vnc is not None:
            vga = "std"  # VNC needs a console to show (and screendump one to capture)
        if vga != "none":
            fields = ("display.vga",) if display.vga != "none" else ("display.vga", "display.vnc")
            self.add(fields, "-device", keyvals(self.arch.vga[vga], {"id": "video0"}))
        if display.vnc is not None:
            self.vnc()

    def vnc(self) -> None:
        vnc = self.p.display.vnc  # type: ignore[union-attr]
        assert vnc is not None
        fields: tuple[str, ...] = ("display.vnc.listen", "display.vnc.port")
        if vnc.port == "unix":
            target = "unix:" + escape(str(self.paths.vnc_socket))
            fields = ("display.vnc.port",)
        else:
            host = f"[{vnc.listen}]" if ipaddress.ip_address(vnc.listen).version == 6 else vnc.listen
            if vnc.port != "auto":
                target = f"{host}:{int(vnc.port) - 5900}"
            elif self.ports.vnc_port is not None:
                target = f"{host}:{self.ports.vnc_port - 5900}"
            else:
                target = f"{host}:0,to=99"  # QEMU takes the first free display from 5900 up
        if vnc.needs_password:
            target += ",password=on"  # the supervisor sets it over QMP (set_password) before the guest runs
            fields = (*fields, "display.vnc.password_file" if vnc.password_file else "display.vnc.password")
        self.add(fields, "-vnc", target)

    # -- extra args --------------------------------------------------------------------------------------
    def extra(self) -> None:
        for group in _groups(self.p.qemu.extra_args):
            self.add("qemu.extra_args", *group)


def _groups(args: list[str]) -> Iterator[list[str]]:
    """Split verbatim args into one group per option (a dash word and its values), for display."""
    group: list[str] = []
    for arg in args:
        if arg.startswith("-") and group:
            yield group
            group = []
        group.append(arg)
    if group:
        yield group


def compile_options(
    profile: Profile,
    paths: InstancePaths,
    host: HostFacts,
    ports: PortPlan | None = None,
    *,
    start_paused: bool = False,
    first_boot: bool = True,
) -> list[Option]:
    """Every QEMU option for `profile`, in a stable order, each with the fields behind it.

    `first_boot` False leaves out `boot.once`: an install ISO boots once per instance, as with virt-install.
    """
    c = _Compiler(profile, paths, host, ports or PortPlan())
    c.machine()
    c.process(start_paused)
    c.serial()
    c.boot(first_boot)
    c.disks()
    c.network()
    c.shares()
    c.tpm()
    c.guest_agent()
    c.panic()
    c.display()
    c.extra()
    return c.out


def compile_argv(profile: Profile, paths: InstancePaths, host: HostFacts, ports: PortPlan | None = None,
                 **switches: bool) -> list[str]:
    """The full command line: the QEMU binary, then every option of `compile_options` (same switches:
    start_paused, first_boot) in order."""
    options = compile_options(profile, paths, host, ports, **switches)
    return [profile.qemu.binary, *(arg for option in options for arg in option.args)]
