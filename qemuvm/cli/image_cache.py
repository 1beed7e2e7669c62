"""Commands: `image pull|ls|rm|prune|catalog`, the cache of cloud images (registered on `image` by images.py)."""

from __future__ import annotations

import datetime
from typing import Any

import typer

from qemuvm.cli.output import Download, JsonOption, human_size, info, print_json, print_table


def image_pull(
    source: str = typer.Argument(..., help="An http(s) URL, or a catalog name (see `qemuvm image catalog`)."),
    digest: str = typer.Option(None, "--digest", help="sha256:HEX or sha512:HEX the content must match."),
    sums: str = typer.Option(None, "--sums", help="URL of a SHA256SUMS/SHA512SUMS file naming the image."),
    insecure: bool = typer.Option(False, "--insecure-no-digest", help="Pull a URL with nothing to verify it by."),
    arch: str = typer.Option(None, "--arch", help="For a catalog name: x86_64 or aarch64 [default: this host's]."),
    mirror: str = typer.Option(None, "--mirror", envvar="QEMUVM_IMAGE_MIRROR",
                               help="For a catalog name: fetch from BASE, keeping each URL's path."),
    timeout: float = typer.Option(None, "--timeout", help="Seconds a connection or read may stall [default: 30]."),
    retries: int = typer.Option(None, "--retries", help="Further attempts after a failed one [default: 3]."),
    json_: bool = JsonOption,
) -> None:
    """Download an image into the verified cache (resumable; a cached digest is not downloaded again)."""
    from qemuvm import api

    download = Download("pulling")
    try:
        pulled = api.image_pull(source, digest=digest, sums=sums, insecure=insecure, arch=arch, mirror=mirror,
                                timeout=timeout, retries=retries, download=download, note=info)
    finally:
        download.close()
    if json_:
        print_json(pulled)
    else:
        info(f"{pulled['path']} ({pulled['format']}, {human_size(pulled['size'])}, {pulled['digest']})")


def image_ls(json_: bool = JsonOption) -> None:
    """List the cached images, least recently used last."""
    from qemuvm import api

    found = sorted(api.image_ls(), key=lambda c: -(c["used_at"] or 0))
    if json_:
        print_json(found)
        return
    print_table(["digest", "size", "format", "last used", "url"],
                [[c["digest"][:19], human_size(c["size"]), c["format"], _when(c["used_at"]), c["url"] or "-"]
                 for c in found])


def image_rm(what: str = typer.Argument(..., help="A digest, its first 8+ hex digits, or the URL it came from.")
             ) -> None:
    """Remove cached images (instances whose disks overlay one no longer start)."""
    from qemuvm import api

    for cached in api.image_rm(what):
        info(f"removed {cached['path']}")


def image_prune(keep: str = typer.Option("0", "--keep", help="Keep this much (e.g. 10G), the most recently used.")
                ) -> None:
    """Remove the least recently used images until the cache fits in --keep."""
    from qemuvm import api

    removed = api.image_prune(api.parse_size(keep, "--keep"))
    info(f"removed {len(removed)} image(s), {human_size(sum(c['size'] for c in removed))}")


def image_catalog(
    json_: bool = JsonOption,
    mirror: str = typer.Option(None, "--mirror", envvar="QEMUVM_IMAGE_MIRROR", help="Show the URLs through BASE."),
) -> None:
    """The well-known cloud images `image pull NAME` and a disk's `image:` accept."""
    from qemuvm import api

    rows = api.image_catalog(mirror)
    if json_:
        print_json(rows)
        return
    print_table(["name", "arch", "firmware", "url"], [[r["name"], r["arch"], r["firmware"], r["url"]] for r in rows])


def _when(stamp: Any) -> str:
    return datetime.datetime.fromtimestamp(stamp).isoformat(sep=" ", timespec="seconds") if stamp else "-"


def register(group: typer.Typer) -> None:
    for name, command in (("pull", image_pull), ("ls", image_ls), ("rm", image_rm), ("prune", image_prune),
                          ("catalog", image_catalog)):
        group.command(name)(command)
