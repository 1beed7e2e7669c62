"""The file side of conversions: read the input (bounded, regular files only), check that what comes out is a
valid profile, write the outputs. The converters themselves (libvirt_import, libvirt_export) stay pure."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from qemuvm.errors import UsageError

Progress = Any  # Callable[[str], None]


def import_libvirt(xml_path: str | os.PathLike[str], output: str | os.PathLike[str] | None, strict: bool,
                   progress: Progress) -> dict[str, Any]:
    """`qemuvm import libvirt`: the profile text, and where it and the VNC password file were written."""
    from qemuvm import files
    from qemuvm.convert import libvirt_import
    from qemuvm.profile.load import load_text
    from qemuvm.profile.validate import validate
    from qemuvm.qemu import probe
    from qemuvm.runtime import networks
    from qemuvm.runtime.atomic import write_private_atomic

    shown = os.fspath(xml_path)
    data = files.read_regular(xml_path, "the domain XML", libvirt_import.MAX_XML)
    imported = libvirt_import.import_domain(data, source=shown, networks=networks.names(),
                                            machines=probe.probe().machines)
    for note in imported.unsupported:
        progress(f"not carried over: {note.line()}")
    if strict and imported.unsupported:
        raise UsageError(f"{shown}: {len(imported.unsupported)} element(s) or attribute(s) of the domain cannot "
                         "be carried over (listed above); without --strict they become comments in the profile")
    target = Path(output) if output is not None else None
    password_file = None
    if imported.vnc_password:
        if target is None:
            raise UsageError(f"{shown} sets a VNC password; give -o PROFILE.yaml so that it can be written to a "
                             "password file next to the profile (mode 0600) rather than into the profile")
        password_file = target.with_name(f"{target.stem}.vnc-password")
    text = libvirt_import.render_profile(imported, Path(shown).name,
                                         password_file.name if password_file else None)
    if target is not None and target.exists():
        raise UsageError(f"-o {target}: the file exists; remove it or name another")
    if target is not None and not target.parent.is_dir():
        raise UsageError(f"-o {target}: the folder {target.parent} does not exist")
    validate(load_text(text, str(target or "<stdout>.yaml")))  # what import writes is always a valid profile
    result: dict[str, Any] = {"profile": text, "output": None, "password_file": None,
                              "name": imported.profile["name"],
                              **{kind: [note.line() for note in imported.notes if note.kind == kind]
                                 for kind in ("unsupported", "kept", "implied")}}
    if target is not None:
        if password_file is not None:
            write_private_atomic(password_file, (imported.vnc_password or "") + "\n")
            result["password_file"] = str(password_file)
        write_private_atomic(target, text, mode=0o644)
        result["output"] = str(target)
    return result


def export_libvirt(source: str, security_info: bool, home: Path | None) -> dict[str, Any]:
    """`qemuvm export libvirt PROFILE|NAME`: a profile file, else the saved profile of the instance NAME."""
    from qemuvm.convert import libvirt_export
    from qemuvm.runtime.preflight import read_vnc_password

    profile = _profile(source, (), home)
    vnc = profile.display.vnc if profile.display else None
    password = read_vnc_password(vnc.password_file) if security_info and vnc and vnc.password_file else None
    exported = libvirt_export.export_domain(profile, password)
    return {"xml": exported.xml, "not_expressed": exported.not_expressed}


def _is_name(text: str) -> bool:
    import re

    from qemuvm.profile.types import NAME_PATTERN

    return re.match(NAME_PATTERN, text) is not None


def _profile(source: str, overrides: tuple[str, ...] | list[str], home: Path | None) -> Any:
    """A profile file, else the saved profile of the instance `source`; validated, with --set applied."""
    from qemuvm.paths import InstancePaths
    from qemuvm.profile.validate import load_and_validate

    path = Path(source)
    if not path.is_file():
        paths = InstancePaths.for_name(source, home) if _is_name(source) else None
        if paths is None or not paths.profile.is_file():
            raise UsageError(f"{source} is neither a profile file nor an instance (see `qemuvm ls`)")
        path = paths.profile
    from qemuvm.runtime.preflight import resolve_images

    return resolve_images(load_and_validate(str(path), overrides), pull=False)  # url/catalog disks: cached path


def _read_document(path: str) -> str:
    from qemuvm import files

    return files.read_text(path, "cloud_init", 1 << 20)


def export_target(target: str, source: str, *, overrides: tuple[str, ...] | list[str] = (), lossy: bool = False,
                  image: str | None = None, pvc: str | None = None, configmap: bool = False,
                  images_pvc: str = "qemuvm-images", artifacts_pvc: str | None = None,
                  home: Path | None = None) -> dict[str, Any]:
    """`qemuvm export kubevirt|k8s-job|nomad`: the documents (Kubernetes) or the job text (Nomad), what was
    dropped (only with lossy; otherwise a drop is a UsageError) and what was changed."""
    import yaml

    profile = _profile(source, overrides, home)
    if target == "kubevirt":
        from qemuvm.convert import kubevirt

        if image and pvc:
            raise UsageError("--image and --pvc both name the boot disk's volume; give one")
        manifest, mapping = kubevirt.export(profile, image=image, pvc=pvc, read=_read_document, lossy=lossy)
        documents = [manifest]
    elif target == "k8s-job":
        from qemuvm.convert import k8s_job

        if not image:
            raise UsageError("export k8s-job needs --image REF: the container image that runs qemuvm (see the "
                             "Containerfile)")
        documents, mapping = k8s_job.export(profile, image=image, images_pvc=images_pvc,
                                            artifacts_pvc=artifacts_pvc, configmap=configmap, lossy=lossy)
    else:
        from qemuvm.convert import nomad
        from qemuvm.paths import InstancePaths
        from qemuvm.qemu.compile import compile_options
        from qemuvm.qemu.facts import HostFacts

        def options(runs: Any) -> Any:
            # For a host of no particular facts (the machine type is the Nomad client's business); what the
            # driver manages is left out of args anyway.
            facts = HostFacts()
            facts = dataclasses.replace(facts, machines=(*facts.machines, runs.machine.type))
            return compile_options(runs, InstancePaths(Path("/nonexistent") / runs.name), facts)

        text, mapping = nomad.export(profile, options, lossy=lossy)
        return {"text": text, "dropped": mapping.dropped, "notes": mapping.notes, "documents": None}
    text = yaml.dump_all(documents, Dumper=_literal_dumper(), sort_keys=False)
    return {"text": text, "documents": documents, "dropped": mapping.dropped, "notes": mapping.notes}


def _literal_dumper() -> Any:
    import yaml

    class LiteralDumper(yaml.SafeDumper):
        """Multi-line strings (a ConfigMap's profile, cloud-init user data) as readable `|` blocks."""

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value and not any(line != line.rstrip() for line in value.splitlines()) else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    LiteralDumper.add_representer(str, text)
    return LiteralDumper
