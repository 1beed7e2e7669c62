"""Templates for `up --warm`, as pure decisions: what cannot be started warm (naming the field), and what the
fingerprint covers -- every change that makes a restore wrong gives a new one, the instance name does not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qemuvm.profile.validate import load_and_validate
from qemuvm.qemu.facts import HostFacts
from qemuvm.runtime import records, template


@pytest.fixture
def profile_file(tmp_path: Path) -> Path:
    for name in ("vmlinuz", "initrd", "base.qcow2"):
        (tmp_path / name).write_bytes(name.encode())
    path = tmp_path / "vm.yaml"
    path.write_text("name: vm\nmachine: {accel: tcg, memory: 256M}\n"
                    "boot: {kernel: vmlinuz, initrd: initrd, cmdline: console=ttyS0}\n"
                    "disks: [{file: base.qcow2, format: qcow2, ephemeral: true}]\n"
                    "ready: {serial: READY}\n")
    return path


def _fingerprint(path: Path, *sets: str, name: str | None = None) -> str:
    return template.fingerprint(load_and_validate(str(path), list(sets), name=name), HostFacts())[0]


@pytest.mark.parametrize(("sets", "field"), [
    ([], None),
    (["ready=null"], "ready:"),
    (["shares=[{source: /srv, tag: srv}]"], "shares:"),
    (["disks.0.ephemeral=false"], "disks[0]:"),
    (["disks.0.ephemeral=false", "disks.0.readonly=true"], None),  # read-only: shared as it is
    (["network=[{mode: bridge}]"], "network[0].mode bridge:"),
    (["qemu.extra_args=[-device, vhost-user-fs-pci]"], "qemu.extra_args: a vhost-user"),
    (["qemu.extra_args=[-device, 'usb-host,vendorid=1']"], "qemu.extra_args: a host device"),
])
def test_warm_problem_names_the_field(profile_file: Path, sets: list[str], field: str | None) -> None:
    problem = template.warm_problem(load_and_validate(str(profile_file), sets))
    assert (problem is None) if field is None else problem.startswith(field)


def test_the_fingerprint_follows_the_machine_not_the_name(profile_file: Path) -> None:
    key = _fingerprint(profile_file)
    assert len(key) == 20 and key == _fingerprint(profile_file)
    assert _fingerprint(profile_file, name="other-name") == key  # clones of one profile share a template
    assert _fingerprint(profile_file, "ready.timeout=600", "restart.policy=always", "shutdown.timeout=5") == key
    assert _fingerprint(profile_file, "ready.serial=OTHER") != key  # saved at another moment
    assert _fingerprint(profile_file, "machine.memory=512M") != key  # another device configuration
    assert _fingerprint(profile_file, "boot.cmdline=console=ttyS0 quiet") != key  # another profile
    base = profile_file.parent / "base.qcow2"
    os.utime(base, ns=(1, 1))  # the base image written or replaced since
    assert _fingerprint(profile_file) != key


@pytest.mark.parametrize("host_side", [
    "network=[{mode: user, forwards: ['tcp:127.0.0.1:2222-:22']}]",  # a port per parallel CI job
    "network=[{mode: user, forwards: [{host: 8080, guest: 80, address: 127.0.0.2}]}]",
    "display={vga: std, vnc: {port: 5907}}",
    "display={vga: std, vnc: {port: unix}}",
    "serial.log=false",
    "serial.log_max=1M",
    "ssh={user: admin, port: 2200, identity: /nonexistent/key}",
    "restart={policy: always, max_retries: 9}",
])
def test_what_only_the_host_side_owns_shares_one_template(profile_file: Path, host_side: str) -> None:
    """Forward ports, VNC, serial logging, SSH and policies are the host's: each clone's own argv carries them."""
    key = _fingerprint(profile_file, "network=[{mode: user, forwards: ['tcp:127.0.0.1:3333-:22']}]",
                       "display={vga: std}")
    assert _fingerprint(profile_file, host_side, *(["display={vga: std}"] if "display" not in host_side else []),
                        *(["network=[{mode: user}]"] if "network" not in host_side else [])) == key


@pytest.mark.parametrize("guest_side", [
    "network=[{mode: user, model: e1000}]",  # another NIC
    "network=[]",  # no NIC at all
    "display={vga: virtio}",  # another display device
    "guest_agent=true",  # another channel
    "machine.cpus=2",
])
def test_what_the_guest_sees_gives_a_new_template(profile_file: Path, guest_side: str) -> None:
    assert _fingerprint(profile_file, guest_side) != _fingerprint(profile_file)


def test_a_vnc_server_on_no_display_device_keeps_the_device_it_implies(profile_file: Path) -> None:
    # vga: none with VNC compiles to a standard VGA: the same guest as vga: std without VNC, not as no display.
    with_vnc = _fingerprint(profile_file, "display={vga: none, vnc: {port: unix}}")
    assert with_vnc == _fingerprint(profile_file, "display={vga: std}")
    assert with_vnc != _fingerprint(profile_file, "display={vga: none}")


def test_the_cloud_init_files_the_guest_applied_are_part_of_it(profile_file: Path) -> None:
    user_data = profile_file.parent / "user-data"
    user_data.write_text("#cloud-config\nhostname: one\n")
    key = _fingerprint(profile_file, f"cloud_init.user_data={user_data}")
    user_data.write_text("#cloud-config\nhostname: two, a longer name\n")
    assert _fingerprint(profile_file, f"cloud_init.user_data={user_data}") != key


def test_the_fingerprint_follows_how_this_host_runs_it(profile_file: Path) -> None:
    profile = load_and_validate(str(profile_file), ["machine.accel=auto"])
    with_kvm = template.fingerprint(profile, HostFacts(kvm_usable=True))[0]
    assert template.fingerprint(profile, HostFacts(kvm_usable=False))[0] != with_kvm


def test_template_record_round_trip_and_refusals(tmp_path: Path) -> None:
    from qemuvm.errors import UsageError

    path = tmp_path / "abc" / "template.json"
    path.parent.mkdir()
    assert records.read_template(path) is None
    record = records.TemplateRecord(fingerprint="abc", profile_name="vm", created_at=1.0, saved_at=0.5,
                                    state_size=3, macs=["52:54:00:00:00:01"], disks={"0": "disk0.qcow2"},
                                    inputs=[records.DiskPrint("/b", 1, 2, 3)], source="/p.yaml")
    records.write_template(path, record)
    assert records.read_template(path) == record
    path.write_text('{"schema": 9}')
    with pytest.raises(UsageError, match="newer qemuvm"):
        records.read_template(path)
    path.write_text('{"fingerprint": "abc"}')
    with pytest.raises(UsageError, match=r"incomplete .*template rm abc"):
        records.read_template(path)
