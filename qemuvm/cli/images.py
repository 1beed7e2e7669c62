"""Commands: `image create|info|resize|convert` (qemu-img), `screenshot`, `snapshot save|load|list|delete`,
`template ls|rm` (the saved VMs that `up --warm` clones)."""

from __future__ import annotations

from pathlib import Path

import typer

from qemuvm.cli import image_cache
from qemuvm.cli.app import app
from qemuvm.cli.output import JsonOption, NameArg, human_size, info, print_json, print_table

image_app = typer.Typer(name="image", help="Disk images: create and inspect (qemu-img); pull cloud images into a "
                        "verified cache.", no_args_is_help=True)
snapshot_app = typer.Typer(name="snapshot", help="Internal snapshots of a running VM's qcow2 disks.",
                           no_args_is_help=True)
template_app = typer.Typer(name="template", help="Saved, ready VMs that `up --warm` starts clones of.",
                           no_args_is_help=True)
app.add_typer(image_app)
app.add_typer(snapshot_app)
app.add_typer(template_app)

FormatOption = typer.Option("qcow2", "--format", "-f", help="raw | qcow2")


def _size(text: str) -> int:
    from qemuvm import api

    return api.parse_size(text, "SIZE")


@image_app.command("create")
def image_create(
    file: Path = typer.Argument(..., help="The new image file (never overwritten)."),
    size: str = typer.Argument(None, help="Virtual size, e.g. 7G (default with --backing: the backing size)."),
    fmt: str = FormatOption,
    backing: Path = typer.Option(None, "--backing", "-b", help="Backing image: the new qcow2 records only changes."),
) -> None:
    """Create a disk image, like `qemu-img create -f FMT FILE SIZE`."""
    from qemuvm import api

    api.image_create(file, _size(size) if size else None, fmt, backing=backing)
    info(f"created {file} ({fmt}{f', {size}' if size else ''}{f', backed by {backing}' if backing else ''})")


@image_app.command("info")
def image_info(
    file: Path = typer.Argument(..., help="Image file (may be in use by a running VM)."),
    json_: bool = typer.Option(False, "--json", help="Print qemu-img's JSON."),
) -> None:
    """Show an image's format, sizes, backing file and snapshots."""
    from qemuvm import api

    image = api.image_info(file)
    if json_:
        print_json(image.raw)
        return
    rows = [["file", image.filename], ["format", image.format],
            ["virtual size", f"{human_size(image.virtual_size)} ({image.virtual_size} bytes)"],
            ["disk size", human_size(image.actual_size)]]
    if image.backing_filename:
        rows.append(["backing file", f"{image.backing_filename} ({image.backing_format or '?'})"])
    for snap in image.snapshots:
        rows.append(["snapshot", f"{snap.name} (id {snap.id}, vm state {human_size(snap.vm_state_size)})"])
    print_table(["field", "value"], rows)


@image_app.command("resize")
def image_resize(
    file: Path = typer.Argument(..., help="Image file."),
    size: str = typer.Argument(..., help="New size (7G), or a change (+1G; -1G shrinks and loses data)."),
) -> None:
    """Change an image's virtual size (the guest must grow its partitions itself)."""
    from qemuvm import api

    info(f"resized {file} to {human_size(api.image_resize(file, size))}")


@image_app.command("convert")
def image_convert(
    src: Path = typer.Argument(..., help="Source image."),
    dst: Path = typer.Argument(..., help="Destination (never overwritten)."),
    fmt: str = FormatOption,
) -> None:
    """Copy an image into another format, like `qemu-img convert -O FMT SRC DST`."""
    from qemuvm import api

    api.image_convert(src, dst, fmt)
    info(f"converted {src} to {dst} ({fmt})")


@app.command()
def screenshot(
    name: str = NameArg,
    out: Path = typer.Argument(..., help="PNG file to write."),
) -> None:
    """Save the VM's screen as a PNG (QMP screendump); the profile needs a display section."""
    from qemuvm import api

    written = api.screenshot(name, out)
    info(f"wrote {written}")


TagArgument = typer.Argument(..., help="Snapshot name.")


@snapshot_app.command("save")
def snapshot_save(name: str = NameArg, tag: str = TagArgument) -> None:
    """Save disks and VM state (RAM, devices) under TAG; the VM pauses while it is written."""
    from qemuvm import api

    api.snapshot(name, "save", tag)
    info(f"saved snapshot {tag} of {name}")


@snapshot_app.command("load")
def snapshot_load(name: str = NameArg, tag: str = TagArgument) -> None:
    """Return the VM to snapshot TAG (disks and running state)."""
    from qemuvm import api

    api.snapshot(name, "load", tag)
    info(f"loaded snapshot {tag} of {name}")


@snapshot_app.command("delete")
def snapshot_delete(name: str = NameArg, tag: str = TagArgument) -> None:
    """Delete snapshot TAG from the disks."""
    from qemuvm import api

    api.snapshot(name, "delete", tag)
    info(f"deleted snapshot {tag} of {name}")


@snapshot_app.command("list")
def snapshot_list(
    name: str = NameArg,
    json_: bool = JsonOption,
) -> None:
    """List the snapshots of a running VM."""
    import datetime

    from qemuvm import api

    snaps = api.snapshot(name, "list")
    if json_:
        print_json(snaps)
        return
    rows = [[s["tag"], datetime.datetime.fromtimestamp(s["date"]).isoformat(sep=" ", timespec="seconds"),
             human_size(s["vm_state_size"]), f"{s['vm_clock_ns'] / 1e9:.1f} s"] for s in snaps]
    print_table(["tag", "date", "vm state", "guest clock"], rows)


@template_app.command("ls")
def template_ls(json_: bool = JsonOption) -> None:
    """List the templates: fingerprint, profile file, size, the cold boot they save, how many clones they
    served (hits), and the clones that exist now."""
    import datetime

    from qemuvm import api

    found = api.templates()
    if json_:
        print_json(found)
        return
    rows = [[t["fingerprint"], t["source"] or "-", t["made_from"] or "(incomplete)",
             datetime.datetime.fromtimestamp(t["created_at"]).isoformat(sep=" ", timespec="seconds")
             if t["created_at"] else "-", human_size(t["bytes"]),
             f"{t['ready_after_s']:g} s" if t["ready_after_s"] is not None else "-", str(t["hits"]),
             ", ".join(t["clones"]) or "-"]
            for t in found]
    print_table(["fingerprint", "profile", "made from", "created", "size", "cold boot", "hits", "clones"], rows)


@template_app.command("rm")
def template_rm(
    fingerprint: str = typer.Argument(..., help="The template's fingerprint (see `qemuvm template ls`)."),
    force: bool = typer.Option(False, "--force", help="Remove it even though instances are clones of it."),
) -> None:
    """Delete a template; refused while instances are its clones (their disks back onto it)."""
    from qemuvm import api

    done = api.template_rm(fingerprint, force=force)
    info(f"removed template {fingerprint}" + (f" (its clones {', '.join(done['clones'])} no longer start)"
                                              if done["clones"] else ""))


image_cache.register(image_app)  # pull, ls, rm, prune, catalog: the cache of cloud images (listed after these)
