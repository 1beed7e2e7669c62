"""A real arm64 distribution image end to end (slow): scripts/build-debian-image --arch arm64 (debootstrap's second
stage under qemu-user-static), pulled as the catalog's aarch64 `image: debian-12` from loopback, booted under AAVMF
with cloud-init, warm-cloned. Apart from test_arm64.py so that its long image build holds no VM of that module."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from helpers import cli

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_smoke_on_the_debian_arm64_image(debian_image_arm64, qemuvm_home: Path, short_tmp: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A real arm64 distribution image end to end: Debian 12 arm64 (systemd, OpenSSH, cloud-init; built here by
    scripts/build-debian-image --arch arm64) served from loopback as the catalog's aarch64 `image: debian-12`
    (QEMUVM_IMAGE_MIRROR, with a SHA512SUMS as Debian publishes one), booted under AAVMF with a NoCloud seed to
    SSH with the key qemuvm injected. `--warm`, twice: the second run is a clone of the aarch64 template, which
    restores in a fraction of the long TCG boot; one download in all."""
    import hashlib
    import urllib.parse

    import yaml
    from imageserver import ImageServer

    from qemuvm.runtime import catalog

    entry = catalog.find("debian-12", "aarch64", mirror="")
    www = short_tmp / "www"
    served = www / urllib.parse.urlsplit(entry.url).path.lstrip("/")
    served.parent.mkdir(parents=True)
    served.symlink_to(debian_image_arm64.disk)
    with open(debian_image_arm64.disk, "rb") as image:
        sha512 = hashlib.file_digest(image, "sha512").hexdigest()
    (served.parent / "SHA512SUMS").write_text(f"{'0' * 128}  debian-12-genericcloud-amd64.qcow2\n"
                                              f"{sha512}  {served.name}\n")
    profile = short_tmp / "debian-arm64.yaml"
    profile.write_text(yaml.safe_dump(debian_image_arm64.profile(
        "debian-arm64", disks=[{"image": "debian-12"}],
        cloud_init={"user_data": {"hostname": "armed"}},
        ready={"ssh": True, "timeout": "600s"},
        smoke={"timeout": "900s", "checks": [
            {"name": "cloud-init", "ssh": "cloud-init status --wait", "expect": "status: done"},
            {"name": "hostname", "ssh": "hostname", "expect": "^armed$"},
            {"name": "arch", "ssh": "uname -m", "expect": "^aarch64$"},
            {"name": "uefi", "ssh": "test -d /sys/firmware/efi && echo uefi", "expect": "^uefi$"},
        ]})))
    with ImageServer(www) as server:
        monkeypatch.setenv("QEMUVM_IMAGE_MIRROR", server.base)
        for run in ("makes the template", "is a clone"):
            done = cli("smoke", str(profile), "--warm", "--junit", "out.xml", cwd=short_tmp, timeout=1200)
            assert done.returncode == 0, (run, done.stderr)
            cases = [c.get("name") for c in ET.parse(short_tmp / "out.xml").getroot().iter("testcase")]
            assert cases == ["boot", "ready", "cloud-init", "hostname", "arch", "uefi"]
    assert server.requests[f"/{served.relative_to(www)}"] == 1
    templates = json.loads(cli("template", "ls", "--json").stdout)
    assert len(templates) == 1 and templates[0]["hits"] == 2
    assert [p.name for p in qemuvm_home.iterdir() if not p.name.startswith(".")] == []
