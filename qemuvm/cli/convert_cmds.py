"""`qemuvm import ...` and `qemuvm export ...`: profiles to and from other systems' formats (libvirt domain
XML, both ways)."""

from __future__ import annotations

from pathlib import Path

import typer

from qemuvm.cli import app
from qemuvm.cli.output import JsonOption, info, print_json

import_app = typer.Typer(name="import", no_args_is_help=True,
                         help="Make a qemuvm profile from another system's VM definition.")
export_app = typer.Typer(name="export", no_args_is_help=True,
                         help="Write a profile (or an instance's saved profile) in another system's format.")
app.add_typer(import_app)
app.add_typer(export_app)


@import_app.command("libvirt")
def import_libvirt(
    domain_xml: Path = typer.Argument(..., help="The domain XML: what `virsh dumpxml NAME` prints, or a file "
                                      "from /etc/libvirt/qemu/."),
    output: Path = typer.Option(None, "-o", "--output", help="Write the profile here (never over an existing "
                                "file) [default: stdout]."),
    strict: bool = typer.Option(False, "--strict", help="Exit 2 when anything cannot be carried over."),
    json_: bool = JsonOption,
) -> None:
    """A libvirt domain as a qemuvm profile; what it cannot carry over is listed at its top and on stderr."""
    from qemuvm import api

    result = api.import_libvirt(domain_xml, output=output, strict=strict, progress=info)
    if json_:
        print_json(result)
    elif result["output"] is None:
        print(result["profile"], end="")
    else:
        beside = f" and the VNC password to {result['password_file']} (0600)" if result["password_file"] else ""
        info(f"wrote {result['output']}{beside}: {len(result['unsupported'])} thing(s) not carried over, "
             f"listed at its top; next: qemuvm up {result['output']}")


@export_app.command("libvirt")
def export_libvirt(
    source: str = typer.Argument(..., help="A profile file, or the name of an instance (its saved profile)."),
    security_info: bool = typer.Option(False, "--security-info", help="Put the VNC password into the XML "
                                       "(as virsh dumpxml --security-info)."),
    json_: bool = JsonOption,
) -> None:
    """A libvirt domain XML for `virsh define` (virsh dumpxml's counterpart); stderr lists what it leaves out."""
    from qemuvm import api

    result = api.export_libvirt(source, security_info=security_info)
    if json_:
        print_json(result)
        return
    for line in result["not_expressed"]:
        info(f"not in the XML: {line}")
    print(result["xml"], end="")
