"""`qemuvm autostart` (virsh autostart, issue 17): the generated systemd unit passes `systemd-analyze verify`
with nothing to say, it is enabled the way `systemctl enable` does it, `ls` shows it, its ExecStart and ExecStop
(run here as systemd would: words split by its quoting rules, its Environment= set) really start and stop the
VM, and `--disable` and `rm` remove it. The units go to a folder of the test's own (QEMUVM_SYSTEMD_DIR)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import cli, guest_profile, state_of

from qemuvm.control import autostart

pytestmark = pytest.mark.integration


def _directive(text: str, key: str) -> str:
    [value] = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]
    return value


def _run_like_systemd(line: str, environment: str) -> subprocess.CompletedProcess[str]:
    # Our lines quote every word in double quotes with \\ \" escaped and %% $$ doubled: shlex reads them the
    # same way once the doubled specifiers are undone.
    words = [word.replace("%%", "%").replace("$$", "$") for word in shlex.split(line)]
    key, _, value = shlex.split(environment)[0].partition("=")
    return subprocess.run(words, capture_output=True, text=True, timeout=300, check=False,
                          env={"PATH": "/usr/bin:/bin", key: value.replace("%%", "%").replace("$$", "$")})


def test_autostart_unit_verifies_and_its_commands_run(home: Path, test_guest: Any, short_tmp: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QEMUVM_SYSTEMD_DIR", str(short_tmp / "units"))
    assert cli("define", str(guest_profile(home, test_guest, "bootvm"))).returncode == 0
    enabled = cli("autostart", "bootvm", "--json")
    assert enabled.returncode == 0, enabled.stderr
    unit = Path(json.loads(enabled.stdout)["unit"])
    target = "multi-user.target" if os.geteuid() == 0 else "default.target"
    link = short_tmp / "units" / f"{target}.wants" / "qemuvm-bootvm.service"
    assert unit == short_tmp / "units" / "qemuvm-bootvm.service" and link.resolve() == unit
    text = unit.read_text()
    assert _directive(text, "WantedBy") == target
    if shutil.which("systemd-analyze"):
        verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                                  timeout=60, check=False)
        assert verified.returncode == 0 and verified.stderr.strip() == "", verified.stderr  # warnings too
    [row] = [r for r in json.loads(cli("ls", "--json").stdout) if r["name"] == "bootvm"]
    assert row["autostart"] is True

    started = _run_like_systemd(_directive(text, "ExecStart"), _directive(text, "Environment"))
    assert started.returncode == 0, started.stderr
    assert state_of("bootvm").state == "running"
    stopped = _run_like_systemd(_directive(text, "ExecStop"), _directive(text, "Environment"))
    assert stopped.returncode == 0, stopped.stderr
    assert state_of("bootvm").state == "stopped" and state_of("bootvm").last_exit.reason == "down"

    off = cli("autostart", "bootvm", "--disable")
    assert off.returncode == 0 and not unit.exists() and not link.is_symlink(), off.stderr
    assert [r["autostart"] for r in json.loads(cli("ls", "--json").stdout) if r["name"] == "bootvm"] == [False]
    assert cli("autostart", "bootvm").returncode == 0 and unit.exists()
    assert cli("rm", "bootvm").returncode == 0
    assert not unit.exists() and not link.is_symlink()  # undefine removes the unit too
    # A unit of the same name for another state folder is never overwritten, listed or removed by this one.
    assert cli("define", str(guest_profile(home, test_guest, "bootvm"))).returncode == 0
    foreign = autostart.unit_text("bootvm", "/usr/bin/python3", Path("/elsewhere"), 20, target)
    unit.write_text(foreign)
    link.symlink_to(unit)
    clash = cli("autostart", "bootvm")
    assert clash.returncode == 2 and "another state folder" in clash.stderr, clash.stderr
    assert [r["autostart"] for r in json.loads(cli("ls", "--json").stdout) if r["name"] == "bootvm"] == [False]
    assert cli("rm", "bootvm").returncode == 0
    assert unit.read_text() == foreign and link.is_symlink()
    missing = cli("autostart", "nosuchvm")
    assert missing.returncode == 2 and "no instance named nosuchvm" in missing.stderr


def test_unit_words_are_quoted_for_systemd() -> None:
    assert autostart.quote('/opt/my dir/py"th%n$') == '"/opt/my dir/py\\"th%%n$$"'
    text = autostart.unit_text("vm", "/usr/bin/python3", Path("/var/lib/q v"), 20, "multi-user.target")
    assert 'ExecStart="/usr/bin/python3" "-m" "qemuvm" "start" "vm"' in text
    assert 'ExecStop="/usr/bin/python3" "-m" "qemuvm" "down" "vm"' in text
    assert 'Environment="QEMUVM_HOME=/var/lib/q v"' in text and "TimeoutStopSec=80" in text


def test_a_dollar_in_the_state_folder_stays_one_dollar_in_environment() -> None:
    """systemd expands `$` on Exec= lines (so `$$` there) but not in Environment=, where `$$` would stay two."""
    text = autostart.unit_text("vm", "/opt/py$/python3", Path("/srv/q$home"), 20, "multi-user.target")
    assert 'Environment="QEMUVM_HOME=/srv/q$home"' in text and "$$home" not in text
    assert 'ExecStart="/opt/py$$/python3"' in text


@pytest.mark.parametrize("bad", ["\n", "\r", "\t", "\x7f"])
def test_a_control_character_never_reaches_a_unit_line(bad: str) -> None:
    """A newline in QEMUVM_HOME wrote an `ExecStartPre=` line into the unit (issue 30): refused, one sentence."""
    with pytest.raises(autostart.UsageError, match=r"control character .* systemd unit line cannot carry"):
        autostart.unit_text("vm", "/usr/bin/python3", Path(f"/srv/q{bad}ExecStartPre=/bin/sh -c id"), 20,
                            "multi-user.target")
    with pytest.raises(autostart.UsageError, match="Python interpreter path"):
        autostart.unit_text("vm", f"/opt/py{bad}/python3", Path("/srv/q"), 20, "multi-user.target")


def test_a_home_with_a_newline_gets_no_unit_and_rm_removes_an_old_one(short_tmp: Path, test_guest: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    tmp_path = short_tmp
    home = tmp_path / "q\nExecStartPre=id"
    units = tmp_path / "units"
    monkeypatch.setenv("QEMUVM_HOME", str(home))
    monkeypatch.setenv("QEMUVM_SYSTEMD_DIR", str(units))
    assert cli("define", str(guest_profile(tmp_path, test_guest, "nl"))).returncode == 0
    refused = cli("autostart", "nl")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "control character '\\n'" in refused.stderr and refused.stderr.count("\n") == 1
    assert not units.exists()  # nothing half-made
    # A unit an older qemuvm wrote for this home (its Environment= line split in two): --disable and rm find it.
    target = "multi-user.target" if os.geteuid() == 0 else "default.target"
    unit, link = units / "qemuvm-nl.service", units / f"{target}.wants" / "qemuvm-nl.service"
    link.parent.mkdir(parents=True)
    unit.write_text(f'[Service]\nEnvironment="QEMUVM_HOME={home}"\nExecStart=/bin/true\n')
    link.symlink_to(unit)
    assert cli("autostart", "nl", "--disable").returncode == 0 and not unit.exists() and not link.is_symlink()
    unit.write_text(f'[Service]\nEnvironment="QEMUVM_HOME={home}"\nExecStart=/bin/true\n')
    link.symlink_to(unit)
    removed = cli("rm", "nl")
    assert removed.returncode == 0, removed.stderr
    assert not unit.exists() and not link.is_symlink() and not (home / "nl").exists()
