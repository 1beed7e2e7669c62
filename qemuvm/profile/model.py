"""Typed models for every section of the profile format (shared/PROFILE.md is the contract).

Descriptions here become the JSON schema (`qemuvm schema`, `qemuvm/profile.schema.json`).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from qemuvm.profile.types import NAME_PATTERN, Duration, MemoryMiB, Regex, SafeStr, SizeBytes

# Options qemuvm always or conditionally generates that QEMU accepts only once; repeating one in
# `qemu.extra_args` is an error rather than a silent override (PROFILE.md).
SINGLE_VALUED_OPTIONS = frozenset({
    "-machine", "-M", "-accel", "-enable-kvm", "-cpu", "-smp", "-m", "-name", "-pidfile", "-nodefaults",
    "-no-user-config", "-display", "-nographic", "-vnc", "-sandbox", "-msg", "-kernel", "-initrd",
    "-append", "-boot", "-bios", "-mem-path",
})
# Options that would break supervision outright.
FORBIDDEN_OPTIONS = frozenset({"-daemonize"})

# What `machine.arch` changes when the profile does not say otherwise: the QEMU binary, the machine type, the
# firmware (an aarch64 guest has no BIOS: UEFI, AAVMF) and the accelerator (an aarch64 profile usually runs
# on x86 hosts, where KVM cannot run it: auto uses KVM on an arm64 host and TCG elsewhere).
ARCH_DEFAULTS: dict[str, dict[str, str]] = {
    "x86_64": {"binary": "qemu-system-x86_64", "type": "q35", "firmware": "bios", "accel": "kvm"},
    "aarch64": {"binary": "qemu-system-aarch64", "type": "virt", "firmware": "uefi", "accel": "auto"},
}


class Section(BaseModel):
    """Base of every profile section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Machine(Section):
    arch: Literal["x86_64", "aarch64"] = Field(
        "x86_64", description="The guest's CPU architecture: x86_64 (default; qemu-system-x86_64) | aarch64 "
        "(qemu-system-aarch64, machine virt, UEFI firmware; under TCG on an x86_64 host). It sets the defaults of "
        "qemu.binary, machine.type, machine.firmware and machine.accel")
    type: SafeStr = Field("q35", description="q35 (default on x86_64) | pc | microvm | virt (default and the "
                          "only family on aarch64) | any machine name QEMU lists")
    accel: Literal["kvm", "tcg", "auto"] = Field(
        "kvm",
        description="kvm (-enable-kvm; an error if /dev/kvm is unusable, or for a guest of another architecture "
        "than the host's) | tcg | auto (kvm where the host's KVM is hardware-assisted, usable and of the guest's "
        "architecture, else tcg with a notice). Default kvm on x86_64, auto on aarch64",
    )
    cpu: SafeStr | None = Field(None, description="CPU model; default host under kvm, max under tcg (aarch64: "
                                "max,pauth-impdef=on, whose cheaper pointer authentication boots faster)")
    cpus: int = Field(1, ge=1, le=288, description="Number of vCPUs (-smp)")
    memory: MemoryMiB = Field(512, description="Guest RAM; a bare integer means MiB, as in QEMU's -m")
    hugepages: bool = Field(False, description="Back guest RAM with hugetlbfs (/dev/hugepages)")
    mem_merge: bool = Field(True, description="KSM page merging (-machine mem-merge=on|off)")
    firmware: Literal["bios", "uefi"] = Field(
        "bios", description="bios (SeaBIOS; default on x86_64) | uefi (OVMF, AAVMF on aarch64, where it is the "
        "default and the only firmware; the variables file is copied per instance)"
    )

    tpm: bool = Field(False, description="A TPM 2.0 (swtpm, run beside QEMU; tpm-crb, tpm-tis-device on aarch64). "
                      "Its state lives in the instance folder: it lasts across down/start and save/start, and "
                      "warm clones start from a copy of their template's (sharing its identity)")
    secure_boot: bool = Field(False, description="UEFI Secure Boot: OVMF's Secure Boot build with Microsoft's keys "
                              "enrolled (or uefi_vars), SMM on. Needs firmware: uefi and a q35 machine (x86_64)")
    uefi_vars: SafeStr | None = Field(None, description="The UEFI variables file each instance starts from (copied "
                                      "once, at its first start): e.g. one with your own Secure Boot keys enrolled. "
                                      "Default: OVMF's (with Microsoft's keys under secure_boot)")

    @model_validator(mode="before")
    @classmethod
    def _arch_defaults(cls, data: Any) -> Any:
        """Another arch's defaults for the fields the profile leaves out (ARCH_DEFAULTS)."""
        arch = data.get("arch") if isinstance(data, dict) else None
        if isinstance(arch, str) and arch in ARCH_DEFAULTS and arch != "x86_64":
            defaults = ARCH_DEFAULTS[arch]
            return {**{key: defaults[key] for key in ("type", "firmware", "accel")}, **data}
        return data


BootDevice = Literal["disk", "cdrom", "network"]


class Boot(Section):
    kernel: SafeStr | None = Field(None, description="Direct kernel boot: the kernel image")
    initrd: SafeStr | None = Field(None, description="Initial ramdisk for direct kernel boot")
    cmdline: SafeStr | None = Field(None, description="Kernel command line for direct kernel boot")
    order: list[BootDevice] | None = Field(None, description="Firmware boot order, e.g. [disk, cdrom, network]")
    once: BootDevice | None = Field(None, description="Boot this device once (an install), then follow order")

    @model_validator(mode="after")
    def _kernel_parts(self) -> Boot:
        if (self.initrd or self.cmdline) and not self.kernel:
            raise ValueError("initrd and cmdline need boot.kernel (direct kernel boot)")
        if self.order and len(set(self.order)) != len(self.order):
            raise ValueError("boot.order lists a device twice")
        return self


Digest = Annotated[str, Field(pattern=r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")]


class Disk(Section):
    file: SafeStr | None = Field(None, description="Image file; relative to the profile that names it. Exactly one "
                                 "of file, url and image")
    url: SafeStr | None = Field(
        None, description="An http(s) URL of the image: pulled into the verified cache on first use (`qemuvm image "
        "pull`); the VM runs on an overlay in its instance folder, so the cached image is never written. Needs "
        "digest or sums")
    image: SafeStr | None = Field(
        None, description="A catalog image by name (`qemuvm image catalog`: debian-12, ubuntu-24.04, ...), for "
        "machine's architecture; pulled and verified against the distribution's checksum file, as url is")
    digest: Digest | None = Field(None, description="sha256:HEX or sha512:HEX: what url's content must hash to")
    sums: SafeStr | None = Field(
        None, description="URL of a SHA256SUMS or SHA512SUMS file (GNU or BSD lines) that names url's file: "
        "its digest, read at each pull")
    format: Literal["raw", "qcow2"] | None = Field(
        None, description="raw | qcow2; default from the extension (.qcow2 -> qcow2, else raw)"
    )
    size: SizeBytes | None = Field(
        None, description="Create the file with this size if it does not exist; never resizes an existing one"
    )
    interface: Literal["virtio", "scsi", "nvme", "ide", "sata"] = Field(
        "virtio",
        description="virtio (default for disks) | scsi (virtio-scsi; the default for a cdrom, on q35 and pc "
        "alike: SeaBIOS and OVMF boot from it and every Linux guest kernel reads it, while Debian's cloud "
        "kernel has no AHCI or ATA driver for ide/sata) | nvme | ide | sata. A cdrom cannot be virtio or nvme",
    )
    media: Literal["disk", "cdrom"] = Field("disk", description="cdrom media are read-only")
    readonly: bool = False
    cache: Literal["none", "writeback", "writethrough", "directsync", "unsafe"] = "writeback"
    discard: bool = Field(False, description="Pass guest TRIM/discard through to the image (discard=unmap)")
    ephemeral: bool = Field(
        False, description="Writes go to a per-instance qcow2 overlay; the file itself is never written"
    )
    serial: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,20}$")] | None = Field(
        None, description="Drive serial number (letters, digits, _ . -; at most 20)"
    )

    @property
    def image_format(self) -> str:
        if self.format:
            return self.format
        return "qcow2" if (self.file or "").lower().endswith(".qcow2") else "raw"

    @property
    def path(self) -> str:
        """The image file; a url or image disk has one once runtime/imagecache.resolve_disks set it."""
        if self.file is None:
            raise ValueError(f"the image of {self.url or self.image} has no local path yet (not resolved)")
        return self.file

    @property
    def is_cdrom(self) -> bool:
        return self.media == "cdrom"

    @model_validator(mode="before")
    @classmethod
    def _cdrom_interface(cls, data: Any) -> Any:
        """A cdrom without an interface goes on virtio-scsi (see the interface field), not virtio-blk."""
        if isinstance(data, dict) and data.get("media") == "cdrom" and data.get("interface") is None:
            return {**data, "interface": "scsi"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Disk:
        sources = [name for name in ("file", "url", "image") if getattr(self, name) is not None]
        if len(sources) != 1:
            both = f" (not {sources[0]} and {sources[1]})" if sources else ""
            raise ValueError(f"a disk has exactly one of file, url or image{both}")
        for field, value in (("url", self.url), ("sums", self.sums)):
            try:
                _ = urllib.parse.urlsplit(value or "").port
            except ValueError as exc:
                raise ValueError(f"{field} is not a valid URL ({exc})") from None
        if self.url is not None:
            if not re.match(r"^https?://[^/\s]+", self.url):
                raise ValueError("url must be an http:// or https:// URL")
            if self.digest is None and self.sums is None:
                raise ValueError("a url disk needs digest (sha256:HEX) or sums (a SHA256SUMS URL) to verify it")
        elif self.digest is not None or self.sums is not None:
            raise ValueError("digest and sums verify a url disk; this disk has no url")
        if self.sums is not None and not re.match(r"^https?://[^/\s]+", self.sums):
            raise ValueError("sums must be an http:// or https:// URL")
        if (self.url or self.image) and self.size is not None:
            raise ValueError("a url or image disk is downloaded, not created with size")
        if self.is_cdrom and self.size is not None:
            raise ValueError("a cdrom cannot be created with size")
        if self.ephemeral and self.size is not None:
            raise ValueError("an ephemeral disk needs an existing file to overlay, not size")
        return self


class CloudInit(Section):
    user_data: str | dict[str, Any] | None = Field(
        None, description="A path to a user-data file, or an inline mapping written as #cloud-config"
    )
    meta_data: dict[str, Any] | None = Field(
        None, description="Default: instance-id and local-hostname = the instance name"
    )
    network_config: str | dict[str, Any] | None = Field(None, description="A path or an inline mapping")


class Forward(Section):
    host: int = Field(ge=0, le=65535, description="Host port; 0 picks a free one")
    guest: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"
    address: SafeStr = Field("127.0.0.1", description="Host address to bind; empty binds all")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if value:
            ipaddress.ip_address(value)
        return value


_HOSTFWD = re.compile(r"^(tcp|udp):([0-9.]*):(\d{1,5})-([0-9.]*):(\d{1,5})$")


def parse_hostfwd(text: Any) -> Any:
    """QEMU's hostfwd spelling `tcp:127.0.0.1:2222-:22` as Forward fields; other values pass through."""
    if not isinstance(text, str):
        return text
    match = _HOSTFWD.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a forward such as 'tcp:127.0.0.1:2222-:22'")
    protocol, address, host, _guest_addr, guest = match.groups()
    return {"host": int(host), "guest": int(guest), "protocol": protocol, "address": address}


class Nic(Section):
    mode: Literal["user", "passt", "segment", "bridge", "tap"] = Field(
        "user", description="user (QEMU's NAT, no root) | passt (passt's user-mode networking, a supervised helper: "
        "IPv6) | segment (an L2 segment shared by this host's VMs that name it; no root, never leaves the host) | "
        "bridge (qemu-bridge-helper) | tap (an existing device)"
    )
    segment: Annotated[str, Field(pattern=NAME_PATTERN)] | None = Field(
        None, description="segment mode: the segment's name (every VM of this user naming it is on it)")
    address: SafeStr | None = Field(
        None, description="segment mode: the guest's address on it (CIDR, e.g. 10.10.0.2/24), set through the "
        "test guest's kernel command line (qemuvm.ip=ethN:CIDR) for a direct-boot kernel")
    forwards: list[Annotated[Forward, BeforeValidator(parse_hostfwd)]] = Field(
        default_factory=list, description="user and passt modes: QEMU hostfwd strings or {host, guest, protocol, "
        "address}"
    )
    bridge: SafeStr | None = Field(None, description="bridge mode: the host bridge, joined through "
                                   "qemu-bridge-helper (default br0)")
    network: Annotated[str, Field(pattern=NAME_PATTERN)] | None = Field(
        None, description="bridge mode: a qemuvm NAT network (`qemuvm network create NAME`, root) instead of "
        "`bridge`: QEMU opens a tap named for the instance and NIC, the supervisor puts it on the network's "
        "bridge; the guest gets its address by DHCP (`qemuvm status` shows it, `qemuvm ssh` uses it)")
    ifname: SafeStr | None = Field(None, description="tap mode: the existing tap device")
    model: Literal["virtio", "e1000", "rtl8139"] = "virtio"
    mac: Annotated[str, Field(pattern=r"^(auto|([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2})$")] = Field(
        "auto", description="auto: stable, derived from the instance name and NIC index"
    )

    @model_validator(mode="after")
    def _mode_fields(self) -> Nic:
        if self.forwards and self.mode not in ("user", "passt"):
            raise ValueError(f"forwards need mode user or passt, not {self.mode}")
        if (self.bridge is not None or self.network is not None) and self.mode != "bridge":
            raise ValueError(f"{'bridge' if self.bridge is not None else 'network'} is only for mode bridge")
        if self.bridge is not None and self.network is not None:
            raise ValueError("give bridge (an existing bridge, via qemu-bridge-helper) or network (a qemuvm "
                             "network), not both")
        if self.ifname is not None and self.mode != "tap":
            raise ValueError("ifname is only for mode tap")
        if self.mode == "tap" and not self.ifname:
            raise ValueError("mode tap needs ifname, the existing tap device")
        if self.mode == "segment" and not self.segment:
            raise ValueError("mode segment needs segment, the segment's name")
        if (self.segment is not None or self.address is not None) and self.mode != "segment":
            raise ValueError("segment and address are only for mode segment")
        if self.address is not None:
            ipaddress.ip_interface(self.address)  # a CIDR address; ValueError says what is wrong
            if "/" not in self.address:
                raise ValueError(f"address {self.address!r} needs its prefix length, e.g. {self.address}/24")
        return self


class Share(Section):
    source: SafeStr = Field(description="Host folder to share (no comma in its path: QEMU cannot carry one)")
    tag: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,31}$")] = Field(description="The guest's mount tag")
    readonly: bool = Field(False, description="Guest writes fail with EROFS; the host can still write")
    type: Literal["auto", "virtiofs", "9p"] = Field(
        "auto", description="virtiofs (a virtiofsd per share, supervised; root only in Debian 12) | 9p (QEMU's "
        "own virtio-9p server, any user) | auto (the default: virtiofs where the host can run virtiofsd, else 9p; "
        "`up` says which)")
    mount: Annotated[str, Field(pattern=r"^/[^\s,:]*$")] | None = Field(
        None, description="Where the guest mounts it at boot: a cloud-init `mounts` entry (with cloud_init), and "
        "qemuvm.share=TYPE:TAG:PATH on a direct-boot kernel's command line (the test guest's init mounts those). "
        "An absolute path without spaces, commas or colons")
    follow_link: bool = Field(
        False, description="source may be a symbolic link to a folder outside the folder that holds the link (e.g. "
        "shared -> /srv/data). Without it such a link is refused; a link within its own folder is followed. Either "
        "way the link is resolved once, at `up`: both share types get the real folder, and `render` shows it")
    cache: Literal["auto", "always", "none"] = Field(
        "auto", description="virtiofs: virtiofsd's -o cache (auto: close-to-open consistency; always: the guest "
        "caches metadata and data for long, fastest when only the guest writes; none: every access goes to the "
        "host). 9p: auto and none mount with cache=none (the host's changes show at once), always with "
        "cache=loose")


def _vnc_port(value: Any) -> str | int:
    if value in ("auto", "unix") or (isinstance(value, int) and not isinstance(value, bool) and 5900 <= value <= 65535):
        return value
    raise ValueError(f"{value!r} is not auto, unix or a TCP port from 5900 to 65535")


class Vnc(Section):
    listen: SafeStr = Field("127.0.0.1", description="Default loopback; any other address needs password_file")
    port: Annotated[str | int, BeforeValidator(_vnc_port)] = Field(
        "auto", description="auto (first free 5900+N) | a TCP port >= 5900 | unix (a socket in the instance dir)"
    )
    password_file: SafeStr | None = Field(
        None, description="File with the VNC password (only the first 8 characters count)"
    )
    password: Literal["auto", "none"] = Field(
        "auto", description="Without password_file, a TCP VNC server gets a password of its own: auto (the "
        "default) makes one per instance (vnc.password in the instance folder, 0600, shown by `qemuvm status`), "
        "so other local users cannot watch or type; none leaves loopback open to every local user (an explicit "
        "choice). A unix socket (port: unix) lives in the 0700 instance folder and needs none",
    )

    @property
    def needs_password(self) -> bool:
        return bool(self.password_file) or (self.port != "unix" and self.password == "auto")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        ipaddress.ip_address(value)
        return value

    @model_validator(mode="after")
    def _exposure(self) -> Vnc:
        if not ipaddress.ip_address(self.listen).is_loopback and not self.password_file:
            raise ValueError(f"listening on {self.listen} (not loopback) requires password_file")
        if self.password_file and self.password == "none":
            raise ValueError("password: none contradicts password_file; drop one of them")
        return self


class Display(Section):
    vga: Literal["std", "virtio", "none"] = Field(
        "std", description="The display device: std (VGA; ramfb on aarch64) | virtio (virtio-vga; virtio-gpu-pci "
        "on aarch64) | none")
    vnc: Vnc | None = Field(None, description="A VNC server; absent: no remote display")


class Serial(Section):
    log: bool = Field(True, description="Also write the console to serial.log in the instance dir")
    log_max: SizeBytes = Field(
        16 << 20, description="serial.log is kept below about this size: past it, its newest half moves to "
        "serial.log.1 (replacing the one before) and serial.log starts again, so a chatty guest cannot fill "
        "the disk. events.jsonl is capped the same way at 4 MiB (events.jsonl.1). Default 16M",
    )


class Restart(Section):
    policy: Literal["never", "on-failure", "always"] = Field(
        "never",
        description="on-failure: after QEMU dies by a signal, a nonzero exit, or a guest panic; "
        "always: also after a guest power-off (never after `down`)",
    )
    max_retries: int = Field(5, ge=0, le=1000)
    backoff: Duration = Field(1.0, ge=0.1, description="Delay before the first restart (at least 0.1s); doubles "
                              "each time, capped at 60s")


class Shutdown(Section):
    timeout: Duration = Field(60.0, description="How long `down` waits for the ACPI shutdown before forcing")


class Ready(Section):
    serial: Regex | None = Field(None, description="A regex that must appear on the serial console")
    ssh: bool = Field(False, description="An SSH command must succeed")
    port: int | None = Field(None, ge=1, le=65535, description="A guest TCP port reachable through a forward")
    agent: bool = Field(False, description="The guest agent answers (needs guest_agent: true, and qemu-ga in the "
                        "guest)")
    timeout: Duration = 120.0


class Ssh(Section):
    user: SafeStr = "root"
    port: int = Field(22, ge=1, le=65535, description="Guest port; the host side comes from a forward or is allocated")
    identity: SafeStr | None = Field(
        None, description="Private key; default a per-instance key injected through cloud-init"
    )


class SmokeCheck(Section):
    name: SafeStr
    ssh: str | None = Field(None, description="A command run over SSH; its exit status must be 0")
    agent: str | None = Field(None, description="A command run by the guest agent through `sh -c` (no network "
                              "needed; the profile needs guest_agent: true); its exit status must be 0")
    serial: Regex | None = Field(None, description="A regex that must appear on the serial console (after the last "
                                 "send/keys step, when there was one)")
    send: str | None = Field(None, description="Type this on the serial console (escapes as `qemuvm send`: \\n, "
                             "\\x03, ...): steps alternate send and serial, as an expect script")
    keys: list[str] | None = Field(None, description="Press these key combos on the VM's keyboard, in order "
                                   "(ctrl-b, ret, ctrl-alt-delete: `qemuvm sendkey`)")
    expect: Regex | None = Field(None, description="A regex the command's output must match (ssh and agent)")
    timeout: Duration | None = Field(None, description="How long this step may take [default: what is left of "
                                     "smoke.timeout]")

    @model_validator(mode="after")
    def _one_kind(self) -> SmokeCheck:
        if [self.ssh, self.agent, self.serial, self.send, self.keys].count(None) != 4:
            raise ValueError("a check has exactly one of ssh, agent, serial, send or keys")
        if self.expect is not None and self.command is None:
            raise ValueError("expect applies to ssh and agent checks")
        return self

    @property
    def command(self) -> str | None:
        return self.ssh if self.ssh is not None else self.agent


class Smoke(Section):
    timeout: Duration = 300.0
    checks: list[SmokeCheck] = Field(default_factory=list)


class Qemu(Section):
    binary: SafeStr = Field("qemu-system-x86_64", description="The QEMU to run; default qemu-system-ARCH for "
                            "machine.arch")
    extra_args: list[SafeStr] = Field(
        default_factory=list,
        description="Appended last, verbatim; repeating a single-valued option qemuvm generates is an error, "
        "and so is anything that listens beyond loopback (a TCP monitor, gdb stub, serial, chardev, -incoming, "
        "SPICE) unless allow_unsafe_args is set",
    )
    allow_unsafe_args: bool = Field(
        False, description="Let extra_args open listeners beyond loopback (an unauthenticated QEMU monitor on the "
        "network gives whoever reaches it the host files QEMU can open). Off by default",
    )


def _default_network() -> list[Nic]:
    return [Nic()]


class Profile(Section):
    """A VM: the document `qemuvm up` reads."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)] = Field(
        description="Instance name; default the file's stem; --name overrides"
    )
    description: str | None = None
    machine: Machine = Field(default_factory=Machine)
    boot: Boot = Field(default_factory=Boot)
    disks: list[Disk] = Field(default_factory=list)
    cloud_init: CloudInit | None = None
    network: list[Nic] = Field(
        default_factory=_default_network, description="Default: one user NIC; [] means no NIC at all"
    )
    shares: list[Share] = Field(default_factory=list)
    display: Display | None = Field(None, description="Absent: headless (-display none)")
    serial: Serial = Field(default_factory=Serial)
    guest_agent: bool = Field(False, description="Add the virtio-serial channel org.qemu.guest_agent.0")
    restart: Restart = Field(default_factory=Restart)
    shutdown: Shutdown = Field(default_factory=Shutdown)
    ready: Ready | None = Field(None, description="What `up --wait` waits for; default: the VM is running")
    ssh: Ssh = Field(default_factory=Ssh)
    smoke: Smoke = Field(default_factory=Smoke)
    qemu: Qemu = Field(default_factory=Qemu)
    # The files it was read from (the profile, then its extends chain): not a field. A repeat start of the same
    # files, unchanged, reuses the last start's records (runtime/reuse.py).
    _sources: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="before")
    @classmethod
    def _arch_binary(cls, data: Any) -> Any:
        """machine.arch's QEMU binary when qemu.binary is left out (ARCH_DEFAULTS)."""
        if not isinstance(data, dict) or not isinstance(data.get("machine"), dict):
            return data
        arch = data["machine"].get("arch")
        qemu = data.get("qemu", {})
        if isinstance(arch, str) and arch in ARCH_DEFAULTS and arch != "x86_64" and isinstance(qemu, dict) \
                and "binary" not in qemu:
            return {**data, "qemu": {**qemu, "binary": ARCH_DEFAULTS[arch]["binary"]}}
        return data

    def __eq__(self, other: object) -> bool:
        """Equal fields make equal profiles, wherever each was read from."""
        return type(self) is type(other) and self.__dict__ == other.__dict__

    __hash__ = Section.__hash__


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a profile file (for editors: yaml-language-server)."""
    schema = Profile.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "qemuvm profile"
    schema["properties"]["extends"] = {"type": "string", "description": "A profile this one extends"}
    schema["required"] = []  # name defaults to the file's stem
    return schema
