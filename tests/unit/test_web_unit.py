"""`qemuvm web`'s pure parts: who may do what (auth.decide, as a table), the token file, the VNC handshake the
proxy answers for the browser, the metric families (parsed back by prometheus_client's own parser), the vendored
browser libraries (pinned, hashed, licensed), and that nothing of it loads for `qemuvm up`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from qemuvm.errors import UsageError
from qemuvm.web import auth, metrics, rfb

TOKEN = "t" * 32
OWN = "http://127.0.0.1:8470"
VENDOR = Path(__file__).resolve().parents[2] / "qemuvm" / "web" / "static" / "vendor"


CASES = ("method", "authorization", "cookie", "query", "origin", "websocket", "allowed", "cookie_set")


@pytest.mark.parametrize(CASES, [
    ("GET", None, None, None, None, False, False, False),  # nothing: 401
    ("GET", f"Bearer {TOKEN}", None, None, None, False, True, False),  # API clients: the header
    ("POST", f"Bearer {TOKEN}", None, None, "http://evil.example", False, True, False),  # a header is no CSRF
    ("GET", "Bearer wrong", None, None, None, False, False, False),
    ("GET", None, None, TOKEN, None, False, True, True),  # the printed URL: becomes the cookie
    ("GET", None, None, TOKEN[:-1], None, False, False, False),
    ("GET", None, TOKEN, None, None, False, True, False),  # the page, later
    ("POST", None, TOKEN, None, OWN, False, True, False),  # the page's own buttons
    ("POST", None, TOKEN, None, "http://evil.example", False, False, False),  # cross-site POST: refused
    ("POST", None, TOKEN, None, None, False, False, False),  # a POST without Origin, cookie only: refused
    ("GET", None, TOKEN, None, OWN, True, True, False),  # the console's websocket
    ("GET", None, TOKEN, None, "http://evil.example", True, False, False),  # cross-site websocket hijacking
    ("GET", None, "wrong", None, OWN, True, False, False),
])
def test_who_may_do_what(method: str, authorization: str | None, cookie: str | None, query: str | None,
                         origin: str | None, websocket: bool, allowed: bool, cookie_set: bool) -> None:
    decision = auth.decide(TOKEN, method=method, authorization=authorization, cookie=cookie, query_token=query,
                           origin=origin, own_origin=OWN, websocket=websocket)
    assert (decision.allowed, decision.set_cookie) == (allowed, cookie_set)


def test_loopback_addresses() -> None:
    assert all(auth.is_loopback(host) for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(auth.is_loopback(host) for host in ("0.0.0.0", "::", "192.168.1.2", "example.com"))


def test_the_token_file_is_made_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "token"
    first = auth.load_token(str(path))
    assert len(first) >= 32 and (path.stat().st_mode & 0o777) == 0o600
    assert auth.load_token(str(path)) == first
    assert auth.load_token(None) != auth.load_token(None)  # random per start without a file
    path.chmod(0o644)
    with pytest.raises(UsageError, match="can be read by other users"):
        auth.load_token(str(path))
    short = tmp_path / "short"
    short.write_text("abc\n")
    short.chmod(0o600)
    with pytest.raises(UsageError, match="no token of at least 16"):
        auth.load_token(str(short))


def test_vnc_response_is_des_with_reversed_key_bits() -> None:
    # DES with the key's bits mirrored: the response to a zero challenge for "password" (checked against the
    # plain DES of the same mirrored key, computed here through cryptography directly).
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    mirrored = bytes(int(f"{b:08b}"[::-1], 2) for b in b"password")
    plain = Cipher(TripleDES(mirrored * 3), modes.ECB()).encryptor().update(bytes(16))
    assert rfb.vnc_response("password", bytes(16)) == plain
    assert rfb.vnc_response("password-and-more", bytes(16)) == plain  # only 8 characters count


def test_the_browser_is_offered_no_authentication() -> None:
    """greet_browser speaks RFB 3.8 as a server offering only None; bytes past the handshake are kept for QEMU."""
    # The client's version, its choice and its ClientInit (shared), split across frames as they like.
    incoming = [b"RFB 003.0", b"08\n\x01\x01"]
    sent: list[bytes] = []

    async def receive() -> bytes | None:
        return incoming.pop(0) if incoming else None

    async def send(data: bytes) -> None:
        sent.append(data)

    async def run() -> bytes:
        client = rfb.Buffered(receive)
        await rfb.greet_browser(client, send)
        return client.rest()

    rest = asyncio.run(run())
    assert sent == [b"RFB 003.008\n", b"\x01\x01", b"\x00\x00\x00\x00"]
    assert rest == b"\x01"  # the ClientInit (shared) that came with the choice goes on to QEMU


def test_login_to_a_password_vnc_server() -> None:
    """login() against a scripted server: RFB 3.8, VNC auth with the DES response, SecurityResult OK."""
    challenge = bytes(range(16))

    async def run() -> bytes:
        got = bytearray()
        done = asyncio.Event()

        async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"RFB 003.008\n")
            got.extend(await reader.readexactly(12))
            writer.write(b"\x01\x02" + challenge)
            got.extend(await reader.readexactly(1 + 16))
            writer.write(b"\x00\x00\x00\x00")
            await writer.drain()
            done.set()

        listening = await asyncio.start_server(server, "127.0.0.1", 0)
        port = listening.sockets[0].getsockname()[1]
        reader, writer = await rfb.open_vnc({"listen": "0.0.0.0", "port": port})  # 0.0.0.0 is reached on loopback
        await rfb.login(reader, writer, "secret")
        await done.wait()
        writer.close()
        listening.close()
        return bytes(got)

    got = asyncio.run(run())
    assert got == b"RFB 003.008\n\x02" + rfb.vnc_response("secret", challenge)


ROWS = [
    {"name": "web1", "state": "running", "pid": 123, "uptime_s": 12.5, "restarts": 1, "cpu_seconds": 3.25,
     "rss_bytes": 300 << 20, "memory_bytes": 256 << 20, "vcpus": 2,
     "disks": [{"name": "x", "qdev": "/machine/peripheral/disk0-dev/virtio-backend", "rd_bytes": 10, "wr_bytes": 20,
                "rd_ops": 1, "wr_ops": 2}],
     "net": [{"id": "qv-web1-0", "mode": "tap", "rx_bytes": 100, "tx_bytes": 200},
             {"id": "net1", "mode": "user", "rx_bytes": None, "tx_bytes": None}]},
    {"name": "old", "state": "stopped", "pid": None, "uptime_s": None, "restarts": 0, "memory_bytes": 512 << 20,
     "vcpus": 1, "disks": [], "net": []},
]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metric_families_parse_back() -> None:
    body, content_type = metrics.exposition(ROWS)
    assert content_type.startswith("text/plain")
    got = _samples(body.decode())
    assert got[("qemuvm_instance_up", (("name", "web1"),))] == 1.0
    assert got[("qemuvm_instance_up", (("name", "old"),))] == 0.0
    assert got[("qemuvm_instance_state", (("name", "old"), ("state", "stopped")))] == 1.0
    assert got[("qemuvm_instance_state", (("name", "old"), ("state", "running")))] == 0.0
    assert got[("qemuvm_qemu_cpu_seconds_total", (("name", "web1"),))] == 3.25
    assert got[("qemuvm_instance_restarts_total", (("name", "web1"),))] == 1.0
    assert got[("qemuvm_disk_written_bytes_total", (("device", "disk0"), ("name", "web1")))] == 20.0
    assert got[("qemuvm_nic_receive_bytes_total", (("interface", "qv-web1-0"), ("name", "web1")))] == 100.0
    assert not [key for key in got if key[0].startswith("qemuvm_nic") and ("interface", "net1") in key[1]]
    assert got[("qemuvm_instances", (("state", "running"),))] == 1.0
    assert ("qemuvm_qemu_cpu_seconds_total", (("name", "old"),)) not in got  # no process, no series


def test_openmetrics_when_asked() -> None:
    body, content_type = metrics.exposition(ROWS, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().rstrip().endswith("# EOF")


def test_the_vendored_libraries_are_the_pinned_ones_with_their_licences() -> None:
    manifest = json.loads((VENDOR / "VENDOR.json").read_text())
    assert set(manifest["packages"]) == {"@novnc/novnc", "@xterm/xterm"}
    assert all(p["integrity"].startswith("sha512-") for p in manifest["packages"].values())
    on_disk = {p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*") if p.is_file()} - {"VENDOR.json"}
    assert on_disk == set(manifest["files"])
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    assert {"novnc/LICENSE.MPL-2.0", "xterm/LICENSE"} <= on_disk


def test_the_wheel_data_globs_take_every_served_file() -> None:
    """pyproject's package-data globs for qemuvm.web match every file under static/ (a wheel serves offline)."""
    import fnmatch
    import tomllib

    repo = VENDOR.parents[3]
    globs = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["qemuvm.web"]
    static = repo / "qemuvm" / "web"
    files = [p.relative_to(static).as_posix() for p in (static / "static").rglob("*") if p.is_file()]
    assert files and [f for f in files if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/")
                                                 for g in globs)] == []


def test_up_and_ls_import_nothing_of_the_web() -> None:
    probe = ("import json, sys\nfrom qemuvm import cli\ncli.load_commands(['up', 'x.yaml'])\nimport qemuvm.api\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('qemuvm.web', 'aiohttp', "
             "'prometheus_client')))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert json.loads(done.stdout) == []
