"""Validate loaded profile data into a `Profile`, reporting every problem at once.

Each problem is one line, `FILE:LINE: field.path: message`, in the order the file has them.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from qemuvm.errors import ProfileError
from qemuvm.profile.load import FieldPath, LoadedProfile, format_path
from qemuvm.profile.model import FORBIDDEN_OPTIONS, SINGLE_VALUED_OPTIONS, Profile

# pydantic's location parts that name a union member or validator, not a field.
_TYPE_TAGS = {"int", "str", "bool", "float", "none", "dict", "list", "literal"}

_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping of fields",
    "model_attributes_type": "a mapping of fields",
}

_PATTERN_HINTS = {
    "name": "a name of letters, digits, '_', '.' and '-', starting with a letter or digit, at most 63 long",
    "mac": "'auto' or a MAC address such as 52:54:00:12:34:56",
    "tag": "a tag of letters, digits, '_', '.' and '-', at most 31 long",
    "serial": "a serial of letters, digits, '_', '.' and '-', at most 20 long",
    "mount": "an absolute guest path without spaces, commas or colons",
    "network": "a network name of letters, digits, '_', '.' and '-', starting with a letter or digit, at most 63 "
               "long",
    "segment": "a segment name of letters, digits, '_', '.' and '-', starting with a letter or digit, at most 63 "
               "long",
}


def _is_type_tag(part: str) -> bool:
    return "[" in part or "-" in part or part in _TYPE_TAGS


def _clean_loc(loc: tuple[Any, ...], data: Any, kind: str) -> FieldPath:
    """pydantic's location minus the union-member and validator tags, checked against the data."""
    path: list[str | int] = []
    for index, part in enumerate(loc):
        present = (isinstance(data, dict) and part in data) or (
            isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data))
        if present:
            path.append(part)
            data = data[part]
        elif isinstance(part, int) or not _is_type_tag(part) or (kind == "missing" and index == len(loc) - 1):
            path.append(part)
            data = None
    return tuple(path)


def _model_at(path: FieldPath) -> type[BaseModel] | None:
    """The model class that owns the fields at `path` (for "did you mean" suggestions)."""
    model: Any = Profile
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model else None
        if field is None:
            return None
        model = _first_model(field.annotation)
    return model


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _first_model(arg)
        if found:
            return found
    return None


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(error: dict[str, Any], path: FieldPath) -> str:
    kind, value = error["type"], error.get("input")
    field = next((p for p in reversed(path) if isinstance(p, str)), "")
    if kind == "extra_forbidden":
        model = _model_at(path[:-1])
        known = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(path[-1]), known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else (f"; allowed: {', '.join(known)}" if known else "")
        return f"unknown field{hint}"
    if not path:
        return error["msg"]
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        return f"{_show(value)} is not one of {error['ctx']['expected']}"
    if kind in _TYPE_WORDS:
        return f"{_show(value)} is not {_TYPE_WORDS[kind]}"
    if kind == "string_pattern_mismatch":
        return f"{_show(value)} is not {_PATTERN_HINTS.get(field, 'valid here')}"
    if kind in ("value_error", "assertion_error"):
        message = str(error["ctx"]["error"]) if "ctx" in error else error["msg"]
        return message
    if kind.startswith(("greater_than", "less_than")):
        return f"{_show(value)}: {error['msg'][0].lower()}{error['msg'][1:]}"
    if kind in ("ip_v4_address", "ip_any_address"):
        return f"{_show(value)} is not an IP address"
    return error["msg"]


# Options whose value can be a network endpoint QEMU listens on (chardev syntax and kin).
_ENDPOINT_OPTIONS = frozenset({"-monitor", "-qmp", "-qmp-pretty", "-serial", "-parallel", "-gdb", "-chardev",
                               "-incoming", "-debugcon", "-spice", "-vnc", "-netdev", "-nic"})
_LOOPBACK = ("127.", "::1", "[::1]", "localhost")


def _network_listener(option: str, value: str) -> str | None:
    """Why `option value` would listen beyond loopback, or None. Pure: reads the text only."""
    if option == "-s":
        return "-s opens a gdb stub on every address (tcp::1234)"
    if option not in _ENDPOINT_OPTIONS:
        return None
    low = value.lower()
    if option == "-spice":
        host = re.search(r"(?:^|,)addr=([^,]*)", low)
        return None if host and host[1].startswith(_LOOPBACK) else "SPICE listens beyond loopback"
    if option in ("-netdev", "-nic"):
        for fwd in re.findall(r"hostfwd=(?:tcp|udp):([^:]*):", low):
            if not fwd.startswith(_LOOPBACK):
                return f"a hostfwd on {fwd or 'every address'}"
        return None
    match = re.match(r"(?:tcp|telnet|websocket|udp):([^,]*)", low)
    if match:
        host = match[1].rsplit(":", 1)[0] if ":" in match[1] else ""
        if not host.startswith(_LOOPBACK):
            return f"{option} {value.split(',')[0]} listens on {host or 'every address'}"
        return None
    if low.startswith("socket") and ("port=" in low or "host=" in low):
        host = re.search(r"(?:^|,)host=([^,]*)", low)
        if not (host and host[1].startswith(_LOOPBACK)):
            return f"{option} socket listens on {host[1] if host and host[1] else 'every address'}"
    return None


def _cross_checks(profile: Profile) -> list[tuple[FieldPath, str]]:
    """Rules that span sections."""
    problems: list[tuple[FieldPath, str]] = []
    args = profile.qemu.extra_args
    for index, arg in enumerate(args):
        if not arg.startswith("-") or profile.qemu.allow_unsafe_args:
            continue
        option, _, inline = arg.partition("=")
        value = inline or (args[index + 1] if index + 1 < len(args) else "")
        why = _network_listener("-" + option.lstrip("-"), value)
        if why:
            problems.append((("qemu", "extra_args", index), f"{arg} is refused: {why}, unauthenticated; bind it "
                             "to 127.0.0.1 or a unix socket, or set qemu.allow_unsafe_args: true"))
    for index, arg in enumerate(args):
        option = "-" + arg.split("=", 1)[0].lstrip("-") if arg.startswith("-") else ""
        if option in FORBIDDEN_OPTIONS:
            problems.append(((("qemu", "extra_args", index)),
                             f"{arg} is not allowed: the supervisor keeps QEMU in the foreground"))
        elif option in SINGLE_VALUED_OPTIONS:
            problems.append((("qemu", "extra_args", index),
                             f"{arg} repeats an option qemuvm generates; set the profile field instead"))
    for index, disk in enumerate(profile.disks):
        if disk.is_cdrom and disk.interface in ("virtio", "nvme"):
            problems.append((("disks", index, "interface"), f"a cdrom cannot use interface {disk.interface!r}; "
                             "allowed: scsi (the default for a cdrom), ide, sata"))
    if profile.machine.type == "microvm":
        if not profile.boot.kernel:
            problems.append((("boot", "kernel"), "a microvm has no firmware disk boot: set boot.kernel"))
        for index, disk in enumerate(profile.disks):
            if disk.is_cdrom or disk.interface != "virtio":
                problems.append((("disks", index), "a microvm has only virtio-mmio devices: use interface "
                                 "virtio and no cdrom"))
        if profile.display and profile.display.vga != "none":
            problems.append((("display", "vga"), "a microvm has no display device: use vga: none"))
        if profile.machine.firmware == "uefi":
            problems.append((("machine", "firmware"), "a microvm boots without UEFI firmware"))
        for index, nic in enumerate(profile.network):
            if nic.model != "virtio":
                problems.append((("network", index, "model"), "a microvm has only virtio devices: use model virtio"))
        if profile.display and profile.display.vnc:
            problems.append((("display", "vnc"), "a microvm has no display device for VNC to show"))
    problems.extend(_firmware_checks(profile))
    problems.extend(_arch_checks(profile))
    if profile.boot.once and profile.machine.firmware == "uefi":
        problems.append((("boot", "once"), "needs firmware bios: OVMF follows only boot.order"))
    if profile.ready is not None and profile.ready.agent and not profile.guest_agent:
        problems.append((("ready", "agent"), "needs the guest agent channel: set guest_agent: true"))
    seen: set[str] = set()
    mounts: set[str] = set()
    for index, share in enumerate(profile.shares):
        if share.tag in seen:
            problems.append((("shares", index, "tag"), f"tag {share.tag!r} is used twice"))
        seen.add(share.tag)
        if share.mount is not None and share.mount.rstrip("/") in mounts:
            problems.append((("shares", index, "mount"), f"{share.mount} is the mount point of an earlier share"))
        if share.mount is not None:
            mounts.add(share.mount.rstrip("/"))
    return problems


def _firmware_checks(profile: Profile) -> list[tuple[FieldPath, str]]:
    """Secure Boot is UEFI's, with SMM on q35; a variables template is UEFI's too."""
    machine = profile.machine
    problems: list[tuple[FieldPath, str]] = []
    if machine.secure_boot:
        q35 = machine.type == "q35" or machine.type.startswith("pc-q35")
        if machine.firmware != "uefi":
            problems.append((("machine", "secure_boot"), "Secure Boot is UEFI's: set machine.firmware: uefi"))
        if machine.arch != "x86_64":
            problems.append((("machine", "secure_boot"), "qemuvm runs Secure Boot on x86_64 q35 machines only"))
        elif not q35:
            problems.append((("machine", "secure_boot"), f"Secure Boot needs SMM, which qemuvm enables on q35 "
                             f"machines: use machine.type q35, not {machine.type!r}"))
    if machine.uefi_vars and machine.firmware != "uefi":
        problems.append((("machine", "uefi_vars"), "a UEFI variables file needs firmware: uefi"))
    return problems


def _arch_checks(profile: Profile) -> list[tuple[FieldPath, str]]:
    """What Arm's virt machine lacks, and machines of the other architecture."""
    machine = profile.machine
    is_virt = machine.type == "virt" or machine.type.startswith("virt-")
    if machine.arch == "x86_64":
        return [(("machine", "type"), "virt is an Arm machine: set machine.arch: aarch64 (or use q35, pc or "
                 "microvm)")] if is_virt else []
    problems: list[tuple[FieldPath, str]] = []
    if not is_virt:
        problems.append((("machine", "type"), f"{machine.type!r} is not an aarch64 machine: an aarch64 guest runs "
                         "on virt (or a versioned virt-N.M)"))
    if machine.firmware != "uefi":
        problems.append((("machine", "firmware"), "an aarch64 guest has no BIOS: use firmware: uefi (AAVMF)"))
    for index, disk in enumerate(profile.disks):
        if disk.interface in ("ide", "sata"):
            problems.append((("disks", index, "interface"), f"Arm's virt machine has no IDE or AHCI controller: "
                             f"use virtio, scsi or nvme{' (scsi for a cdrom)' if disk.is_cdrom else ''}"))
    return problems


def validate(loaded: LoadedProfile) -> Profile:
    """The typed profile, or a ProfileError listing every problem."""
    problems: list[tuple[FieldPath, str]] = []
    profile: Profile | None = None
    try:
        profile = Profile.model_validate(loaded.data)
    except ValidationError as exc:
        seen: set[FieldPath] = set()
        for error in exc.errors(include_url=False):
            path = _clean_loc(error["loc"], loaded.data, error["type"])
            if path in seen and error["type"] not in ("extra_forbidden",):
                continue  # one message per field: a union gives one error per member
            seen.add(path)
            problems.append((path, _message(error, path)))
    except RecursionError:
        problems.append(((), "the profile is nested too deeply"))
    if profile is not None:
        problems.extend(_cross_checks(profile))
    if problems:
        raise ProfileError(_format(loaded, problems))
    assert profile is not None
    profile._sources = tuple(str(path) for path in loaded.files)
    return profile


def _format(loaded: LoadedProfile, problems: list[tuple[FieldPath, str]]) -> list[str]:
    located = [(loaded.locate(path), path, message) for path, message in problems]
    located.sort(key=lambda item: (item[0].file, item[0].line or 0))
    return [f"{loc}: {format_path(path)}: {message}" for loc, path, message in located]


def load_and_validate(
    file: str, overrides: list[str] | tuple[str, ...] = (), name: str | None = None
) -> Profile:
    """load + validate: the first two steps of the pipeline."""
    from qemuvm.profile.load import load_profile

    return validate(load_profile(file, overrides, name))
