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
