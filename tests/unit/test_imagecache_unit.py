"""The image cache's pure parts: digests, the checksum files distributions publish (GNU and BSD lines), URLs
without their credentials, the https-to-http refusal, the catalog and its mirror, and the disk fields."""

from __future__ import annotations

import urllib.request

import pytest

from qemuvm.errors import OperationError, UsageError
from qemuvm.profile.model import Disk
from qemuvm.runtime import catalog, imagecache
from qemuvm.runtime.imagecache import Digest

H256, H512 = "ab" * 32, "cd" * 64


def test_digests_parse_and_refuse() -> None:
    assert Digest.parse(f"sha256:{H256.upper()}") == Digest("sha256", H256)
    assert Digest.parse(f"sha512:{H512}").name == f"sha512-{H512}"
    for bad in (f"md5:{H256}", f"sha256:{H256[:-1]}", f"sha512:{H256}", H256, "sha256:zz"):
        with pytest.raises(UsageError, match="give sha256:HEX"):
            Digest.parse(bad)


GNU = f"""{H256}  other.qcow2
{H256.replace('a', 'e')} *debian-12-genericcloud-amd64.qcow2
"""
BSD = f"""# Fedora-Cloud-41-1.4-x86_64-CHECKSUM
SHA256 (Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2) = {H256}
SHA256 (Fedora-Cloud-Base-Generic-41-1.4.x86_64.raw.xz) = {H256.replace('b', 'f')}
"""


@pytest.mark.parametrize(("text", "name", "digest"), [
    (GNU, "debian-12-genericcloud-amd64.qcow2", Digest("sha256", H256.replace("a", "e"))),  # binary-mode star
    (GNU, "other.qcow2", Digest("sha256", H256)),
    (f"{H512}  ./nested/image.img\n", "image.img", Digest("sha512", H512)),  # a path: its file name counts
    (BSD, "Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2", Digest("sha256", H256)),
    (f"SHA512 (alpine.qcow2) = {H512}\n", "alpine.qcow2", Digest("sha512", H512)),
])
def test_checksum_files_of_both_formats(text: str, name: str, digest: Digest) -> None:
    assert imagecache.digest_from_sums(text, name, "SUMS") == digest


def test_a_checksum_file_without_the_image_is_one_sentence() -> None:
    with pytest.raises(UsageError, match=r"^http://m/SHA256SUMS lists no digest for missing.qcow2$"):
        imagecache.digest_from_sums(GNU + BSD, "missing.qcow2", "http://m/SHA256SUMS")


def test_credentials_never_leave_the_request() -> None:
    assert imagecache.public_url("https://user:s3cret@host:8443/a/b.qcow2?x=1") == "https://host:8443/a/b.qcow2?x=1"
    assert imagecache.public_url("http://host/a") == "http://host/a"
    assert imagecache.public_url("http://u:pw@[::1/a") == "http://[::1/a"  # unparsable: still no credentials
    request = imagecache._request("http://user:s3cret@host/a")
    assert request.full_url == "http://host/a" and "s3cret" not in request.full_url
    assert request.unredirected_hdrs["Authorization"].startswith("Basic ")  # not sent on to a redirect


def test_a_redirect_from_https_to_http_is_refused() -> None:
    handler = imagecache._NoDowngrade()
    request = urllib.request.Request("https://user:pw@mirror.example/image.qcow2")
    with pytest.raises(OperationError, match=r"redirects to http://plain.example/image.qcow2: refused") as refused:
        handler.redirect_request(request, None, 302, "Found", {}, "http://plain.example/image.qcow2")
    assert "pw" not in str(refused.value)
    assert handler.redirect_request(request, None, 302, "Found", {}, "https://cdn.example/i.qcow2") is not None


def test_the_catalog_has_every_name_for_both_arches_with_a_checksum_file() -> None:
    rows = catalog.entries(mirror="")
    names = {row.name for row in rows}
    assert {"debian-12", "debian-13", "ubuntu-22.04", "ubuntu-24.04", "fedora-41", "alpine-3.20"} <= names
    assert {(row.name, row.arch) for row in rows} == {(n, a) for n in names for a in catalog.ARCHES}
    assert all(row.url.startswith("https://") and row.sums.startswith("https://") for row in rows)
    assert all(row.firmware == "uefi" for row in rows if row.arch == "aarch64")  # no BIOS on aarch64
    assert catalog.find("debian-12", "aarch64", "").url.endswith("debian-12-genericcloud-arm64.qcow2")


def test_a_mirror_keeps_each_path() -> None:
    entry = catalog.find("debian-12", "x86_64", "http://127.0.0.1:8000/pub")
    assert entry.url == "http://127.0.0.1:8000/pub/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2"
    assert entry.sums == "http://127.0.0.1:8000/pub/images/cloud/bookworm/latest/SHA512SUMS"
    with pytest.raises(UsageError, match="mirror 'ftp://x': give a base URL"):
        catalog.mirrored(entry.url, "ftp://x")


def test_catalog_names_and_arches_are_checked() -> None:
    with pytest.raises(UsageError, match=r"no catalog image named 'debian-9'; the catalog has alpine-3.20, "):
        catalog.find("debian-9", "x86_64")
    with pytest.raises(UsageError, match="arch 'riscv64'"):
        catalog.find("debian-12", "riscv64")


@pytest.mark.parametrize(("fields", "error"), [
    ({}, "exactly one of file, url or image"),
    ({"file": "/a.qcow2", "url": "http://h/a.qcow2"}, r"exactly one of file, url or image \(not file and url\)"),
    ({"url": "http://h/a.qcow2"}, "needs digest"),
    ({"url": "ftp://h/a.qcow2", "digest": f"sha256:{H256}"}, "must be an http:// or https:// URL"),
    ({"file": "/a.qcow2", "digest": f"sha256:{H256}"}, "this disk has no url"),
    ({"url": "http://h/a", "sums": "file:///etc/passwd"}, "sums must be an http"),
    ({"image": "debian-12", "size": "1G"}, "downloaded, not created with size"),
    ({"url": "http://h/a", "digest": "sha256:short"}, "String should match pattern"),
    ({"url": "http://[::1/a", "digest": f"sha256:{H256}"}, r"url is not a valid URL \(Invalid IPv6 URL\)"),
])
def test_disk_sources_are_validated(fields: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        Disk.model_validate(fields)


def test_an_unresolved_disk_has_no_path_yet() -> None:
    disk = Disk.model_validate({"image": "debian-12"})
    with pytest.raises(ValueError, match="debian-12 has no local path yet"):
        _ = disk.path


def test_a_cache_folder_that_cannot_be_one_is_one_sentence(tmp_path, monkeypatch) -> None:
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    with pytest.raises(UsageError, match=r"the image cache .*/file/qemuvm/images cannot be used \(Not a directory\)"):
        imagecache.list_cached()
    with pytest.raises(UsageError, match="set XDG_CACHE_HOME to a folder of your own"):
        imagecache.pull("http://127.0.0.1:9/x.img", Digest("sha256", H256))


def test_an_unreadable_checksum_file_falls_back_to_the_image_pulled_before(monkeypatch) -> None:
    earlier = imagecache.Cached(path="/cache/sha512-x", digest="sha512:x", size=1, url="http://m/a.qcow2")

    def offline(*_args, **_kwargs):
        raise imagecache.SumsUnreachable("could not read the checksum file http://m/SUMS: refused")

    notes: list[str] = []
    monkeypatch.setattr(imagecache, "pull", offline)
    monkeypatch.setattr(imagecache, "_by_url", lambda url: earlier if url == "http://m/a.qcow2" else None)
    assert imagecache._pull_for_disk("http://m/a.qcow2", None, "http://m/SUMS", None, notes.append) is earlier
    assert notes == ["could not read the checksum file http://m/SUMS: refused; using /cache/sha512-x, pulled from "
                     "it before"]
    with pytest.raises(imagecache.SumsUnreachable):  # nothing pulled from it before: the sentence stands
        imagecache._pull_for_disk("http://m/other.qcow2", None, "http://m/SUMS", None, notes.append)
