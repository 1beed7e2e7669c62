"""VNC: the password from `display.vnc.password_file` is applied over QMP, checked with a real RFB handshake."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from rawqemu import RawQemu

from qemuvm.control.display import apply_vnc_password
from qemuvm.errors import UsageError

pytestmark = pytest.mark.integration


def _recv(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"server closed the connection after {len(data)} of {size} bytes")
        data += chunk
    return data


def _vnc_des(password: str, challenge: bytes) -> bytes:
    """VNC authentication: DES-ECB of the challenge, keyed by the password (8 bytes, NUL padded) with the
    bits of every key byte reversed (RFB 3.8, section 7.2.2 and every implementation since)."""
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode()[:8].ljust(8, b"\0"))
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # 3DES with one key is DES
    return encryptor.update(challenge) + encryptor.finalize()


def rfb_handshake(port: int, password: str | None) -> tuple[int, int, str]:
    """ProtocolVersion, security, VNC auth, ClientInit; the ServerInit's (width, height, name).

    Raises PermissionError with the server's reason when authentication fails."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        version = _recv(sock, 12)
        assert version.startswith(b"RFB 003."), version
        sock.sendall(b"RFB 003.008\n")
        (count,) = struct.unpack("B", _recv(sock, 1))
        if count == 0:
            (length,) = struct.unpack(">I", _recv(sock, 4))
            raise PermissionError(_recv(sock, length).decode())
        types = set(_recv(sock, count))
        if password is None:
            assert 1 in types, f"server wants authentication: security types {types}"
            sock.sendall(b"\x01")
        else:
            assert 2 in types, f"server offers no VNC authentication: security types {types}"
            sock.sendall(b"\x02")
            sock.sendall(_vnc_des(password, _recv(sock, 16)))
        (result,) = struct.unpack(">I", _recv(sock, 4))
        if result != 0:
            (length,) = struct.unpack(">I", _recv(sock, 4))
            raise PermissionError(_recv(sock, length).decode())
        sock.sendall(b"\x01")  # ClientInit: shared
        width, height = struct.unpack(">HH", _recv(sock, 4))
        _recv(sock, 16)  # pixel format
        (length,) = struct.unpack(">I", _recv(sock, 4))
        return width, height, _recv(sock, length).decode()


def _vnc_port(vm: RawQemu) -> int:
    return int(vm.qmp("query-vnc")["service"])


@pytest.fixture
def vnc_vm():
    # `to=` lets QEMU take the first free display from :0 on, as `port: auto` does.
    with RawQemu(["-name", "vncvm", "-device", "VGA", "-vnc", "127.0.0.1:0,to=99,password=on"], paused=True) as vm:
        yield vm


def test_password_applied_over_qmp(vnc_vm: RawQemu, short_tmp: Path) -> None:
    port = _vnc_port(vnc_vm)
    # password=on without a password set: QEMU refuses everyone.
    with pytest.raises(PermissionError):
        rfb_handshake(port, "whatever")
    secret = short_tmp / "vnc.pass"
    secret.write_text("s3cretpw-and-more\n")  # only the first 8 characters count
    secret.chmod(0o600)
    apply_vnc_password(vnc_vm.qmp_sock, secret)
    with pytest.raises(PermissionError):
        rfb_handshake(port, "wrongpwd")
    width, height, name = rfb_handshake(port, "s3cretpw")
    assert name == "QEMU (vncvm)"  # the desktop name QEMU derives from -name
    assert (width, height) in ((640, 480), (720, 400), (800, 600), (1024, 768))
    # The same 8 characters with a different tail authenticate too (DES keys are 8 bytes).
    assert rfb_handshake(port, "s3cretpw-other")[2] == "QEMU (vncvm)"


def test_without_password_the_loopback_server_is_open() -> None:
    with RawQemu(["-name", "open", "-device", "VGA", "-vnc", "127.0.0.1:0,to=99"], paused=True) as vm:
        assert rfb_handshake(_vnc_port(vm), None)[2] == "QEMU (open)"


def test_password_file_errors(vnc_vm: RawQemu, short_tmp: Path) -> None:
    with pytest.raises(UsageError, match=r"password_file: .*missing does not exist"):
        apply_vnc_password(vnc_vm.qmp_sock, short_tmp / "missing")
    with pytest.raises(UsageError, match="is not a regular file"):  # /dev/zero would never end
        apply_vnc_password(vnc_vm.qmp_sock, "/dev/zero")
    empty = short_tmp / "empty"
    empty.write_text("\n")
    with pytest.raises(UsageError, match="is empty"):
        apply_vnc_password(vnc_vm.qmp_sock, empty)


def test_up_applies_the_password_and_status_shows_the_address(qemuvm_home: Path, short_tmp: Path) -> None:
    """The whole path: profile -> qemuvm up (port auto) -> the supervisor sets the password before `cont`."""
    from qemuvm import api

    secret = short_tmp / "vnc.pass"
    secret.write_text("letmein!\n")
    profile = short_tmp / "vnc.yaml"
    profile.write_text("machine: {accel: tcg, memory: 64M}\nnetwork: []\n"
                       f"display: {{vnc: {{port: auto, password_file: {secret}}}}}\n")
    try:
        status = api.up(profile, wait=False)
        vnc = status["vnc"]
        assert vnc["listen"] == "127.0.0.1" and 5900 <= vnc["port"] < 6000
        with pytest.raises(PermissionError):
            rfb_handshake(vnc["port"], "wrong")
        assert rfb_handshake(vnc["port"], "letmein!")[2] == "QEMU (vnc)"
    finally:
        api.down("vnc", force=True)


def test_default_vnc_gets_a_password_of_its_own(qemuvm_home: Path, short_tmp: Path) -> None:
    """No password_file: another local user must not watch or type, so qemuvm makes a per-instance password
    (0600), applies it, and `status` shows it; `password: none` is the explicit open choice."""
    from qemuvm import api

    profile = short_tmp / "auto.yaml"
    profile.write_text("machine: {accel: tcg, memory: 64M}\nnetwork: []\ndisplay: {vnc: {}}\n")
    try:
        port = api.up(profile, wait=False)["vnc"]["port"]
        password = api.status("auto")["vnc"]["password"]
        assert len(password) == 8 and (qemuvm_home / "auto" / "vnc.password").stat().st_mode & 0o777 == 0o600
        with pytest.raises(AssertionError, match="server wants authentication"):
            rfb_handshake(port, None)
        assert rfb_handshake(port, password)[2] == "QEMU (auto)"
        api.down("auto", force=True)
        assert api.up("auto", wait=False)["vnc"]["port"] and api.status("auto")["vnc"]["password"] == password
    finally:
        api.down("auto", force=True)
    open_profile = short_tmp / "open.yaml"
    open_profile.write_text("machine: {accel: tcg, memory: 64M}\nnetwork: []\ndisplay: {vnc: {password: none}}\n")
    try:
        assert rfb_handshake(api.up(open_profile, wait=False)["vnc"]["port"], None)[2] == "QEMU (open)"
    finally:
        api.down("open", force=True)


def test_up_refuses_an_unreadable_password_file(qemuvm_home: Path, short_tmp: Path) -> None:
    from qemuvm import api

    profile = short_tmp / "novnc.yaml"
    profile.write_text(f"machine: {{accel: tcg}}\nnetwork: []\ndisplay: {{vnc: {{password_file: {short_tmp}/nope}}}}\n")
    with pytest.raises(UsageError, match=r"password_file: .*nope does not exist"):
        api.up(profile, wait=False)
    assert not (qemuvm_home / "novnc").exists()
