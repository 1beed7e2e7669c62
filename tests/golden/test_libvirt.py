"""libvirt domain XML, both ways, as golden files.

Import: each of libvirt's own domain definitions in libvirt/domains/ becomes exactly
libvirt/imported/NAME.yaml (the commented profile `qemuvm import libvirt` writes: what did not come over is
listed at its top), which is a valid profile that compiles. Export: each example profile in profiles/ becomes
exactly libvirt/exported/NAME.xml, which libvirt's own schema (virt-xml-validate) and its own parser
(`virsh -c test:///default define`, libvirt's in-process test driver: no daemon) accept; and importing an
export gives back every field both formats express. `QEMUVM_REGEN_GOLDEN=1` rewrites the expected files.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from golden_cases import GOLDEN, HARDWARE_KVM, PROFILES, facts_for, paths_for
from libvirt_cases import DOMAINS, EXPORTED, IMPORTED, REGEN, import_case, imported_profile

from qemuvm.convert import libvirt_export, libvirt_import
from qemuvm.profile.model import Profile
from qemuvm.profile.validate import load_and_validate
from qemuvm.qemu.compile import compile_options
from qemuvm.runtime import imagecache
from qemuvm.runtime.preflight import read_vnc_password, resolve_images

REPO = GOLDEN.parents[1]
EXAMPLES = sorted((REPO / "profiles").glob("*.yaml"))
VALID_GOLDENS = [p for p in PROFILES if not p.stem.startswith("err-")]


def _golden(expected: Path, text: str) -> None:
    if REGEN:
        expected.parent.mkdir(exist_ok=True)
        expected.write_text(text)
    assert expected.exists(), f"no {expected.name}: run QEMUVM_REGEN_GOLDEN=1 pytest tests/golden"
    assert text == expected.read_text()


def test_the_corpus_is_big_enough() -> None:
    assert len(DOMAINS) >= 40
    orphans = {p.stem for p in IMPORTED.glob("*.yaml")} - {p.stem for p in DOMAINS}
    assert not orphans


@pytest.mark.parametrize("path", DOMAINS, ids=[p.stem for p in DOMAINS])
def test_import_golden(path: Path) -> None:
    _golden(IMPORTED / f"{path.stem}.yaml", import_case(path))


@pytest.mark.parametrize("path", DOMAINS, ids=[p.stem for p in DOMAINS])
def test_imported_profile_is_valid_and_compiles(path: Path) -> None:
    profile = imported_profile(path)
    host = facts_for(profile, HARDWARE_KVM)
    argv = [arg for option in compile_options(profile, paths_for(profile), host) for arg in option.args]
    for disk in profile.disks:
        assert any(disk.file in arg for arg in argv)
    assert ("-m" in argv) and str(profile.machine.memory) in argv[argv.index("-m") + 1]


def test_most_common_unsupported_elements() -> None:
    """The numbers the closing note quotes: how many import cleanly, what is most often left out."""
    counts: collections.Counter[str] = collections.Counter()
    clean = 0
    for path in DOMAINS:
        unsupported = libvirt_import.import_domain(path.read_bytes(), source=path.name).unsupported
        clean += not unsupported
        counts.update({re.sub(r"\[\d+\]", "", note.path.split("=")[0]) for note in unsupported})
    print(f"\n{clean} of {len(DOMAINS)} import with nothing left out; most often left out:")
    for where, count in counts.most_common(12):
        print(f"  {count:3}  {where}")
    assert 0 < clean < len(DOMAINS)


def _as_exported(profile: Profile) -> Profile:
    """As `export` reads a profile: a url or catalog image disk named by its path in the image cache."""
    return resolve_images(profile, pull=False)


def _export(path: Path) -> str:
    xml = libvirt_export.export_domain(_as_exported(load_and_validate(str(path)))).xml
    return xml.replace(str(imagecache.cache_dir()), "@CACHE@").replace(str(REPO), "@REPO@")


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_export_golden(path: Path) -> None:
    _golden(EXPORTED / f"{path.stem}.xml", _export(path))


def _libvirt_accepts(xml: str, tmp_path: Path) -> None:
    if shutil.which("virt-xml-validate") is None or shutil.which("virsh") is None:
        pytest.skip("libvirt-clients and libxml2-utils are not installed (scripts/setup installs them)")
    domain = tmp_path / "domain.xml"
    domain.write_text(xml)
    checked = subprocess.run(["virt-xml-validate", str(domain), "domain"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Debian 12's libvirt 9.0 parser knows no passt backend yet (its schema does): check the rest without it.
    domain.write_text(re.sub(r"\s*<backend type=\"passt\" />|\s*<portForward.*?</portForward>", "", xml,
                             flags=re.S))
    defined = subprocess.run(["virsh", "-q", "-c", "test:///default", "define", str(domain)],
                             capture_output=True, text=True)
    assert defined.returncode == 0, defined.stderr


@pytest.mark.parametrize("path", EXAMPLES + VALID_GOLDENS, ids=[p.stem for p in EXAMPLES + VALID_GOLDENS])
def test_libvirt_accepts_the_export_and_import_gives_it_back(path: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(path.parent)
    original = _as_exported(load_and_validate(path.name))
    vnc = original.display.vnc if original.display else None
    password = None
    if vnc and vnc.password_file:  # (a golden's password file need not exist: any password does here)
        password = read_vnc_password(vnc.password_file) if Path(vnc.password_file).exists() else "golden"
    exported = libvirt_export.export_domain(original, password)  # as with --security-info
    _libvirt_accepts(exported.xml, tmp_path)
    networks = frozenset(nic.network for nic in original.network if nic.network)  # as if they existed
    back = libvirt_import.import_domain(exported.xml.encode(), source="export.xml", networks=networks,
                                        machines=HARDWARE_KVM.machines)
    text = libvirt_import.render_profile(back, "export.xml", original.display.vnc.password_file
                                         if original.display and original.display.vnc else None)
    monkeypatch.chdir(tmp_path)
    again = load_and_validate(_write(tmp_path / "again.yaml", text))
    assert _shared_fields(again) == _shared_fields(original)


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _shared_fields(profile: Profile) -> dict[str, object]:
    """What a profile and a libvirt domain both express (the rest is listed by export as not expressed)."""
    machine = profile.machine
    vnc = profile.display.vnc if profile.display else None
    return {
        "name": profile.name, "description": profile.description, "type": machine.type,
        "kvm": machine.accel != "tcg", "cpu": machine.cpu or ("host" if machine.accel != "tcg" else "max"),
        "cpus": machine.cpus, "memory": machine.memory, "hugepages": machine.hugepages,
        "mem_merge": machine.mem_merge, "firmware": machine.firmware,
        "boot": (profile.boot.kernel, profile.boot.initrd, profile.boot.cmdline, profile.boot.order),
        "arch": machine.arch,
        "disks": [(d.file, d.image_format, d.interface if d.interface != "nvme" else
                   "scsi" if machine.arch == "aarch64" else "sata", d.media,
                   d.readonly or d.media == "cdrom", d.cache, d.discard, d.ephemeral, d.serial)
                  for d in profile.disks],
        "network": [(n.mode if n.mode != "user" or not n.forwards else "passt",
                     n.bridge or ("br0" if n.mode == "bridge" and not n.network else None), n.network, n.ifname,
                     n.model, n.mac, [(f.host or f.guest, f.guest, f.protocol) for f in n.forwards])
                    for n in profile.network if n.mode != "segment"],
        "shares": [(s.source, s.tag, s.readonly, "9p" if s.type == "auto" else s.type) for s in profile.shares],
        # No display device either way; and VNC always shows a VGA (compile makes none std then).
        "vga": None if not profile.display or (profile.display.vga == "none" and not vnc) else
        "std" if profile.display.vga == "none" else profile.display.vga,
        "vnc": (vnc.listen, vnc.port, bool(vnc.password_file)) if vnc else None,
        "guest_agent": profile.guest_agent, "restart": profile.restart.policy,
        "extra_args": profile.qemu.extra_args, "binary": Path(profile.qemu.binary).name,
    }
