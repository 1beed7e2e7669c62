"""A profile -> a KubeVirt `kubevirt.io/v1` VirtualMachine (`qemuvm export kubevirt`).

Pure: a validated Profile and the text of its cloud-init documents in, the manifest (a dict) out. The boot
disk (the first non-cdrom disk) becomes a containerDisk (--image) or a PersistentVolumeClaim (--pvc); the
cloud_init section becomes a cloudInitNoCloud volume; user/passt NICs become the pod network with masquerade
and their forwards its ports; restart.policy becomes runStrategy; `ready` a readinessProbe where KubeVirt has
one (a TCP port, the guest agent). tests/unit/test_export_targets.py validates every example and golden
profile's manifest against KubeVirt's own API definition, strictly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import yaml

from qemuvm.convert.targets import Mapping, common_drops, is_set, k8s_name, quantity, user_forwards
from qemuvm.errors import UsageError
from qemuvm.profile.model import Profile

TARGET = "KubeVirt"
_BUSES = {"virtio": "virtio", "sata": "sata", "scsi": "scsi"}
_CACHES = ("none", "writethrough", "writeback")
_RUN = {"never": "Once", "on-failure": "RerunOnFailure", "always": "Always"}
_MODELS = {"virtio": "virtio", "e1000": "e1000", "rtl8139": "rtl8139"}


def export(profile: Profile, *, image: str | None = None, pvc: str | None = None,
           read: Callable[[str], str] = lambda path: "", lossy: bool = False) -> tuple[dict[str, Any], Mapping]:
    """The VirtualMachine manifest. read(path): the text of a cloud-init file the profile names."""
    mapping = Mapping(TARGET)
    name = k8s_name(profile.name, mapping)
    common_drops(profile, mapping)
    machine = profile.machine
    domain: dict[str, Any] = {
        "cpu": {"cores": machine.cpus},
        "memory": {"guest": quantity(machine.memory)},
        "devices": {"disks": [], "interfaces": []},
    }
    if machine.cpu == "host":
        domain["cpu"]["model"] = "host-passthrough"
    elif machine.cpu not in (None, "max"):
        domain["cpu"]["model"] = machine.cpu
    if machine.type in ("q35", "virt") or machine.type.startswith(("pc-q35", "virt-")):
        domain["machine"] = {"type": machine.type}
    else:
        mapping.drop("machine.type", f"{machine.type}: KubeVirt runs q35 machines on x86_64 (virt on arm64)")
    if machine.accel == "tcg" and is_set(profile, "machine.accel"):
        mapping.drop("machine.accel", "tcg: software emulation is a cluster setting there (useEmulation)")
    if machine.hugepages:
        domain["memory"]["hugepages"] = {"pageSize": "2Mi"}
    if machine.firmware == "uefi":
        domain["firmware"] = {"bootloader": {"efi": {"secureBoot": machine.secure_boot, "persistent": True}}}
    if machine.secure_boot:  # KubeVirt requires SMM for Secure Boot, as qemuvm turns it on
        domain["features"] = {"smm": {"enabled": True}}
    if machine.uefi_vars:
        mapping.drop("machine.uefi_vars", "KubeVirt starts from its own variables template")
    if machine.tpm:  # KubeVirt's vTPM is swtpm too; persistent keeps its state across restarts, as qemuvm does
        domain["devices"]["tpm"] = {"persistent": True}
    if profile.boot.kernel:
        mapping.drop("boot.kernel", "KubeVirt boots a kernel only from a container image (kernelBoot.container)")
    if profile.boot.order:
        mapping.note("boot.order", "becomes bootOrder on the disks and NICs of those kinds")
    volumes = _disks(profile, domain, mapping, image, pvc)
    _network(profile, domain, mapping)
    _display(profile, domain, mapping)
    spec: dict[str, Any] = {"domain": domain, "volumes": volumes,
                            "terminationGracePeriodSeconds": math.ceil(profile.shutdown.timeout)}
    if machine.arch == "aarch64":  # KubeVirt names it as Go and Kubernetes nodes do; it schedules on arm64 nodes
        spec["architecture"] = "arm64"
    if profile.network:
        spec["networks"] = [{"name": "default", "pod": {}}]
    if profile.cloud_init is not None:
        volumes.append({"name": "cloudinit", "cloudInitNoCloud": _cloud_init(profile, mapping, read)})
        domain["devices"]["disks"].append({"name": "cloudinit", "disk": {"bus": "virtio"}})
    probe = _probe(profile, mapping)
    if probe is not None:
        spec["readinessProbe"] = probe
    if profile.restart.policy != "never" and (is_set(profile, "restart.max_retries")
                                               or is_set(profile, "restart.backoff")):
        mapping.drop("restart.max_retries", "KubeVirt restarts with its own back-off, without a limit")
    manifest = {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "qemuvm"}},
        "spec": {"runStrategy": _RUN[profile.restart.policy],
                 "template": {"metadata": {"labels": {"kubevirt.io/vm": name}}, "spec": spec}},
    }
    mapping.check(lossy)
    return manifest, mapping


def _disks(profile: Profile, domain: dict[str, Any], mapping: Mapping, image: str | None,
           pvc: str | None) -> list[dict[str, Any]]:
    disks, volumes = domain["devices"]["disks"], []
    order = profile.boot.order or []
    boot_disk = next((i for i, disk in enumerate(profile.disks) if disk.media == "disk"), None)
    for index, disk in enumerate(profile.disks):
        where = f"disks[{index}]"
        if index != boot_disk:
            mapping.drop(where, f"only the boot disk becomes a volume there (--image or --pvc); {disk.file} "
                         "is not carried over")
            continue
        if image is None and pvc is None:
            raise UsageError(f"{where} ({disk.file}) needs a volume on KubeVirt: give --image REF (a "
                             "containerDisk image holding it) or --pvc NAME (a PersistentVolumeClaim)")
        bus = _BUSES.get(disk.interface)
        if bus is None:
            mapping.drop(f"{where}.interface", f"{disk.interface}: KubeVirt's disk buses are virtio, sata, scsi")
            bus = "virtio"
        target: dict[str, Any] = {"bus": bus}
        if disk.readonly:
            target["readonly"] = True
        entry: dict[str, Any] = {"name": "disk0", "disk": target}
        if disk.cache in _CACHES and is_set(disk, "cache"):
            entry["cache"] = disk.cache
        elif is_set(disk, "cache"):
            mapping.drop(f"{where}.cache", f"{disk.cache}: KubeVirt has none, writethrough, writeback")
        if disk.serial:
            entry["serial"] = disk.serial
        if disk.discard:
            mapping.drop(f"{where}.discard", "KubeVirt passes no discard setting")
        if "disk" in order:
            entry["bootOrder"] = order.index("disk") + 1
        disks.append(entry)
        if image is not None:
            volumes.append({"name": "disk0", "containerDisk": {"image": image}})
            if not disk.ephemeral:
                mapping.note(where, "a containerDisk is ephemeral: writes are gone when the VM stops")
        elif disk.ephemeral:
            volumes.append({"name": "disk0", "ephemeral": {"persistentVolumeClaim": {"claimName": pvc}}})
        else:
            volumes.append({"name": "disk0", "persistentVolumeClaim": {"claimName": pvc}})
    if boot_disk is None and (image or pvc):  # the image is the VM's disk, as the profile names none
        disks.append({"name": "disk0", "disk": {"bus": "virtio"}})
        volumes.append({"name": "disk0", **({"containerDisk": {"image": image}} if image else
                                            {"persistentVolumeClaim": {"claimName": pvc}})})
    return volumes


def _network(profile: Profile, domain: dict[str, Any], mapping: Mapping) -> None:
    interfaces = domain["devices"]["interfaces"]
    if not profile.network:
        domain["devices"]["autoattachPodInterface"] = False
        return
    for index, nic in enumerate(profile.network):
        if index > 0 or nic.mode not in ("user", "passt"):
            mapping.drop(f"network[{index}]", f"a {nic.mode} NIC: KubeVirt's pod network is one masquerade NIC "
                         "(more need Multus networks)")
            continue
        entry: dict[str, Any] = {"name": "default", "masquerade": {}, "model": _MODELS[nic.model]}
        if nic.mac != "auto":
            entry["macAddress"] = nic.mac
        ports = [{"port": forward.guest, "protocol": forward.protocol.upper()}
                 for n, _, forward in user_forwards(profile) if n == index]
        if ports:
            entry["ports"] = ports
            mapping.note(f"network[{index}].forwards", "the guest ports are published on the pod's address; "
                         "host ports and addresses are a Service's business (`virtctl expose`)")
        if "network" in (profile.boot.order or []):
            entry["bootOrder"] = (profile.boot.order or []).index("network") + 1
        interfaces.append(entry)


def _display(profile: Profile, domain: dict[str, Any], mapping: Mapping) -> None:
    display = profile.display
    if display is None:
        domain["devices"]["autoattachGraphicsDevice"] = False
        return
    vnc = display.vnc
    if vnc is not None:
        for key in ("listen", "port", "password_file"):
            if is_set(vnc, key):
                mapping.drop(f"display.vnc.{key}", "KubeVirt's VNC is reached through its API (`virtctl vnc`)")
    if display.vga == "none" and vnc is None:
        domain["devices"]["autoattachGraphicsDevice"] = False


def _cloud_init(profile: Profile, mapping: Mapping, read: Callable[[str], str]) -> dict[str, Any]:
    config = profile.cloud_init
    assert config is not None
    source: dict[str, Any] = {}
    if isinstance(config.user_data, dict):
        source["userData"] = "#cloud-config\n" + yaml.safe_dump(config.user_data, sort_keys=False)
    elif config.user_data:
        source["userData"] = read(config.user_data)
    if isinstance(config.network_config, dict):
        source["networkData"] = yaml.safe_dump(config.network_config, sort_keys=False)
    elif config.network_config:
        source["networkData"] = read(config.network_config)
    if config.meta_data:
        mapping.drop("cloud_init.meta_data", "KubeVirt's NoCloud source sets the instance id and hostname itself")
    if not source:
        source["userData"] = "#cloud-config\n{}\n"
    return source


def _probe(profile: Profile, mapping: Mapping) -> dict[str, Any] | None:
    ready = profile.ready
    if ready is None:
        return None
    timing = {"periodSeconds": 5, "failureThreshold": max(1, math.ceil(ready.timeout / 5))}
    if ready.agent:
        return {"guestAgentPing": {}, **timing}
    if ready.port or ready.ssh:
        return {"tcpSocket": {"port": ready.port or profile.ssh.port}, **timing}
    if ready.serial:
        mapping.note("ready.serial", "KubeVirt has no serial-console probe: the VM counts as ready once running")
    return None
