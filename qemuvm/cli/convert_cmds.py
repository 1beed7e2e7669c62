"""`qemuvm import ...` and `qemuvm export ...`: profiles to and from other systems' formats (libvirt domain
XML, both ways)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from qemuvm.cli.app import app
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


LossyOption = typer.Option(False, "--lossy", help="Export even what the target cannot express, dropping it "
                           "(listed on stderr) instead of exiting 2.")
SetOption = typer.Option(None, "--set", help="Override a field: KEY.PATH=VALUE (YAML value; repeatable).")
OutputOption = typer.Option(None, "-o", "--output", help="Write here instead of stdout.")


def _emit(result: dict[str, Any], output: Path | None, json_: bool) -> None:
    for line in result["dropped"]:
        info(f"dropped: {line}")
    for line in result["notes"]:
        info(f"note: {line}")
    if json_:
        import json

        documents = result["documents"]
        payload = {"hcl": result["text"]} if documents is None else documents[0] if len(documents) == 1 else documents
        text = json.dumps(payload, indent=2) + "\n"
    else:
        text = result["text"]
    if output is None:
        print(text, end="")
    else:
        output.write_text(text)
        info(f"wrote {output}")


@export_app.command("kubevirt")
def export_kubevirt(
    source: str = typer.Argument(..., help="A profile file, or the name of an instance (its saved profile)."),
    image: str = typer.Option(None, "--image", help="The boot disk as a containerDisk: an image reference."),
    pvc: str = typer.Option(None, "--pvc", help="The boot disk as a PersistentVolumeClaim of this name."),
    set_: list[str] = SetOption, lossy: bool = LossyOption, output: Path = OutputOption, json_: bool = JsonOption,
) -> None:
    """A KubeVirt VirtualMachine (kubevirt.io/v1): `qemuvm export kubevirt vm.yaml --image REF | kubectl apply -f -`."""
    from qemuvm import api

    _emit(api.export("kubevirt", source, overrides=set_ or (), lossy=lossy, image=image, pvc=pvc), output, json_)


@export_app.command("k8s-job")
def export_k8s_job(
    source: str = typer.Argument(..., help="A profile file, or the name of an instance (its saved profile)."),
    image: str = typer.Option(None, "--image", help="The container image that runs qemuvm (the Containerfile's)."),
    configmap: bool = typer.Option(False, "--configmap", help="Also write the ConfigMap holding the profile."),
    images_pvc: str = typer.Option("qemuvm-images", "--images-pvc", help="The PersistentVolumeClaim holding the "
                                   "profile's files (disks, kernel, ...), mounted at /images."),
    artifacts_pvc: str = typer.Option(None, "--artifacts-pvc", help="Keep JUnit and evidence on this "
                                      "PersistentVolumeClaim [default: an emptyDir; the JUnit file is also logged]."),
    set_: list[str] = SetOption, lossy: bool = LossyOption, output: Path = OutputOption, json_: bool = JsonOption,
) -> None:
    """A Kubernetes Job (batch/v1) whose container runs `qemuvm smoke` on the profile."""
    from qemuvm import api

    _emit(api.export("k8s-job", source, overrides=set_ or (), lossy=lossy, image=image, configmap=configmap,
                     images_pvc=images_pvc, artifacts_pvc=artifacts_pvc), output, json_)


@export_app.command("nomad")
def export_nomad(
    source: str = typer.Argument(..., help="A profile file, or the name of an instance (its saved profile)."),
    set_: list[str] = SetOption, lossy: bool = LossyOption, output: Path = OutputOption, json_: bool = JsonOption,
) -> None:
    """A Nomad job (HCL) for the qemu task driver: `qemuvm export nomad vm.yaml -o vm.hcl; nomad job run vm.hcl`."""
    from qemuvm import api

    _emit(api.export("nomad", source, overrides=set_ or (), lossy=lossy), output, json_)
