"""Another local user gets nothing (issue 11): not the sockets, not the keys, not the smoke evidence, not the
screen. The test creates that user (root only) and removes it again.
"""

from __future__ import annotations

import os
import pwd
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import guest_profile, kill_everything

from qemuvm import api

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="creating a second local user needs root")]

PROBE = r"""
import json, socket, sys
found = {}
for path in sys.argv[1:]:
    try:
        if path.endswith(".sock"):
            s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(path); s.close()
        else:
            open(path, "rb").read(1)
        found[path] = "open"
    except OSError as exc:
        found[path] = exc.__class__.__name__
print(json.dumps(found))
"""


@pytest.fixture
def other_user() -> Iterator[pwd.struct_passwd]:
    name = f"qvo{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


def as_user(user: pwd.struct_passwd, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False, cwd="/",
                          user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                          env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})


def test_another_user_gets_nothing(home: Path, test_guest: Any, short_tmp: Path,
                                   other_user: pwd.struct_passwd) -> None:
    import json

    os.chmod(home, 0o711)  # even where the state folder can be traversed, each instance is 0700, files 0600
    profile = guest_profile(home, test_guest, "mine", display={"vga": "std", "vnc": {}},
                            cloud_init={"user_data": {"password": "hunter2"}})
    status = api.up(profile)
    folder = home / "mine"
    evidence = short_tmp / "evidence"
    smoke = subprocess.run([sys.executable, "-m", "qemuvm", "smoke", str(profile), "--set",
                            "ready.serial=NEVER_PRINTED", "--timeout", "5", "--artifacts", str(evidence),
                            "--set", "name=mine-smoke"], capture_output=True, text=True, timeout=300, check=False)
    assert smoke.returncode == 1 and (evidence / "profile.yaml").exists(), smoke.stderr
    os.chmod(short_tmp, 0o711)
    targets = [str(folder / f) for f in ("qmp.sock", "supervisor.sock", "serial.sock", "id_ed25519",
                                         "profile.yaml", "serial.log", "vnc.password", "state.json")]
    targets.append(str(evidence / "profile.yaml"))
    probe = as_user(other_user, "/usr/bin/python3", "-c", PROBE, *targets)
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == dict.fromkeys(targets, "PermissionError")
    # The screen: the VNC port answers on loopback, but only with the instance's password.
    port = status["vnc"]["port"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        assert conn.recv(12).startswith(b"RFB 003.")
        conn.sendall(b"RFB 003.008\n")
        count = conn.recv(1)[0]
        assert 1 not in set(conn.recv(count))  # 1 = no authentication: not offered
    # qemuvm itself, run by that user against our folder: one sentence, no traceback. (Through the system
    # python3 with this environment's packages: our interpreter may live in root's home, out of its reach.)
    system = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(sys.version_info[:2])"],
                            capture_output=True, text=True, check=False).stdout.strip()
    if system == str(tuple(sys.version_info[:2])):
        packages = ":".join([str(Path(api.__file__).parents[2]), *(p for p in sys.path if "-packages" in p)])
        listed = subprocess.run(["/usr/bin/python3", "-m", "qemuvm", "status", "mine"], capture_output=True,
                                text=True, timeout=60, check=False, cwd="/", user=other_user.pw_uid,
                                group=other_user.pw_gid, extra_groups=[],
                                env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "QEMUVM_HOME": str(home),
                                     "PYTHONPATH": packages})
        assert listed.returncode != 0 and "Traceback" not in listed.stderr, listed.stderr
        assert listed.stderr.startswith("qemuvm: "), listed.stderr
    kill_everything(home)


def test_a_user_who_is_not_root_gets_9p_or_one_sentence(short_tmp: Path, other_user: pwd.struct_passwd) -> None:
    """Debian 12's virtiofsd runs as root only: for anyone else `type: auto` compiles to 9p, and `type: virtiofs`
    is one sentence naming the share and the way out (exit 2). Proven by that user's own `qemuvm render`."""
    system = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(sys.version_info[:2])"],
                            capture_output=True, text=True, check=False).stdout.strip()
    if system != str(tuple(sys.version_info[:2])):
        pytest.skip("the system python3 cannot load this environment's packages")
    os.chmod(short_tmp, 0o755)
    (short_tmp / "src").mkdir(mode=0o755)
    packages = ":".join([str(Path(api.__file__).parents[2]), *(p for p in sys.path if "-packages" in p)])
    results = {}
    for kind in ("auto", "virtiofs"):
        profile = short_tmp / f"{kind}.yaml"
        profile.write_text(f"shares: [{{source: {short_tmp / 'src'}, tag: src, type: {kind}}}]\n")
        profile.chmod(0o644)
        results[kind] = subprocess.run(
            ["/usr/bin/python3", "-m", "qemuvm", "render", str(profile)], capture_output=True, text=True,
            timeout=60, check=False, cwd="/", user=other_user.pw_uid, group=other_user.pw_gid, extra_groups=[],
            env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "PYTHONPATH": packages})
    auto, virtiofs = results["auto"], results["virtiofs"]
    assert auto.returncode == 0, auto.stderr
    assert "virtio-9p-pci" in auto.stdout and "vhost-user-fs" not in auto.stdout
    assert virtiofs.returncode == 2 and "Traceback" not in virtiofs.stderr
    assert "shares[0].type: virtiofs for tag src cannot run here: virtiofsd runs as root only" in virtiofs.stderr


def test_a_user_who_is_not_root_gets_one_sentence_for_nat_networks(short_tmp: Path,
                                                                    other_user: pwd.struct_passwd) -> None:
    """A NAT network's taps and bridge need root: that user's `up` of a VM on one, and `network create`, are one
    sentence each with the way out (exit 2), before anything is made."""
    system = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(sys.version_info[:2])"],
                            capture_output=True, text=True, check=False).stdout.strip()
    if system != str(tuple(sys.version_info[:2])):
        pytest.skip("the system python3 cannot load this environment's packages")
    os.chmod(short_tmp, 0o777)
    profile = short_tmp / "nat.yaml"
    profile.write_text("machine: {accel: tcg}\nnetwork: [{mode: bridge, network: default}]\n")
    profile.chmod(0o644)
    packages = ":".join([str(Path(api.__file__).parents[2]), *(p for p in sys.path if "-packages" in p)])
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/nonexistent", "PYTHONPATH": packages,
           "QEMUVM_HOME": str(short_tmp / "home"), "QEMUVM_NETWORKS": str(short_tmp / "networks")}

    def qemuvm(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/usr/bin/python3", "-m", "qemuvm", *args], capture_output=True, text=True,
                              timeout=60, check=False, cwd="/", user=other_user.pw_uid, group=other_user.pw_gid,
                              extra_groups=[], env=env)

    up = qemuvm("up", str(profile), "--name", "natvm")
    assert up.returncode == 2 and up.stderr.count("\n") == 1, up.stderr
    assert "network[0].network: joining network default needs a tap device, and creating one needs root" in up.stderr
    assert "allow qvbr-default" in up.stderr
    assert not (short_tmp / "home" / "natvm").exists()  # nothing half-created
    create = qemuvm("network", "create", "default")
    assert create.returncode == 2 and "qemuvm network create needs root" in create.stderr, create.stderr
    assert not (short_tmp / "networks").exists()
