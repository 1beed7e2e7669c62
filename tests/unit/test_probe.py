"""The host probe's parsers, on output recorded from Debian 12's QEMU 7.2 (pure: no QEMU is run)."""

from __future__ import annotations

from qemuvm.qemu.probe import parse_accelerators, parse_machines, parse_version

VERSION = """QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)
Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers
"""
MACHINES = """Supported machines are:
microvm              microvm (i386)
pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)
pc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default)
q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)
pc-q35-7.2           Standard PC (Q35 + ICH9, 2009)
isapc                ISA-only PC
none                 empty machine
"""
ACCELS = """Accelerators supported in QEMU binary:
tcg
kvm
"""


def test_version() -> None:
    assert parse_version(VERSION) == (7, 2, 22)
    assert parse_version("QEMU emulator version 8.1\n") == (8, 1, 0)
    assert parse_version("") == (0, 0, 0)


def test_machines_and_accelerators() -> None:
    assert parse_machines(MACHINES) == ("microvm", "pc", "pc-i440fx-7.2", "q35", "pc-q35-7.2", "isapc", "none")
    assert parse_accelerators(ACCELS) == ("tcg", "kvm")
    assert parse_machines("") == () and parse_accelerators("Accelerators supported in QEMU binary:\n") == ()


def test_doctor_names_each_arch_qemu_and_firmware_with_its_package(monkeypatch) -> None:
    """Without qemu-system-aarch64 and AAVMF, doctor says that machine.arch aarch64 is unavailable and which
    packages bring it; a missing x86_64 QEMU is required (doctor exits 1)."""
    from qemuvm.qemu import doctor, probe

    x86 = probe.QemuBinary("/usr/bin/qemu-system-x86_64", (7, 2, 0), ("q35", "pc", "microvm"), ("tcg", "kvm"))
    monkeypatch.setattr(probe, "probe_binary", lambda binary: x86 if binary == "qemu-system-x86_64" else None)
    monkeypatch.setattr(probe, "find_ovmf", lambda arch="x86_64": ("/c.fd", "/v.fd") if arch == "x86_64"
                        else (None, None))
    checks = {check.name: check for check in doctor.qemu_checks("qemu-system-x86_64")}
    assert (checks["QEMU"].status, checks["QEMU"].required) == ("ok", True)
    arm = checks["QEMU aarch64"]
    assert (arm.status, arm.required, arm.fix) == ("info", False, "apt-get install qemu-system-arm")
    assert arm.detail == "qemu-system-aarch64 not on PATH: machine.arch aarch64 is unavailable"
    assert "AAVMF (aarch64 UEFI)" not in checks  # no firmware row for a QEMU that is not there

    monkeypatch.setattr(probe, "probe_binary", lambda binary: None)
    missing = {check.name: check for check in doctor.qemu_checks("qemu-system-x86_64")}["QEMU"]
    assert (missing.status, missing.required, missing.fix) == ("missing", True, "apt-get install qemu-system-x86")
