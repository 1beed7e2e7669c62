"""Well-known cloud images by name (`qemuvm image catalog`, `image pull debian-12`, a disk's `image:`).

Each entry is the distribution's own URL and the checksum file it publishes beside it, so a pull is verified
against the distribution's word. `QEMUVM_IMAGE_MIRROR=BASE` (or `--mirror BASE`) replaces each URL's scheme
and host with BASE and keeps the path, the way distribution mirrors are laid out: a CI network that only
reaches its own mirror, and the tests, which serve these paths from loopback. Pure data and string work.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import asdict, dataclass

from qemuvm.errors import UsageError
from qemuvm.qemu.probe import host_arch

MIRROR_ENV = "QEMUVM_IMAGE_MIRROR"
ARCHES = ("x86_64", "aarch64")


@dataclass(frozen=True)
class Entry:
    name: str
    arch: str  # x86_64 | aarch64
    url: str
    sums: str  # the distribution's checksum file for url (GNU or BSD lines)
    format: str  # qcow2 | raw
    cloud_init: bool  # the image applies a NoCloud seed (cloud_init: in a profile)
    firmware: str  # bios | uefi: what the image boots with on this arch

    def row(self) -> dict[str, object]:
        return asdict(self)


_DEBIAN = "https://cloud.debian.org/images/cloud"
_UBUNTU = "https://cloud-images.ubuntu.com/releases"
_FEDORA = "https://download.fedoraproject.org/pub/fedora/linux/releases"
_ALPINE = "https://dl-cdn.alpinelinux.org/alpine"
_DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def _entries() -> list[Entry]:
    found = []
    for arch in ARCHES:
        deb, uefi = _DEB_ARCH[arch], "uefi" if arch == "aarch64" else "bios"
        for number, codename in (("12", "bookworm"), ("13", "trixie")):
            folder = f"{_DEBIAN}/{codename}/latest"
            found.append(Entry(f"debian-{number}", arch, f"{folder}/debian-{number}-genericcloud-{deb}.qcow2",
                               f"{folder}/SHA512SUMS", "qcow2", True, uefi))
        for release in ("22.04", "24.04"):
            folder = f"{_UBUNTU}/{release}/release"
            found.append(Entry(f"ubuntu-{release}", arch, f"{folder}/ubuntu-{release}-server-cloudimg-{deb}.img",
                               f"{folder}/SHA256SUMS", "qcow2", True, uefi))
        folder = f"{_FEDORA}/41/Cloud/{arch}/images"
        found.append(Entry("fedora-41", arch, f"{folder}/Fedora-Cloud-Base-Generic-41-1.4.{arch}.qcow2",
                           f"{folder}/Fedora-Cloud-41-1.4-{arch}-CHECKSUM", "qcow2", True, uefi))
        boot = "uefi" if arch == "aarch64" else "bios"
        image = f"{_ALPINE}/v3.20/releases/cloud/nocloud_alpine-3.20.3-{arch}-{boot}-cloudinit-r0.qcow2"
        found.append(Entry("alpine-3.20", arch, image, f"{image}.sha512", "qcow2", True, uefi))
    return found


CATALOG: tuple[Entry, ...] = tuple(_entries())


def mirrored(url: str, mirror: str | None) -> str:
    """`url` with its scheme and host replaced by `mirror` (a base URL, maybe with a path prefix)."""
    if not mirror:
        return url
    base = urllib.parse.urlsplit(mirror)
    if base.scheme not in ("http", "https") or not base.netloc:
        raise UsageError(f"mirror {mirror!r}: give a base URL such as http://127.0.0.1:8000 (scheme and host; "
                         "each image keeps its path below it)")
    path = urllib.parse.urlsplit(url).path
    return urllib.parse.urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + path, "", ""))


def entries(mirror: str | None = None) -> list[Entry]:
    """The catalog with `mirror` (default: $QEMUVM_IMAGE_MIRROR) applied."""
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV) or None
    return [Entry(e.name, e.arch, mirrored(e.url, mirror), mirrored(e.sums, mirror), e.format, e.cloud_init,
                  e.firmware) for e in CATALOG]


def find(name: str, arch: str | None = None, mirror: str | None = None) -> Entry:
    """The entry `name` for `arch` (default: this host's); UsageError listing the names otherwise."""
    arch = arch or host_arch()  # what KVM could run here (the probe's name for this CPU)
    if arch not in ARCHES:
        raise UsageError(f"arch {arch!r}: the catalog has {' and '.join(ARCHES)}")
    for entry in entries(mirror):
        if entry.name == name and entry.arch == arch:
            return entry
    names = sorted({e.name for e in CATALOG})
    raise UsageError(f"no catalog image named {name!r}; the catalog has {', '.join(names)} "
                     "(`qemuvm image catalog`)")
