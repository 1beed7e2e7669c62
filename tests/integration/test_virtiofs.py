"""virtiofsd as a supervised helper, on a running VM: `type: auto` said once at up, the helper recorded and its
socket private, a helper killed under a running guest named by `status` (which share, how) while `down` still
works, adoption after a supervisor crash covering the helper, and the faults around its start (virtiofsd cannot
start; the supervisor killed between virtiofsd and QEMU): one message, nothing left running."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
from pathlib import Path
from typing import Any

import pytest
from helpers import alive, cli, guest_profile, helper_pids, poll, up_with_supervisor_stopped_at

from qemuvm import api
from qemuvm.control import ssh as ssh_
from qemuvm.paths import InstancePaths

pytestmark = pytest.mark.integration


def _profile(home: Path, guest: Any, name: str, source: Path, **share: Any) -> Path:
    source.mkdir(exist_ok=True)
    (source / "hello.txt").write_text("hello")
    return guest_profile(home, guest, name, ssh={"identity": str(guest.key)}, network=[{"mode": "user"}],
                         shares=[{"source": str(source), "tag": "src", "mount": "/mnt/src", **share}],
                         shutdown={"timeout": "5s"})


def _helper(name: str) -> dict[str, Any]:
    helpers = api.status(name)["helpers"]
    assert len(helpers) == 1, helpers
    return helpers[0]


def test_a_helper_killed_under_a_running_guest_is_named_by_status(home: Path, test_guest: Any) -> None:
    profile = _profile(home, test_guest, "vfkill", home / "src")
    done = cli("up", str(profile))
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("shares[0] (tag src): type auto is virtiofs") == 1, done.stderr
    helper = _helper("vfkill")
    assert helper["running"] and helper["what"] == "shares[0] (tag src)" and alive(helper["pid"])
    socket = InstancePaths.for_name("vfkill").root / "virtiofs0.sock"
    assert stat.S_IMODE(socket.stat().st_mode) == 0o600
    assert ssh_.run("vfkill", "cat /mnt/src/hello.txt", timeout=60).stdout == "hello"

    os.kill(helper["pid"], signal.SIGKILL)
    poll("virtiofsd to die", lambda: not alive(helper["pid"]), 10)
    # status never lags: the share is named as gone at once, and (once the supervisor saw it) how it ended.
    gone = _helper("vfkill")
    assert not gone["running"] and "shares[0] (tag src) is gone" in gone["gone"]
    poll("the supervisor to record the end", lambda: (_helper("vfkill").get("exited") or {}).get("signal"), 10)
    shown = cli("status", "vfkill")
    assert "shares[0] (tag src) is gone: its virtiofsd was killed by SIGKILL" in shown.stdout, shown.stdout
    assert api.status("vfkill")["state"] == "running"  # the VM itself runs on

    stopped = api.down("vfkill")  # the guest's power-off may hang on the dead share: forced after 5 s
    assert stopped["state"] == "stopped"
    assert helper_pids(home, "virtiofsd") == []


def test_adoption_after_a_supervisor_crash_covers_the_helper(home: Path, test_guest: Any) -> None:
    profile = _profile(home, test_guest, "vfadopt", home / "src", readonly=True)
    first = api.up(str(profile))
    helper = _helper("vfadopt")
    os.kill(first["supervisor_pid"], signal.SIGKILL)
    poll("the supervisor to die", lambda: not alive(first["supervisor_pid"]), 10)

    adopted = api.supervise("vfadopt")
    assert adopted["supervisor_pid"] not in (None, first["supervisor_pid"])
    again = _helper("vfadopt")
    assert again["pid"] == helper["pid"] and again["running"]  # the same virtiofsd, proven and watched again
    log = (InstancePaths.for_name("vfadopt").root / "supervisor.log").read_text()
    assert f"adopting virtiofs0 pid {helper['pid']}" in log
    assert ssh_.run("vfadopt", "cat /mnt/src/hello.txt", timeout=60).stdout == "hello"

    # The new supervisor watches it: an end is recorded by it, not only seen by status.
    os.kill(helper["pid"], signal.SIGKILL)
    state_file = InstancePaths.for_name("vfadopt").state
    poll("the adopting supervisor to record the end",
         lambda: (json.loads(state_file.read_text())["helpers"][0].get("exited") or {}).get("at"), 10)
    assert api.down("vfadopt", force=True)["state"] == "stopped"
    assert helper_pids(home, "virtiofsd") == []


def test_a_virtiofsd_that_cannot_start_fails_up_with_its_words(home: Path, test_guest: Any) -> None:
    source = home / "src"
    profile = _profile(home, test_guest, "vfnostart", source)
    # up checks the source; it vanishes after that, before the supervisor starts virtiofsd.
    up, supervisor = up_with_supervisor_stopped_at(home, profile, "before-qemu")
    shutil.rmtree(source)
    os.kill(supervisor, signal.SIGCONT)
    _out, err = up.communicate(timeout=120)
    assert up.returncode == 1 and "Traceback" not in err
    assert "vfnostart failed to start: virtiofsd for shares[0] (tag src) exited with code 1" in err, err
    assert "failed to stat source" in err and "nothing is left running" in err
    poll("the supervisor to exit", lambda: not alive(supervisor), 10)
    assert helper_pids(home, "virtiofsd") == []
    assert not (home / "vfnostart").exists()  # a first start that failed leaves nothing


def test_a_supervisor_killed_between_helper_and_qemu_leaves_nothing(home: Path, test_guest: Any) -> None:
    profile = _profile(home, test_guest, "vforphan", home / "src")
    up, supervisor = up_with_supervisor_stopped_at(home, profile, "after-helpers")
    assert len(helper_pids(home, "virtiofsd")) == 1  # virtiofsd runs, waiting for a QEMU that never comes
    os.kill(supervisor, signal.SIGKILL)
    _out, err = up.communicate(timeout=120)
    assert up.returncode == 1 and "Traceback" not in err and "supervisor" in err
    assert helper_pids(home, "virtiofsd") == []  # up ended the orphan: proven ours by pid, start time and command line
    assert api.up(str(profile))["state"] == "running"  # and a clean start afterwards
    assert api.down("vforphan", force=True)["state"] == "stopped"
    assert helper_pids(home, "virtiofsd") == []
