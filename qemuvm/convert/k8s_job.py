"""A profile -> a Kubernetes `batch/v1` Job that smoke-tests it in a container (`qemuvm export k8s-job`), and,
with --configmap, the ConfigMap holding the profile it runs.

The container (the Containerfile's image, --image) runs `qemuvm smoke` itself, so whatever qemuvm runs on
one host runs there, except what needs the host's own network (bridge and tap NICs). Every file the profile
names (disks, kernel, initrd, cloud-init documents, password and key files, shared folders) is read from one
volume, the images volume (a PersistentVolumeClaim, mounted at /images), by its file name; the profile in
the ConfigMap names them there. `accel: kvm` requests /dev/kvm from KubeVirt's device plugin
(devices.kubevirt.io/kvm); `auto` requests nothing and qemuvm falls back to TCG where the node has no KVM.
The JUnit file and the evidence go to the artifacts volume (an emptyDir, or --artifacts-pvc), and the
JUnit file is printed at the end, so `kubectl logs` has it too.
"""

from __future__ import annotations

import math
import posixpath
from typing import Any

import yaml

from qemuvm.convert.targets import Mapping, k8s_name, quantity
from qemuvm.errors import UsageError
from qemuvm.profile.model import Profile

TARGET = "a Kubernetes Job"
PROFILE_DIR, IMAGES, ARTIFACTS, STATE = "/etc/qemuvm", "/images", "/artifacts", "/var/lib/qemuvm"
# A fixed script (the profile path arrives as $0): smoke, keep its exit status, print the JUnit file.
_SCRIPT = ('qemuvm smoke "$0" --junit /artifacts/junit.xml --artifacts /artifacts; status=$?; '
           'cat /artifacts/junit.xml 2>/dev/null; exit $status')


def export(profile: Profile, *, image: str, images_pvc: str = "qemuvm-images", artifacts_pvc: str | None = None,
           configmap: bool = False, lossy: bool = False) -> tuple[list[dict[str, Any]], Mapping]:
    """[Job] or [ConfigMap, Job]."""
    mapping = Mapping(TARGET)
    name = k8s_name(profile.name, mapping)
    for index, nic in enumerate(profile.network):
        if nic.mode in ("bridge", "tap"):
            mapping.drop(f"network[{index}]", f"a {nic.mode} NIC needs the host's network; a pod has its own")
    if profile.display and profile.display.vnc:
        mapping.note("display.vnc", "listens inside the pod only; `qemuvm smoke` takes screenshots itself")
    text = profile_in_pod(profile, mapping)
    config_name = f"qemuvm-{name}"
    machine = profile.machine
    resources: dict[str, Any] = {"requests": {"memory": quantity(machine.memory + 256), "cpu": str(machine.cpus)}}
    if machine.accel == "kvm":
        resources["limits"] = {"devices.kubevirt.io/kvm": "1"}
    elif machine.accel == "auto":
        mapping.note("machine.accel", "auto requests no /dev/kvm: TCG unless the node gives one; accel: kvm "
                     "requests devices.kubevirt.io/kvm")
    budget = (profile.ready.timeout if profile.ready else 120) + profile.smoke.timeout + profile.shutdown.timeout
    container = {
        "name": "smoke", "image": image,
        "command": ["/bin/sh", "-c", _SCRIPT, f"{PROFILE_DIR}/profile.yaml"],
        "env": [{"name": "QEMUVM_HOME", "value": STATE}],
        "resources": resources,
        "volumeMounts": [{"name": "profile", "mountPath": PROFILE_DIR, "readOnly": True},
                         {"name": "images", "mountPath": IMAGES},
                         {"name": "artifacts", "mountPath": ARTIFACTS},
                         {"name": "state", "mountPath": STATE}],
    }
    volumes = [{"name": "profile", "configMap": {"name": config_name}},
               {"name": "images", "persistentVolumeClaim": {"claimName": images_pvc}},
               {"name": "artifacts", **({"persistentVolumeClaim": {"claimName": artifacts_pvc}} if artifacts_pvc
                                        else {"emptyDir": {}})},
               {"name": "state", "emptyDir": {}}]
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": f"qemuvm-smoke-{name}"[:63], "labels": {"app.kubernetes.io/managed-by": "qemuvm"}},
        "spec": {"backoffLimit": 0, "activeDeadlineSeconds": math.ceil(budget) + 300,
                 "template": {"metadata": {"labels": {"app.kubernetes.io/managed-by": "qemuvm"}},
                              "spec": {"restartPolicy": "Never", "containers": [container], "volumes": volumes}}},
    }
    mapping.check(lossy)
    if not configmap:
        mapping.note("profile", f"the Job reads it from the ConfigMap {config_name} (--configmap writes it)")
        return [job], mapping
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": config_name},
              "data": {"profile.yaml": text}}
    return [config, job], mapping


def profile_in_pod(profile: Profile, mapping: Mapping) -> str:
    """The profile as the pod runs it: each file it names is /images/<its file name>."""
    data = profile.model_dump(mode="json", exclude_unset=True, exclude_defaults=False)
    seen: dict[str, str] = {}

    def moved(where: str, path: str) -> str:
        base = posixpath.basename(path.rstrip("/")) or "root"
        if seen.setdefault(base, path) != path:
            raise UsageError(f"{where}: {path} and {seen[base]} have the same file name, and the images volume "
                             "holds files by name; rename one")
        return f"{IMAGES}/{base}"

    for index, disk in enumerate(data.get("disks", [])):
        disk["file"] = moved(f"disks[{index}].file", disk["file"])
    for key in ("kernel", "initrd"):
        if data.get("boot", {}).get(key):
            data["boot"][key] = moved(f"boot.{key}", data["boot"][key])
    for key in ("user_data", "meta_data", "network_config"):
        value = (data.get("cloud_init") or {}).get(key)
        if isinstance(value, str):
            data["cloud_init"][key] = moved(f"cloud_init.{key}", value)
    for index, share in enumerate(data.get("shares", [])):
        share["source"] = moved(f"shares[{index}].source", share["source"])
    vnc = (data.get("display") or {}).get("vnc") or {}
    if vnc.get("password_file"):
        vnc["password_file"] = moved("display.vnc.password_file", vnc["password_file"])
    if (data.get("ssh") or {}).get("identity"):
        data["ssh"]["identity"] = moved("ssh.identity", data["ssh"]["identity"])
    header = f"# {profile.name} as the Job runs it: its files are read from the images volume ({IMAGES}).\n"
    return header + yaml.safe_dump(data, sort_keys=False)
