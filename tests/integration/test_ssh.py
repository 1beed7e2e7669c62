"""`qemuvm ssh` and the `ssh` wait condition against the busybox test guest (dropbear)."""

from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest
from helpers import CI_SMOKE, cli, guest_overrides, poll, state_at

from qemuvm.control import ssh
from qemuvm.testing import VM, vm

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def guest(test_guest) -> Iterator[VM]:
    """One VM for the read-only tests of this module, in a private short QEMUVM_HOME."""
    home = tempfile.mkdtemp(prefix="qv", dir="/tmp")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QEMUVM_HOME", home)
        with vm(CI_SMOKE, **guest_overrides(test_guest)) as running:
            yield running
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def own_guest(test_guest, qemuvm_home) -> Iterator[VM]:
    """A VM of the test's own, for tests that change its state (reboot, pause): the module's shared `guest`
    stays untouched, so no test depends on another's order."""
    with vm(CI_SMOKE, **guest_overrides(test_guest)) as running:
        yield running


def test_remote_exit_codes_propagate(guest):
    assert cli("ssh", guest.name, "--", "sh", "-c", "exit 7").returncode == 7
    assert cli("ssh", guest.name, "--", "false").returncode == 1
    done = cli("ssh", guest.name, "--", "cat", "/mnt/data/marker.txt")
    assert (done.returncode, done.stdout) == (0, "QEMUVM_DATA_MARKER\n")


def test_words_are_quoted_and_one_word_is_a_shell_line(guest):
    assert cli("ssh", guest.name, "--", "printf", "%s|", "a b", "c").stdout == "a b|c|"
    assert cli("ssh", guest.name, "--", "echo $((6 * 7)) | tr 4 X").stdout == "X2\n"
    assert cli("ssh", guest.name, "uname", "-s").stdout == "Linux\n"  # `--` is optional


def test_stdin_passes_through_without_a_tty(guest):
    done = cli("ssh", guest.name, "--", "cat", input="hello\nworld\n")
    assert done.stdout == "hello\nworld\n"
    no_tty = cli("ssh", guest.name, "--", "tty")
    assert (no_tty.returncode, no_tty.stdout.strip()) == (1, "not a tty")


def test_a_terminal_gets_a_remote_tty(guest):
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "qemuvm", "ssh", guest.name, "--", "tty"],
                            stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True)
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            output += chunk
        elif proc.poll() is not None:
            break
    os.close(controller)
    assert proc.wait(timeout=10) == 0
    assert b"/dev/pts/" in output


def test_host_keys_go_to_the_instance_known_hosts(guest):
    guest.ssh("true", check=True)
    port = ssh.resolve(guest.name).port
    found = subprocess.run(["ssh-keygen", "-F", f"[127.0.0.1]:{port}", "-f", str(guest.paths.known_hosts)],
                           capture_output=True, text=True, check=False)
    assert found.returncode == 0 and "ssh-ed25519" in found.stdout  # (hashed entries: ssh-keygen finds them)


def test_a_reboot_with_new_host_keys_still_connects(own_guest):
    """The test guest makes new dropbear keys at every boot; the known_hosts of the old boot is dropped."""
    own_guest.ssh("true", check=True)
    old = own_guest.paths.known_hosts.read_text()
    own_guest.qmp("system_reset")
    own_guest.wait(serial="QEMUVM_GUEST_READY", timeout=300)
    done = own_guest.ssh("cat /mnt/data/marker.txt")
    assert done.returncode == 0, done.stderr
    assert own_guest.paths.known_hosts.read_text() != old


def test_vm_ssh_returns_a_completed_process(guest):
    done = guest.ssh(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    with pytest.raises(subprocess.CalledProcessError):
        guest.ssh("exit 4", check=True)
    assert guest.ssh("sleep 30", timeout=2).returncode == 124


def test_wait_for_ssh_then_fail_fast_when_qemu_dies(test_guest, qemuvm_home):
    # ready: null -> `up` returns as soon as QEMU runs; the ssh condition does the waiting.
    with vm(CI_SMOKE, wait=False, ready=None, **guest_overrides(test_guest)) as cold:
        assert not ssh.ssh_ready(cold.name)
        waited = cli("wait", cold.name, "--ssh", "--timeout", "300", timeout=320)
        assert waited.returncode == 0, waited.stderr
        assert ssh.ssh_ready(cold.name)

        os.kill(cold.status()["qemu_pid"], signal.SIGKILL)
        started = time.monotonic()
        failed = cli("wait", cold.name, "--serial", "NEVER_PRINTED", "--timeout", "240", timeout=260)
        assert failed.returncode == 1 and "timed out" not in failed.stderr
        # Fail-fast, bounded against the configured timeout (not a speed figure): QEMU's death ends the wait.
        assert time.monotonic() - started < 240 / 4, "wait noticed QEMU's death, not the timeout"
        assert "QEMUVM_GUEST_READY" in failed.stderr  # the last serial lines
        assert not ssh.ssh_ready(cold.name)
        stopped = cli("ssh", cold.name, "--", "true")
        assert stopped.returncode == 1 and "not running" in stopped.stderr


def test_ssh_to_an_unknown_instance_is_a_usage_error(qemuvm_home):
    done = cli("ssh", "no-such-vm", "--", "true")
    assert done.returncode == 2 and "no instance named no-such-vm" in done.stderr


def test_a_paused_instance_says_so(own_guest):

    own_guest.qmp("stop")
    try:
        poll("state.json to say paused (the supervisor saw STOP)",
             lambda: state_at(own_guest.paths).state == "paused", 30)
        done = cli("ssh", own_guest.name, "--", "true")
        assert done.returncode == 1 and f"qemuvm resume {own_guest.name}" in done.stderr
        assert not ssh.ssh_ready(own_guest.name)
    finally:
        own_guest.qmp("cont")
    poll("state.json to say running again (the supervisor saw RESUME)",
         lambda: state_at(own_guest.paths).state == "running", 30)
    assert own_guest.ssh("true").returncode == 0
