"""`qemuvm image pull` and disks with url:, against a real HTTP server on loopback (imageserver.py): verified,
content-addressed, resumed after a kill, downloaded once for two pulls, refused with one sentence when wrong,
and a VM that boots from a URL without ever writing the cached image."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import cli, guest_profile, poll
from imageserver import ImageServer, write_blob

from qemuvm import api

pytestmark = pytest.mark.integration
SIZE = 3 << 20


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def cache() -> Path:
    return Path(os.environ["XDG_CACHE_HOME"]) / "qemuvm" / "images"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ImageServer, bytes]]:
    root = tmp_path / "www"
    root.mkdir()
    data = write_blob(root / "img.raw", SIZE)
    with ImageServer(root) as server:
        yield server, data


def pull(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return cli("image", "pull", *args, timeout=timeout)


def leftovers() -> list[str]:
    partial = cache() / ".partial"
    return sorted(p.name for p in partial.iterdir() if not p.name.endswith(".lock")) if partial.exists() else []


def test_a_pull_is_verified_cached_private_and_never_asked_again(served: tuple[ImageServer, bytes]) -> None:
    server, data = served
    done = pull(server.url("img.raw"), "--digest", sha256(data), "--json")
    assert done.returncode == 0, done.stderr
    pulled = json.loads(done.stdout)
    assert pulled["digest"] == sha256(data) and pulled["size"] == SIZE and pulled["url"] == server.url("img.raw")
    image = Path(pulled["path"])
    assert image.read_bytes() == data and image.name == "sha256-" + hashlib.sha256(data).hexdigest()
    assert stat.S_IMODE(image.stat().st_mode) == 0o400 and stat.S_IMODE(cache().stat().st_mode) == 0o700
    assert pulled["format"] == "raw" and leftovers() == []
    again = pull(server.url("img.raw"), "--digest", sha256(data), "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["path"] == str(image)
    assert server.requests["/img.raw"] == 1  # the second pull made no request


def test_a_digest_mismatch_caches_nothing(served: tuple[ImageServer, bytes]) -> None:
    server, data = served
    wrong = sha256(b"something else")
    done = pull(server.url("img.raw"), "--digest", wrong)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"does not match its digest: expected {wrong}, got {sha256(data)}; nothing was cached" in done.stderr
    assert api.image_ls() == [] and leftovers() == []


def test_checksum_files_in_both_formats_and_a_missing_entry(served: tuple[ImageServer, bytes]) -> None:
    server, data = served
    hex_ = hashlib.sha256(data).hexdigest()
    (server.root / "SHA256SUMS").write_text(f"{'0' * 64}  other.raw\n{hex_} *img.raw\n")
    (server.root / "CHECKSUM").write_text(f"# BSD lines, as Fedora's\nSHA256 (img.raw) = {hex_}\n")
    (server.root / "EMPTY").write_text(f"{'0' * 64}  other.raw\n")
    for sums in ("SHA256SUMS", "CHECKSUM"):
        done = pull(server.url("img.raw"), "--sums", server.url(sums), "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["digest"] == sha256(data)
    missing = pull(server.url("img.raw"), "--sums", server.url("EMPTY"))
    assert missing.returncode == 2 and missing.stderr.strip().endswith(f"{server.url('EMPTY')} lists no digest "
                                                                       "for img.raw")


def test_a_killed_pull_resumes_where_it_stopped(served: tuple[ImageServer, bytes]) -> None:
    server, data = served
    server.stall_after = 1 << 20  # the first connection delivers 1 MiB, then hangs
    first = subprocess.Popen([sys.executable, "-m", "qemuvm", "image", "pull", server.url("img.raw"),
                              "--digest", sha256(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert server.stalled.wait(60)
        # What arrived is on disk (written as it comes) before the kill: that is what a resume continues.
        poll("the first MiB in the partial file", lambda: [p for p in (cache() / ".partial").glob("*")
                                                           if p.suffix != ".lock" and p.stat().st_size], 30)
        first.send_signal(signal.SIGKILL)  # kill -9: no chance to clean up
    finally:
        first.wait(30)
    server.stall_after = None
    server.release.set()
    done = pull(server.url("img.raw"), "--digest", sha256(data), "--json")
    assert done.returncode == 0, done.stderr
    [asked] = server.ranges
    resumed_at = int(asked.removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 1 << 20 and f"resuming {server.url('img.raw')} at {resumed_at} bytes" in done.stderr
    assert Path(json.loads(done.stdout)["path"]).read_bytes() == data and leftovers() == []


def test_a_dropped_connection_is_retried_from_where_it_broke(served: tuple[ImageServer, bytes]) -> None:
    server, data = served
    server.cut_after = 1 << 20
    done = pull(server.url("img.raw"), "--digest", sha256(data), "--json")
    assert done.returncode == 0, done.stderr
    assert "retrying in 1 s" in done.stderr and len(server.ranges) == 1
    assert Path(json.loads(done.stdout)["path"]).read_bytes() == data


def test_two_pulls_at_once_download_once(served: tuple[ImageServer, bytes]) -> None:
    server, data = served
    server.stall_after = 1 << 20
    argv = [sys.executable, "-m", "qemuvm", "image", "pull", server.url("img.raw"), "--digest", sha256(data),
            "--json"]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = None
    try:
        assert server.stalled.wait(60)
        second = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        waiting: list[str] = []
        reader = threading.Thread(target=lambda: waiting.append(second.stderr.readline()), daemon=True)
        reader.start()
        reader.join(60)  # the second says it waits before the first is let go
        assert waiting and "another pull of " in waiting[0] and "waiting for it" in waiting[0], waiting
        server.stall_after = None
        server.release.set()  # the first's connection ends short: it resumes, completes, and the second finds it
        out_first, _ = first.communicate(timeout=120)
        out_second, _ = second.communicate(timeout=120)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert first.returncode == 0 and second.returncode == 0
    assert json.loads(out_first)["path"] == json.loads(out_second)["path"]
    assert server.requests["/img.raw"] == 2 and len(server.ranges) == 1  # the first's two attempts, nothing else


def test_a_missing_file_and_a_stalled_server_are_one_sentence_each(served: tuple[ImageServer, bytes]) -> None:
    server, data = served
    gone = pull(server.url("nothing.raw"), "--digest", sha256(data))
    assert gone.returncode == 1 and gone.stderr.strip() == f"qemuvm: could not pull {server.url('nothing.raw')}: " \
                                                           "HTTP 404 Not Found"
    server.stall_after = 1 << 20
    stalled = pull(server.url("img.raw"), "--digest", sha256(data), "--timeout", "1", "--retries", "0")
    assert stalled.returncode == 1 and "Traceback" not in stalled.stderr
    assert f"could not pull {server.url('img.raw')}: nothing arrived for 1 s" in stalled.stderr
    assert api.image_ls() == []


def test_a_url_without_a_digest_needs_the_insecure_switch(served: tuple[ImageServer, bytes]) -> None:
    server, data = served
    refused = pull(server.url("img.raw"))
    assert refused.returncode == 2 and "give --digest sha256:HEX or --sums URL" in refused.stderr
    assert server.requests["/img.raw"] == 0
    done = pull(server.url("img.raw"), "--insecure-no-digest", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["digest"] == sha256(data)


def test_credentials_are_sent_but_never_printed_or_stored(served: tuple[ImageServer, bytes]) -> None:
    server, data = served
    url = server.url("img.raw").replace("http://", "http://ci:s3cret@")
    done = pull(url, "--digest", sha256(data), "--json")
    assert done.returncode == 0, done.stderr
    assert "s3cret" not in done.stdout + done.stderr and json.loads(done.stdout)["url"] == server.url("img.raw")
    assert not [p for p in cache().iterdir() if p.is_file() and b"s3cret" in p.read_bytes()]
    assert server.auth == ["Basic " + base64.b64encode(b"ci:s3cret").decode()]  # sent, as basic auth
    failed = pull(url.replace("img.raw", "nothing.raw"), "--digest", sha256(b"not cached"))
    assert "s3cret" not in failed.stderr and "HTTP 404" in failed.stderr


def test_ls_rm_and_prune_least_recently_used_first(served: tuple[ImageServer, bytes]) -> None:
    server, data = served
    other = write_blob(server.root / "other.raw", 1 << 20, seed=9)
    for name, content in (("img.raw", data), ("other.raw", other)):
        assert pull(server.url(name), "--digest", sha256(content)).returncode == 0
    assert pull(server.url("img.raw"), "--digest", sha256(data)).returncode == 0  # used again: newest
    listed = json.loads(cli("image", "ls", "--json").stdout)
    assert sorted(row["digest"] for row in listed) == sorted([sha256(data), sha256(other)])
    pruned = cli("image", "prune", "--keep", str(SIZE))
    assert pruned.returncode == 0 and "removed 1 image(s)" in pruned.stderr
    assert [row["digest"] for row in api.image_ls()] == [sha256(data)]  # the least recently used went
    assert cli("image", "rm", hashlib.sha256(data).hexdigest()[:12]).returncode == 0
    nothing = cli("image", "rm", "sha256:0123456789")
    assert api.image_ls() == [] and nothing.returncode == 2 and "no cached image matches" in nothing.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_leaves_the_cache_as_it_was(served: tuple[ImageServer, bytes], tmp_path: Path) -> None:
    server, data = served
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        env = dict(os.environ, XDG_CACHE_HOME=str(small))
        done = cli("image", "pull", server.url("img.raw"), "--digest", sha256(data), env=env)
        assert done.returncode == 1 and "no space left on the device of" in done.stderr, done.stderr
        assert "the partial file is removed and the cache is as it was" in done.stderr
        images = small / "qemuvm" / "images"
        assert [p.name for p in images.iterdir() if p.name != ".partial"] == []
        assert [p for p in (images / ".partial").iterdir() if not p.name.endswith(".lock")] == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_a_vm_boots_from_a_url_disk_and_never_writes_the_cached_image(home: Path, test_guest: Any,
                                                                     tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    (root / "data.qcow2").write_bytes(test_guest.data_disk.read_bytes())
    digest = sha256((root / "data.qcow2").read_bytes())
    with ImageServer(root) as server:
        profile = guest_profile(tmp_path, test_guest, "fromurl", disks=[{"url": server.url("data.qcow2"),
                                                                         "digest": digest}],
                                ready={"serial": r"QEMUVM_GUEST_READY .*data=/dev/vd", "timeout": "300s"})
        rendered = cli("render", str(profile))
        assert rendered.returncode == 0 and "is not pulled yet" in rendered.stderr
        assert f"`up` pulls it to {cache() / ('sha256-' + digest.split(':')[1])})" in rendered.stderr
        assert api.up(str(profile))["ready"] is True  # the guest mounted it read-write: on its overlay
        assert server.requests["/data.qcow2"] == 1
    image = cache() / f"sha256-{digest.split(':')[1]}"
    before = (image.stat().st_mtime_ns, sha256(image.read_bytes()))
    assert api.down("fromurl")["state"] == "stopped"
    assert (image.stat().st_mtime_ns, sha256(image.read_bytes())) == before == (before[0], digest)
    saved = yaml.safe_load((home / "fromurl" / "profile.yaml").read_text())
    assert saved["disks"][0]["file"] == str(image) and saved["disks"][0]["ephemeral"] is True
    # The same profile again starts without the server: the image is in the cache.
    assert api.up(str(profile), wait=False)["state"] == "running"
    api.down("fromurl", force=True)


def test_a_redirect_is_followed(served: tuple[ImageServer, bytes]) -> None:
    server, data = served
    server.redirects["/latest.raw"] = server.url("img.raw")  # as a distribution's "latest" link does
    done = pull(server.url("latest.raw"), "--digest", sha256(data), "--json")
    assert done.returncode == 0, done.stderr
    assert server.requests["/latest.raw"] == 1 and server.requests["/img.raw"] == 1
    assert Path(json.loads(done.stdout)["path"]).read_bytes() == data


def test_a_catalog_name_through_a_mirror(tmp_path: Path) -> None:
    """`image pull debian-12` fetches Debian's path below QEMUVM_IMAGE_MIRROR and verifies it against the
    SHA512SUMS beside it, as Debian publishes it (the Debian smoke test boots the real image this way)."""
    from qemuvm.runtime import catalog

    entry = catalog.find("debian-12", "aarch64", mirror="")
    path = entry.url.split("://", 1)[1].split("/", 1)[1]
    served = tmp_path / "www" / path
    served.parent.mkdir(parents=True)
    data = write_blob(served, 1 << 20)
    (served.parent / "SHA512SUMS").write_text(f"{hashlib.sha512(data).hexdigest()}  {served.name}\n")
    with ImageServer(tmp_path / "www") as server:
        env = dict(os.environ, QEMUVM_IMAGE_MIRROR=server.base)
        done = cli("image", "pull", "debian-12", "--arch", "aarch64", "--json", env=env)
        assert done.returncode == 0, done.stderr
        pulled = json.loads(done.stdout)
        assert pulled["digest"] == "sha512:" + hashlib.sha512(data).hexdigest()
        assert pulled["url"] == server.url(path) and server.requests[f"/{path}"] == 1
        listed = json.loads(cli("image", "catalog", "--json", env=env).stdout)
        assert server.url(path) in [row["url"] for row in listed]
        digest_too = cli("image", "pull", "debian-12", "--digest", pulled["digest"], env=env)
        assert digest_too.returncode == 2 and "is a catalog name" in digest_too.stderr
