"""The facade's host-side verbs: disk images (qemu-img), the host check, a profile's command line, validation
and schema, NAT networks. What the CLI calls for them; `qemuvm.api` re-exports every one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qemuvm.errors import UsageError
from qemuvm.paths import InstancePaths

# -- values the CLI reads from options ---------------------------------------------------------------------


def parse_size(text: str, option: str = "size") -> int:
    """`7G`, `512M` -> bytes; UsageError naming the option otherwise."""
    from qemuvm.profile.types import parse_size as parse

    try:
        return parse(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def parse_duration(text: str, option: str = "duration") -> float:
    """`30s`, `2m`, `90` -> seconds; UsageError naming the option otherwise."""
    from qemuvm.profile.types import parse_duration as parse

    try:
        return parse(text)
    except ValueError:
        raise UsageError(f"{option}: {text!r} is not a duration such as 30s, 2m or 90") from None


# -- disk images (qemu-img) --------------------------------------------------------------------------------


def image_create(file: str | os.PathLike[str], size: int | None, fmt: str = "qcow2",
                 backing: str | os.PathLike[str] | None = None) -> None:
    """A new image (never over an existing file), like `qemu-img create`."""
    from qemuvm.qemu import img

    img.create(Path(file), size, fmt, backing=Path(backing) if backing else None)


def image_info(file: str | os.PathLike[str]) -> Any:
    """qemu-img's facts of an image (qemu/img.ImageInfo), also of one a running VM uses."""
    from qemuvm.qemu import img

    return img.info(Path(file))


def image_resize(file: str | os.PathLike[str], size: str) -> int:
    """Resize (7G, +1G, -1G); returns the new virtual size in bytes."""
    from qemuvm.qemu import img

    img.resize(Path(file), size)
    return img.info(Path(file)).virtual_size


def image_convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], fmt: str = "qcow2") -> None:
    from qemuvm.qemu import img

    img.convert(Path(src), Path(dst), fmt)


# -- the host, a profile -----------------------------------------------------------------------------------


def doctor(binary: str = "qemu-system-x86_64") -> list[Any]:
    """This host's checks (qemu/doctor.Check: name, status, detail, fix, required)."""
    from qemuvm.qemu.doctor import run_checks

    return run_checks(binary)


def validate(file: str | os.PathLike[str], overrides: tuple[str, ...] | list[str] = ()) -> str:
    """The profile's name when it is valid; UsageError (every problem, each with file:line) otherwise."""
    from qemuvm.profile.validate import load_and_validate

    return load_and_validate(str(file), overrides).name


def schema() -> dict[str, Any]:
    """The profile's JSON Schema."""
    from qemuvm.profile.model import json_schema

    return json_schema()


def render(source: str | os.PathLike[str], *, overrides: tuple[str, ...] | list[str] = (), name: str | None = None,
           home: Path | None = None, note: Callable[[str], None] = lambda _: None) -> tuple[str, list[Any]]:
    """The QEMU binary and the compiled options (each with the profile fields behind it) of a profile file,
    as `up` would start it (ports not yet planned). A url or catalog image disk is named by its path in the
    image cache, pulled or not (`note` says which are not pulled yet); render itself downloads nothing."""
    from qemuvm.profile.validate import load_and_validate
    from qemuvm.qemu import probe
    from qemuvm.qemu.compile import compile_options
    from qemuvm.runtime import preflight

    profile = preflight.resolve_images(preflight.resolve_shares(load_and_validate(str(source), overrides, name)),
                                       pull=False, note=note)
    return profile.qemu.binary, compile_options(profile, InstancePaths.for_name(profile.name, home),
                                                probe.probe(profile.qemu.binary))


def render_text(binary: str, options: list[Any], explain: bool = False) -> str:
    """`render`'s result as a command to paste (one option per line), or with the fields behind each option."""
    from qemuvm.qemu.render import format_command, format_explained

    return format_explained(binary, options) if explain else format_command(binary, options)


# -- NAT networks (root: a bridge, nftables rules and dnsmasq per network; runtime/networks.py) ---------------


def network_create(name: str, subnet: str | None = None) -> dict[str, Any]:
    """Make NAT network `name` (the first free 192.168.122+.0/24 without `subnet`); returns its status."""
    from qemuvm.runtime import netdefs, networks

    record = networks.create(name, subnet)
    try:
        netdefs.define(name, record.subnet)  # it comes up again after a reboot, with the first VM that joins it
    except BaseException:
        networks.remove(name, force=True)  # nothing half-made: a network that would not come back is not made
        raise
    return networks.status(name)


def network_rm(name: str, *, force: bool = False) -> dict[str, Any]:
    """Remove exactly what `network_create` made; refused while VMs use it, unless `force`."""
    from qemuvm.runtime import netdefs, networks

    defined = netdefs.definition(name)
    if defined is not None and networks.read(name) is None:  # defined, not up (after a reboot): forget it
        netdefs.undefine(name)
        return {"name": name, "removed": True, "bridge": None, "subnet": defined.subnet}
    record = networks.remove(name, force)
    netdefs.undefine(name)
    return {"name": record.name, "removed": True, "bridge": record.bridge, "subnet": record.subnet}


def network_ls() -> list[dict[str, Any]]:
    """Every network checked live, then the defined ones that are not up (`inactive`: they come up with the
    first VM that joins them)."""
    from qemuvm.runtime import netdefs, networks

    return [*networks.list_all(), *(
        networks.not_up(name, "unreadable", problems=[str(defined)]) if isinstance(defined, UsageError)
        else networks.not_up(name, "inactive", subnet=defined.subnet) for name, defined in netdefs.inactive())]


def network_status(name: str) -> dict[str, Any]:
    """The network checked live (bridge, dnsmasq) with its current leases."""
    from qemuvm.runtime import networks

    return networks.status(name)
