"""The facade's image-cache verbs (`qemuvm image pull|ls|rm|prune|catalog`): cloud images by URL or by
catalog name, verified and kept in runtime/imagecache's content-addressed cache."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from qemuvm.errors import UsageError


def image_pull(source: str, *, digest: str | None = None, sums: str | None = None, insecure: bool = False,
               arch: str | None = None, mirror: str | None = None, timeout: float | None = None,
               retries: int | None = None, download: Callable[[int, int | None], None] | None = None,
               note: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Pull `source` (an http(s) URL, or a catalog name for `arch`, default this host's) into the image cache,
    verified; returns {"path", "digest", "size", "url", "format"}. A cached digest makes no request."""
    from qemuvm.runtime import catalog, imagecache

    url = source
    if "://" not in source:
        if digest or sums:
            raise UsageError(f"{source} is a catalog name: its checksum file comes from the catalog; --digest and "
                             "--sums are for URLs")
        entry = catalog.find(source, arch, mirror)
        url, sums = entry.url, entry.sums
    elif arch is not None:
        raise UsageError("--arch chooses among a catalog name's images; a URL names one image already")
    limits: dict[str, Any] = {}
    if timeout is not None:
        limits["timeout"] = timeout
    if retries is not None:
        limits["retries"] = retries
    cached = imagecache.pull(url, imagecache.Digest.parse(digest) if digest else None, sums=sums,
                             insecure=insecure, progress=download, note=note, **limits)
    return {key: value for key, value in dataclasses.asdict(cached).items()
            if key in ("path", "digest", "size", "url", "format")}


def image_ls() -> list[dict[str, Any]]:
    """The cached images, each {"path", "digest", "size", "url", "format", "pulled_at", "used_at"}."""
    from qemuvm.runtime import imagecache

    return [dataclasses.asdict(cached) for cached in imagecache.list_cached()]


def image_rm(what: str) -> list[dict[str, Any]]:
    """Remove the cached images `what` names (a digest, a digest prefix of 8+ hex digits, or their URL)."""
    from qemuvm.runtime import imagecache

    return [dataclasses.asdict(cached) for cached in imagecache.remove(what)]


def image_prune(keep: int = 0) -> list[dict[str, Any]]:
    """Remove least recently used images until the rest take at most `keep` bytes; returns what went."""
    from qemuvm.runtime import imagecache

    return [dataclasses.asdict(cached) for cached in imagecache.prune(keep)]


def image_catalog(mirror: str | None = None) -> list[dict[str, Any]]:
    """The catalog's rows {name, arch, url, sums, format, cloud_init, firmware}, with the mirror applied."""
    from qemuvm.runtime import catalog

    return [entry.row() for entry in catalog.entries(mirror)]
