"""Unit tests of compile's helpers and rules; the goldens (tests/golden) cover whole command lines."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qemuvm.errors import UsageError
from qemuvm.paths import InstancePaths
from qemuvm.profile.model import Profile
from qemuvm.qemu.compile import (
    PortPlan,
    accel_notice,
    compile_argv,
    compile_options,
    effective_accel,
    effective_cpu,
    kvm_problem,
)
from qemuvm.qemu.facts import HostFacts
from qemuvm.qemu.options import derive_mac, escape, keyvals

HW = HostFacts(kvm_usable=True, kvm_hardware=True)
SOFT = HostFacts(kvm_usable=True, kvm_hardware=False)
NOKVM = HostFacts(kvm_usable=False, kvm_hardware=False)
PATHS = InstancePaths(Path("/run/qv/t"))


def profile(**data: Any) -> Profile:
    return Profile.model_validate({"name": "t", **data})


def options(p: Profile, host: HostFacts = HW, **kw: Any) -> list[tuple[str, ...]]:
    return [o.args for o in compile_options(p, PATHS, host, **kw)]


def values(p: Profile, flag: str, host: HostFacts = HW, **kw: Any) -> list[str]:
    return [args[1] for args in options(p, host, **kw) if args[0] == flag]


def unescape_split(text: str) -> list[str]:
    """QEMU's reading of a key=value list: split on single commas, then `,,` -> `,`."""
    return [part.replace("\0", ",") for part in text.replace(",,", "\0").split(",")]


def test_escape_and_keyvals() -> None:
    assert escape("a,b,,c") == "a,,b,,,,c"
    assert keyvals("drv", {"a": True, "b": False, "c": None, "d": 3, "e": "x,y"}) == "drv,a=on,b=off,d=3,e=x,,y"
    assert keyvals(None, {"k": "v"}) == "k=v"


def test_derive_mac_is_stable_local_and_distinct() -> None:
    mac = derive_mac("web1", 0)
    assert mac == derive_mac("web1", 0)
    assert re.fullmatch(r"52:54:00(:[0-9a-f]{2}){3}", mac)
    assert len({derive_mac(name, i) for name in ("a", "b", "web1") for i in range(4)}) == 12


@pytest.mark.parametrize(("accel", "host", "expected", "cpu"), [
    ("kvm", HW, "kvm", "host"),
    ("kvm", SOFT, "kvm", "host,arch-capabilities=off"),
    ("tcg", HW, "tcg", "max"),
    ("auto", HW, "kvm", "host"),
    ("auto", SOFT, "tcg", "max"),
    ("auto", NOKVM, "tcg", "max"),
])
def test_accel_and_cpu(accel: str, host: HostFacts, expected: str, cpu: str) -> None:
    p = profile(machine={"accel": accel})
    assert effective_accel(p, host) == expected
    assert effective_cpu(p, host) == cpu
    assert values(p, "-accel", host) == [expected]
    assert values(p, "-cpu", host) == [cpu]
    assert (accel_notice(p, host) is not None) == (accel == "auto" and expected == "tcg")


ARM_HOST = HostFacts(arch="aarch64", kvm_usable=True, kvm_hardware=True,
                     ovmf_code="/usr/share/AAVMF/AAVMF_CODE.fd", ovmf_vars="/usr/share/AAVMF/AAVMF_VARS.fd",
                     machines=("virt",))
X86_RUNNING_ARM = HostFacts(kvm_usable=True, kvm_hardware=True, ovmf_code="/usr/share/AAVMF/AAVMF_CODE.fd",
                            machines=("virt",))


@pytest.mark.parametrize(("accel", "host", "expected", "cpu", "gic", "problem"), [
    # An aarch64 guest: KVM only on an arm64 host; TCG's default CPU has the cheap pointer authentication.
    (None, X86_RUNNING_ARM, "tcg", "max,pauth-impdef=on", "3", False),  # the default accel is auto
    ("auto", ARM_HOST, "kvm", "host", "host", False),
    ("tcg", ARM_HOST, "tcg", "max,pauth-impdef=on", "3", False),
    ("kvm", X86_RUNNING_ARM, "kvm", "host", "host", True),  # refused by the launcher, shown by render
    ("kvm", ARM_HOST, "kvm", "host", "host", False),
])
def test_aarch64_accel_cpu_and_gic(accel: str | None, host: HostFacts, expected: str, cpu: str, gic: str,
                                   problem: bool) -> None:
    p = profile(machine={"arch": "aarch64", **({"accel": accel} if accel else {})})
    assert (p.qemu.binary, p.machine.type, p.machine.firmware) == ("qemu-system-aarch64", "virt", "uefi")
    assert effective_accel(p, host) == expected
    assert values(p, "-cpu", host) == [cpu]
    assert f"gic-version={gic}" in values(p, "-machine", host)[0]
    assert (kvm_problem(p, host) is not None) == problem
    if accel is None:
        assert accel_notice(p, host) == "machine.accel auto: using TCG (an aarch64 guest on an x86_64 host)"
    assert ("-device", "pvpanic-pci") in options(p, host)


def test_aarch64_display_devices_and_firmware() -> None:
    std = profile(machine={"arch": "aarch64"}, display={"vga": "std"})
    virtio = profile(machine={"arch": "aarch64"}, display={"vga": "virtio"})
    assert "ramfb,id=video0" in values(std, "-device", X86_RUNNING_ARM)
    assert "virtio-gpu-pci,id=video0" in values(virtio, "-device", X86_RUNNING_ARM)
    no_aavmf = HostFacts(ovmf_code=None, ovmf_vars=None, machines=("virt",))
    with pytest.raises(UsageError, match=r"needs AAVMF \(apt-get install qemu-efi-aarch64\)"):
        compile_options(std, PATHS, no_aavmf)


def test_an_explicit_binary_is_kept_for_aarch64() -> None:
    p = profile(machine={"arch": "aarch64"}, qemu={"binary": "/opt/qemu/bin/qemu-system-aarch64"})
    assert p.qemu.binary == "/opt/qemu/bin/qemu-system-aarch64"
    assert profile().qemu.binary == "qemu-system-x86_64"


def test_explicit_cpu_wins_and_kvm_problem() -> None:
    assert effective_cpu(profile(machine={"cpu": "Skylake-Client,+vmx"}), SOFT) == "Skylake-Client,+vmx"
    assert kvm_problem(profile(), NOKVM) is not None
    assert kvm_problem(profile(machine={"accel": "auto"}), NOKVM) is None
    assert kvm_problem(profile(), HW) is None


def test_start_paused_adds_s_once() -> None:
    assert ("-S",) not in options(profile())
    assert options(profile(), start_paused=True).count(("-S",)) == 1


def test_every_option_names_its_fields() -> None:
    p = profile(disks=[{"file": "/x.qcow2", "interface": "scsi"}], guest_agent=True, display={"vnc": {}},
                shares=[{"source": "/s", "tag": "s"}], cloud_init={}, qemu={"extra_args": ["-rtc", "base=utc"]})
    for option in compile_options(p, PATHS, HW):
        assert option.fields and all(option.fields), option
        assert option.args[0].startswith("-"), option


def test_argv_starts_with_binary_and_ends_with_extra_args() -> None:
    argv = compile_argv(profile(qemu={"binary": "/opt/q", "extra_args": ["-rtc", "base=utc"]}), PATHS, HW)
    assert argv[0] == "/opt/q"
    assert argv[-2:] == ["-rtc", "base=utc"]


@pytest.mark.parametrize(("cache", "node", "device"), [
    ("writeback", [], []),
    ("none", ["cache.direct=on"], []),
    ("unsafe", ["cache.no-flush=on"], []),
    ("writethrough", [], ["write-cache=off"]),
    ("directsync", ["cache.direct=on"], ["write-cache=off"]),
])
def test_cache_modes(cache: str, node: list[str], device: list[str]) -> None:
    p = profile(disks=[{"file": "/d.qcow2", "cache": cache}])
    blockdevs = values(p, "-blockdev")
    disk_device = next(v for v in values(p, "-device") if "drive=disk0" in v)
    for text in blockdevs:
        assert [part for part in text.split(",") if part.startswith("cache.")] == node
    assert [part for part in disk_device.split(",") if part.startswith("write-cache")] == device


def test_ephemeral_disk_opens_the_overlay() -> None:
    blockdevs = values(profile(disks=[{"file": "/base.raw", "ephemeral": True}]), "-blockdev")
    assert f"filename={PATHS.overlay(0)}" in blockdevs[0]
    assert "driver=qcow2" in blockdevs[1]
    assert "/base.raw" not in " ".join(blockdevs)


def test_bios_boot_uses_letters_and_no_bootindex() -> None:
    p = profile(boot={"order": ["cdrom", "disk"], "once": "network"},
                disks=[{"file": "/a.qcow2"}, {"file": "/b.iso", "media": "cdrom", "interface": "sata"}])
    assert values(p, "-boot") == ["order=dc,once=n"]
    assert not any("bootindex" in v for v in values(p, "-device"))


def test_uefi_boot_uses_bootindex_in_order() -> None:
    p = profile(machine={"firmware": "uefi"}, boot={"order": ["network", "cdrom", "disk"]},
                disks=[{"file": "/a.qcow2"}, {"file": "/b.iso", "media": "cdrom", "interface": "scsi"}])
    devices = values(p, "-device")
    index = {m[1]: int(m[2]) for v in devices if (m := re.search(r"id=(\w+)-dev.*bootindex=(\d+)", v))}
    assert index == {"net0": 1, "disk1": 2, "disk0": 3}
    assert values(p, "-boot") == []  # (boot.once with uefi is a validation error: tests/golden/err-uefi-once)


def test_ssh_forward_goes_to_first_user_nic_and_planned_ports_apply() -> None:
    p = profile(network=[{"mode": "tap", "ifname": "t0"}, {"forwards": [{"host": 0, "guest": 80}]}, {}],
                ssh={"port": 2022}, display={"vnc": {}})
    plan = PortPlan(vnc_port=5911, forwards={(1, 0): 40000}, ssh_host_port=2200)
    netdevs = values(p, "-netdev", ports=plan)
    assert netdevs[1] == "user,id=net1,hostfwd=tcp:127.0.0.1:40000-:80,hostfwd=tcp:127.0.0.1:2200-:2022"
    assert netdevs[2] == "user,id=net2"
    assert values(p, "-vnc", ports=plan) == ["127.0.0.1:11,password=on"]  # a per-instance password by default
    assert values(p, "-vnc") == ["127.0.0.1:0,to=99,password=on"]


def test_no_network_no_nic_and_sandbox_without_bridge_only() -> None:
    p = profile(network=[])
    assert values(p, "-netdev") == []
    assert len(values(p, "-sandbox")) == 1
    assert values(profile(network=[{"mode": "bridge"}]), "-sandbox") == []


def test_host_dependent_errors() -> None:
    with pytest.raises(UsageError, match="OVMF"):
        compile_options(profile(machine={"firmware": "uefi"}), PATHS, HostFacts(ovmf_code=None))
    with pytest.raises(UsageError, match="qemu-bridge-helper"):
        compile_options(profile(network=[{"mode": "bridge"}]), PATHS, HostFacts(bridge_helper=None))
    with pytest.raises(UsageError, match="at most 6"):
        compile_options(profile(disks=[{"file": f"/{i}.raw", "interface": "sata"} for i in range(7)]), PATHS, HW)


def test_compile_touches_no_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pure: nothing referenced needs to exist, and no file is opened."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"compile opened {args[0]!r}")

    p = profile(machine={"firmware": "uefi"}, disks=[{"file": "/nowhere/x.qcow2", "ephemeral": True}],
                cloud_init={"user_data": "/nowhere/ud"}, shares=[{"source": "/nowhere", "tag": "n"}])
    monkeypatch.setattr("builtins.open", refuse)
    monkeypatch.setattr("os.stat", refuse)
    assert compile_options(p, PATHS, HW)


_user_text = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="\x7f"), min_size=1)


@given(name=_user_text, tag=st.from_regex(r"[A-Za-z0-9_.-]{1,31}", fullmatch=True))
def test_user_paths_read_back_exactly(name: str, tag: str) -> None:
    """Whatever a path holds (commas, '=', spaces), QEMU's parser reads back exactly that value."""
    path = "/data/" + name
    p = profile(disks=[{"file": path}], shares=[{"source": path, "tag": tag, "type": "9p"}])
    file_node = values(p, "-blockdev")[0]
    assert f"filename={path}" in unescape_split(file_node)
    fsdev = values(p, "-fsdev")[0]
    assert f"path={path}" in unescape_split(fsdev)
    assert all("\n" not in arg for args in options(p) for arg in args)
