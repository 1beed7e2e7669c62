"""The smoke runner's pure logic (check evaluation, isolation, naming, progress) and the ssh argv."""

from __future__ import annotations

import io
import re
import shlex
from pathlib import Path

import pytest

from qemuvm.control import ssh
from qemuvm.errors import UsageError
from qemuvm.profile.load import load_text
from qemuvm.profile.model import SmokeCheck
from qemuvm.profile.types import NAME_PATTERN
from qemuvm.profile.validate import validate
from qemuvm.runtime import ports
from qemuvm.workflow import smoke
from qemuvm.workflow.junit import Case


def _profile(text: str):
    return validate(load_text(text, "p.yaml"))


# -- check evaluation ----------------------------------------------------------------------------


def test_ssh_check_needs_exit_zero_and_a_match():
    check = SmokeCheck(name="kernel", ssh="uname -r", expect=r"^6\.")
    assert smoke.evaluate_ssh(check, 0, "6.1.0-56-cloud-amd64\n", "", 0.3).status == "passed"
    wrong = smoke.evaluate_ssh(check, 0, "5.10.0\n", "", 0.3)
    assert wrong.status == "failed" and "does not match" in wrong.message and "5.10.0" in wrong.output
    exit1 = smoke.evaluate_ssh(check, 1, "6.1.0\n", "oops\n", 0.3)
    assert exit1.status == "failed" and "status 1" in exit1.message and "oops" in exit1.output


def test_expect_anchors_at_line_starts():
    check = SmokeCheck(name="k", ssh="dmesg", expect=r"^ready$")
    assert smoke.evaluate_ssh(check, 0, "booting\nready\nmore\n", "", 0).ok
    assert not smoke.evaluate_ssh(check, 0, "not ready\n", "", 0).ok


def test_ssh_failures_say_which_kind():
    check = SmokeCheck(name="k", ssh="true")
    assert smoke.evaluate_ssh(check, 255, "", "Connection refused", 0).message.startswith("ssh failed")
    assert smoke.evaluate_ssh(check, 124, "", "", 0).message.startswith("timed out")
    assert smoke.evaluate_ssh(check, 0, "anything", "", 0).ok  # no expect: exit 0 is enough


def test_serial_check_waits_then_fails_with_the_tail():
    check = SmokeCheck(name="ready-marker", serial="QEMUVM_GUEST_READY")
    assert smoke.evaluate_serial(check, "booting\n", 1.0, finished=False) is None
    passed = smoke.evaluate_serial(check, "x\nQEMUVM_GUEST_READY kernel=6.1\n", 1.0, finished=False)
    assert passed.ok and passed.output == "QEMUVM_GUEST_READY"
    log = "\n".join(f"line {i}" for i in range(100))
    failed = smoke.evaluate_serial(check, log, 5.0, finished=True)
    assert failed.status == "failed" and "did not appear" in failed.message
    assert failed.output.splitlines()[-1] == "line 99" and len(failed.output.splitlines()) == smoke.TAIL_LINES


# -- isolation and naming ------------------------------------------------------------------------


def test_every_disk_is_isolated(tmp_path):
    base = tmp_path / "root.qcow2"
    base.write_bytes(b"")
    existing_sized = tmp_path / "data.raw"
    existing_sized.write_bytes(b"")
    profile = _profile(f"""
disks:
  - file: {base}
  - file: {tmp_path / "new.qcow2"}
    size: 1G
  - file: {existing_sized}
    size: 1G
  - file: {tmp_path / "cd.iso"}
    media: cdrom
    interface: sata
  - file: {base}
    ephemeral: true
""")
    scratch = tmp_path / "scratch"
    sets = smoke.isolation_overrides(profile, scratch)
    assert sets == [
        "disks.0.size=null", "disks.0.ephemeral=true",
        f"disks.1.file={scratch / 'disk1.qcow2'}", "disks.1.format=qcow2",
        "disks.2.size=null", "disks.2.ephemeral=true",
    ]


def test_overrides_apply_and_validate(tmp_path):
    base = tmp_path / "root.qcow2"
    base.write_bytes(b"")
    path = tmp_path / "p.yaml"
    path.write_text(f"disks:\n  - file: {base}\n    size: 1G\n")
    from qemuvm.profile.validate import load_and_validate

    profile = load_and_validate(str(path))
    isolated = load_and_validate(str(path), smoke.isolation_overrides(profile, tmp_path))
    assert isolated.disks[0].ephemeral and isolated.disks[0].size is None


def test_instance_names_are_unique_and_valid():
    names = {smoke.instance_name("ci-smoke") for _ in range(50)}
    assert len(names) == 50
    assert all(re.fullmatch(r"ci-smoke-smoke-[0-9a-f]{6}", n) for n in names)
    long = smoke.instance_name("a" * 63, "abcdef")
    assert len(long) <= 63 and re.fullmatch(NAME_PATTERN, long)


def test_steps_are_boot_ready_then_checks():
    profile = _profile("smoke:\n  checks:\n    - {name: a, ssh: 'true'}\n    - {name: b, serial: x}\n")
    assert smoke.step_names(profile) == ["boot", "ready", "a", "b"]


def test_result_ok_needs_every_case_passed():
    result = smoke.SmokeResult("i", "s", [Case("boot", "passed"), Case("ready", "passed")])
    assert result.ok and result.exit_code == 0
    result.cases.append(Case("x", "skipped"))
    assert not result.ok and result.exit_code == 1
    assert not smoke.SmokeResult("i", "s").ok  # nothing ran: not a pass
    assert result.to_json()["cases"][2] == {"name": "x", "status": "skipped", "seconds": 0.0, "message": ""}


def test_plain_progress_lines_are_timestamped():
    out = io.StringIO()
    progress = smoke.Progress(out, tty=False)
    with progress.step("boot: starting x"):
        pass
    progress.result(Case("boot", "passed", 2.14))
    progress.result(Case("kernel", "failed", 0.3, message="exit status 1"))
    lines = out.getvalue().splitlines()
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] boot: starting x", lines[0])
    assert lines[1].endswith("] boot: ok (2.1s)")
    assert lines[2].endswith("] kernel: FAILED (0.3s): exit status 1")


def test_invalid_profile_is_a_usage_error_before_anything_starts(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("smoke:\n  checks:\n    - {name: a}\n")  # neither ssh nor serial
    with pytest.raises(UsageError) as err:
        smoke.run(str(path), progress=smoke.Progress(quiet=True))
    assert err.value.exit_code == 2


# -- ssh argv ------------------------------------------------------------------------------------


def _target(tmp_path: Path) -> ssh.SshTarget:
    return ssh.SshTarget("vm", "127.0.0.1", 2222, "root", tmp_path / "id", tmp_path / "known_hosts")


def test_ssh_argv(tmp_path):
    argv = ssh.build_argv(_target(tmp_path), ["uname -r"])
    assert argv[0] == "ssh"
    assert argv[argv.index("-i") + 1] == str(tmp_path / "id")
    assert argv[argv.index("-p") + 1] == "2222"
    options = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    for expected in ("StrictHostKeyChecking=accept-new", f'UserKnownHostsFile="{tmp_path / "known_hosts"}"',
                     "BatchMode=yes", "ConnectTimeout=5", "LogLevel=ERROR"):
        assert expected in options
    assert "-T" in argv and "-t" not in argv
    assert argv[-3:] == ["root@127.0.0.1", "--", "uname -r"]


def test_ssh_argv_quotes_several_words_and_forces_a_tty_on_request(tmp_path):
    argv = ssh.build_argv(_target(tmp_path), ["sh", "-c", "exit 7"], tty=True)
    assert "-t" in argv and "-T" not in argv
    assert shlex.split(argv[-1]) == ["sh", "-c", "exit 7"]
    assert ssh.build_argv(_target(tmp_path))[-1] == "root@127.0.0.1"  # no command: a login shell


def test_host_port_from_forwards():
    forwards = [
        {"protocol": "udp", "host_port": 5000, "guest_port": 22},
        {"protocol": "tcp", "host_address": "0.0.0.0", "host_port": 40022, "guest_port": 22},
        {"protocol": "tcp", "host_address": "127.0.0.1", "host_port": 8080, "guest_port": 80},
    ]
    assert ports.forward_address(forwards, 22) == ("127.0.0.1", 40022)
    assert ports.forward_address(forwards, 80) == ("127.0.0.1", 8080)
    assert ports.forward_address([{"host": 2222, "guest": 22, "address": ""}], 22) == ("127.0.0.1", 2222)
    assert ports.forward_address(forwards, 443) is None


def test_a_key_others_can_read_is_refused_with_the_fix(tmp_path):
    key = tmp_path / "id"
    key.write_text("k")
    key.chmod(0o644)
    with pytest.raises(UsageError, match="chmod 600"):
        ssh.check_key(key)
    key.chmod(0o600)
    ssh.check_key(key)
    with pytest.raises(UsageError, match="does not exist"):
        ssh.check_key(tmp_path / "missing")


# -- pytest plugin overrides ---------------------------------------------------------------------


def test_plugin_overrides_become_typed_sets(tmp_path):
    from qemuvm.profile.load import load_profile
    from qemuvm.testing import overrides_to_sets

    sets = overrides_to_sets({"machine.memory": "256M", "machine__cpus": 2, "qemu.extra_args": ["-no-reboot"],
                              "ready": None}, ["name=x"])
    assert sets == ['name=x', 'machine.memory="256M"', "machine.cpus=2", 'qemu.extra_args=["-no-reboot"]',
                    "ready=null"]
    path = tmp_path / "p.yaml"
    path.write_text("machine: {memory: 1G}\nready: {serial: x}\n")
    data = load_profile(path, sets).data
    assert data["machine"] == {"memory": "256M", "cpus": 2} and data["qemu"]["extra_args"] == ["-no-reboot"]
    assert data["ready"] is None and data["name"] == "x"


def test_redact_blanks_secret_values_only() -> None:
    from qemuvm.workflow.smoke import redact

    text = ("cloud_init:\n  user_data:\n    password: hunter2\n    chpasswd: {expire: false}\n"
            "    users:\n      - name: bob\n        hashed_passwd: $6$abc\n        api_key: xyz\n"
            "    hostname: web\n    ssh_pwauth: true\n")
    out = redact(text)
    assert "hunter2" not in out and "$6$abc" not in out and "xyz" not in out
    assert "password: <redacted>" in out and "hashed_passwd: <redacted>" in out
    assert "hostname: web" in out and "ssh_pwauth: true" in out and "name: bob" in out


def test_forward_address_reaches_wildcards_through_loopback() -> None:
    assert ports.forward_address([{"host_port": 1, "guest_port": 22, "host_address": "::"}], 22) == ("::1", 1)
    assert ports.forward_address([{"host_port": 1, "guest_port": 22, "host_address": "0.0.0.0"}], 22) \
        == ("127.0.0.1", 1)
    assert ports.forward_address([{"host_port": 1, "guest_port": 22, "protocol": "udp"}], 22) is None


@pytest.mark.parametrize(("fields", "kind"), [
    ({"ssh": "true"}, "ssh"), ({"agent": "true"}, "agent"), ({"serial": "READY"}, "serial"),
    ({"send": "echo hi\\n"}, "send"), ({"keys": ["ctrl-b"]}, "keys"),
    ({"serial": "x", "timeout": "3s"}, "serial"), ({"ssh": "true", "expect": "ok"}, "ssh"),
])
def test_each_step_kind_has_its_runner(fields: dict, kind: str) -> None:
    check = SmokeCheck.model_validate({"name": "c", **fields})
    assert smoke.check_kind(check) == kind
    assert callable(getattr(smoke._Runner, smoke.STEP_KINDS[kind]))
