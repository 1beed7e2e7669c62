"""`qemuvm export kubevirt | k8s-job | nomad` for every example profile and every valid golden profile:
each export validates against the target's own definition (KubeVirt's OpenAPI document, strictly;
Kubernetes' schemas through kubernetes-validate, strictly; the qemu driver's documented task config for
Nomad, parsed by python-hcl2), carries memory, CPUs, disks and forwards over with their values, and a field
the target cannot express is an error naming the field and the target (exit 2) unless --lossy."""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import hcl2
import jsonschema
import kubernetes_validate
import pytest
from hostile import qemuvm

from qemuvm.convert import io
from qemuvm.convert.nomad import DRIVE_INTERFACES
from qemuvm.errors import UsageError
from qemuvm.profile.load import load_text
from qemuvm.profile.model import Profile
from qemuvm.profile.validate import load_and_validate, validate

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "profiles"
PROFILES = sorted((REPO / "profiles").glob("*.yaml")) + sorted(p for p in GOLDEN.glob("*.yaml")
                                                                 if not p.stem.startswith("err-"))
IDS = [f"{p.parent.name}/{p.stem}" for p in PROFILES]
K8S_VERSION = "1.30"


@cache
def kubevirt_validator() -> jsonschema.Draft4Validator:
    """KubeVirt's own API definition, strict: every object that lists properties allows no others
    (tests/schemas/README.md)."""
    definitions = json.loads((REPO / "tests" / "schemas" / "kubevirt-openapi.json").read_text())["definitions"]
    definitions = copy.deepcopy(definitions)
    for definition in definitions.values():
        if definition.get("type", "object") == "object" and "properties" in definition:
            definition["additionalProperties"] = False
    return jsonschema.Draft4Validator({"$ref": "#/definitions/v1.VirtualMachine", "definitions": definitions})


def _export(target: str, path: Path, **options: Any) -> dict[str, Any]:
    try:
        return io.export_target(target, str(path), lossy=True, **options)
    except UsageError as exc:  # a profile this machine cannot load (a golden whose files are elsewhere)
        pytest.skip(f"{path.name}: {exc}")


def _profile(path: Path) -> Profile:
    """As the exports read it: a url or catalog disk named by its path in the image cache."""
    from qemuvm.runtime.preflight import resolve_images

    return resolve_images(load_and_validate(str(path)), pull=False)


def _strict_or_named(target: str, path: Path, name: str, **options: Any) -> None:
    """Without --lossy: the export works, or fails naming a profile field and the target."""
    try:
        io.export_target(target, str(path), **options)
    except UsageError as exc:
        assert re.match(rf"{re.escape(name)} cannot express [a-z_]+[a-z_.\[\]0-9]*: ", str(exc)), str(exc)
        assert "--lossy" in str(exc)


@pytest.fixture(autouse=True)
def _in_golden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(GOLDEN.parent)  # golden profiles name their files relative to the golden folder


@pytest.mark.parametrize("path", PROFILES, ids=IDS)
def test_kubevirt(path: Path) -> None:
    result = _export("kubevirt", path, image="registry.example/disk:1")
    manifest = result["documents"][0]
    errors = sorted(kubevirt_validator().iter_errors(manifest), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])
    profile = _profile(path)
    domain = manifest["spec"]["template"]["spec"]["domain"]
    assert domain["cpu"]["cores"] == profile.machine.cpus
    mib = profile.machine.memory
    assert domain["memory"]["guest"] in (f"{mib}Mi", f"{mib // 1024}Gi")
    assert domain["devices"]["disks"][0]["name"] == "disk0"
    ports = [p["port"] for i in domain["devices"]["interfaces"] for p in i.get("ports", [])]
    user = [n for n in profile.network[:1] if n.mode in ("user", "passt")]
    assert ports == [forward.guest for nic in user for forward in nic.forwards]
    _strict_or_named("kubevirt", path, "KubeVirt", image="registry.example/disk:1")


@pytest.mark.parametrize("path", PROFILES, ids=IDS)
def test_k8s_job(path: Path) -> None:
    result = _export("k8s-job", path, image="registry.example/qemuvm:1", configmap=True)
    config, job = result["documents"]
    for document in (config, job):
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)
    profile = _profile(path)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert ("devices.kubevirt.io/kvm" in container["resources"].get("limits", {})) == \
        (profile.machine.accel == "kvm")
    in_pod = validate(load_text(config["data"]["profile.yaml"], "pod.yaml"))
    assert in_pod.machine.memory == profile.machine.memory and in_pod.machine.cpus == profile.machine.cpus
    assert [d.file for d in in_pod.disks] == [f"/images/{Path(d.file).name}" for d in profile.disks]
    assert [f.guest for n in in_pod.network for f in n.forwards] == \
        [f.guest for n in profile.network for f in n.forwards]
    _strict_or_named("k8s-job", path, "a Kubernetes Job", image="registry.example/qemuvm:1")


def _unmeta(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _unmeta(v) for k, v in value.items() if not k.startswith("__")}
    return [_unmeta(v) for v in value] if isinstance(value, list) else value


def _nomad_config(text: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    parsed = _unmeta(hcl2.loads(text, serialization_options=hcl2.SerializationOptions(strip_string_quotes=True)))
    job = next(iter(parsed["job"][0].values()))
    group = next(iter(job["group"][0].values()))
    task = next(iter(group["task"][0].values()))
    return group, task, task["config"][0] if isinstance(task["config"], list) else task["config"]


@pytest.mark.parametrize("path", PROFILES, ids=IDS)
def test_nomad(path: Path) -> None:
    result = _export("nomad", path)
    _group, task, config = _nomad_config(result["text"])
    assert task["driver"] == "qemu"
    # The driver's task config (drivers/qemu/driver.go, taskConfigSpec): these names, these types.
    types = {"image_path": str, "drive_interface": str, "accelerator": str, "graceful_shutdown": bool,
             "guest_agent": bool, "args": list, "port_map": list}
    assert set(config) <= set(types), set(config) - set(types)
    for key, value in config.items():
        assert isinstance(value, types[key]), (key, value)
    assert config["drive_interface"] in DRIVE_INTERFACES and config["accelerator"] in ("kvm", "tcg")
    assert all(isinstance(arg, str) for arg in config["args"])
    profile = _profile(path)
    resources = task["resources"][0] if isinstance(task["resources"], list) else task["resources"]
    assert resources["memory"] == profile.machine.memory and resources["cores"] == profile.machine.cpus
    disks = [d for d in profile.disks if d.media == "disk"]
    if disks:
        assert config["image_path"] == disks[0].file
    for disk in disks[1:]:
        assert any(disk.file in arg for arg in config["args"]), disk.file
    user = [n for n in profile.network[:1] if n.mode in ("user", "passt")]
    port_map = {k: v for entry in config.get("port_map", []) for k, v in entry.items()}
    assert sorted(port_map.values()) == sorted(f.guest for n in user for f in n.forwards)
    for forbidden in ("-name", "-m", "-pidfile", "-mon", "-serial", "-display", "-accel", "-netdev"):
        assert forbidden not in config["args"], forbidden
    _strict_or_named("nomad", path, "Nomad's qemu driver")


@pytest.mark.parametrize(("target", "needle"), [
    ("kubevirt", "KubeVirt cannot express shares[0]: a host folder"),
    ("k8s-job", "a Kubernetes Job cannot express network[1]: a tap NIC"),
    ("nomad", "Nomad's qemu driver cannot express shares[0]: a host folder"),
])
def test_the_cli_names_the_field_and_exits_2(target: str, needle: str, tmp_path: Path) -> None:
    profile = tmp_path / "vm.yaml"
    (tmp_path / "src").mkdir()
    profile.write_text("name: vm\ndisks: [{file: disk.qcow2, size: 1G}]\nshares: [{source: src, tag: src}]\n"
                       "network: [{mode: user}, {mode: tap, ifname: tap0}]\n")
    image = [] if target == "nomad" else ["--image", "registry.example/x:1"]
    done = qemuvm("export", target, profile, *image, home=tmp_path / "home")
    assert done.returncode == 2 and needle in done.stderr and done.stdout == "", done.stderr
    lossy = qemuvm("export", target, profile, *image, "--lossy", home=tmp_path / "h")
    assert lossy.returncode == 0 and "dropped: " in lossy.stderr and lossy.stdout, lossy.stderr


def test_kubevirt_needs_a_volume_for_the_boot_disk(tmp_path: Path) -> None:
    profile = tmp_path / "vm.yaml"
    profile.write_text("name: vm\ndisks: [{file: disk.qcow2, size: 1G}]\n")
    done = qemuvm("export", "kubevirt", profile, home=tmp_path / "home")
    assert done.returncode == 2 and "give --image REF" in done.stderr


def test_the_strict_kubevirt_check_catches_a_misspelt_field() -> None:
    manifest = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "x"},
                "spec": {"template": {"spec": {"domain": {"devices": {}, "cpu": {"coress": 1}}}}}}
    assert list(kubevirt_validator().iter_errors(manifest))
