"""Shares as pure decisions (which file system, the guest's mount options, the seed's `mounts`), the helper
records, and runtime/helpers.py on small stand-in programs (real processes, no VM)."""

from __future__ import annotations

import socket as socket_
import stat
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from qemuvm.control.status import helper_views
from qemuvm.errors import UsageError
from qemuvm.paths import InstancePaths
from qemuvm.profile.model import CloudInit, Profile
from qemuvm.qemu import shares
from qemuvm.qemu.facts import HostFacts
from qemuvm.runtime import cloudinit, helpers, records

HOST = HostFacts()
PATHS = InstancePaths(Path("/run/qemuvm-test/vm"))


def _profile(*items: dict) -> Profile:
    return Profile(name="vm", shares=list(items))


@pytest.mark.parametrize(("host", "asked", "chosen"), [
    (HOST, "auto", "virtiofs"),
    (replace(HOST, root=False), "auto", "9p"),
    (replace(HOST, virtiofsd=None), "auto", "9p"),
    (replace(HOST, root=False), "9p", "9p"),
    (HOST, "9p", "9p"),
    (HOST, "virtiofs", "virtiofs"),
])
def test_the_file_system_of_a_share(host: HostFacts, asked: str, chosen: str) -> None:
    share = _profile({"source": "/s", "tag": "t", "type": asked}).shares[0]
    assert shares.kind(share, host) == chosen


def test_auto_is_resolved_once_and_said() -> None:
    profile = _profile({"source": "/a", "tag": "a"}, {"source": "/b", "tag": "b", "type": "9p"})
    resolved, notes = shares.resolved(profile, replace(HOST, root=False))
    assert [s.type for s in resolved.shares] == ["9p", "9p"]
    assert notes == ["shares[0] (tag a): type auto is 9p (virtiofsd runs as root only (Debian 12's virtiofsd))"]
    again, more = shares.resolved(resolved, HOST)  # a later start reads the concrete type: nothing to say
    assert again == resolved and more == []


@pytest.mark.parametrize(("host", "expected"), [
    (replace(HOST, root=False), "virtiofsd runs as root only"),
    (replace(HOST, virtiofsd=None), "apt-get install qemu-system-common"),
])
def test_virtiofs_where_it_cannot_run_is_one_sentence(host: HostFacts, expected: str) -> None:
    with pytest.raises(UsageError) as caught:
        shares.check(_profile({"source": "/s", "tag": "src", "type": "virtiofs"}), host)
    message = str(caught.value)
    assert message.startswith("shares[0].type: virtiofs for tag src cannot run here")
    assert expected in message and "use type: 9p" in message


def test_mount_options_and_kernel_params() -> None:
    profile = _profile({"source": "/a", "tag": "a", "type": "9p", "mount": "/mnt/a", "cache": "always"},
                       {"source": "/b", "tag": "b", "type": "virtiofs", "mount": "/b", "readonly": True},
                       {"source": "/c", "tag": "c"})  # no mount: nothing for the guest to do
    assert shares.kernel_params(profile, HOST) == [
        "qemuvm.share=9p:a:/mnt/a:trans=virtio,version=9p2000.L,cache=loose", "qemuvm.share=virtiofs:b:/b:ro"]
    assert shares.cloud_init_mounts(profile, HOST) == [
        ["a", "/mnt/a", "9p", "trans=virtio,version=9p2000.L,cache=loose,nofail", "0", "0"],
        ["b", "/b", "virtiofs", "ro,nofail", "0", "0"]]


def test_a_virtiofs_share_has_a_helper_with_its_own_socket_and_log() -> None:
    profile = _profile({"source": "/a", "tag": "a", "type": "9p"},
                       {"source": "/b", "tag": "b", "type": "virtiofs", "readonly": True, "cache": "none"})
    [helper] = shares.helpers(profile, PATHS, HOST)
    assert helper == {"name": "virtiofs1", "what": "shares[1] (tag b)", "socket": "/run/qemuvm-test/vm/virtiofs1.sock",
                      "log": "/run/qemuvm-test/vm/virtiofs1.log", "readonly_source": "/b",
                      "argv": ["/usr/lib/qemu/virtiofsd", "--socket-path=/run/qemuvm-test/vm/virtiofs1.sock",
                               "-o", "source=/b", "-o", "cache=none", "-o", "sandbox=namespace"]}
    # The socket is no longer than the instance folder's longest, so the path-length check covers it.
    assert len(Path(helper["socket"]).name) <= len(PATHS.supervisor_socket.name)


def test_the_seed_carries_the_mounts_after_the_users_own() -> None:
    mounts = [["src", "/src", "virtiofs", "nofail", "0", "0"], ["x", "/mine", "9p", "nofail", "0", "0"]]
    own = CloudInit(user_data={"mounts": [["/dev/vdb", "/mine"]], "hostname": "h"})
    data = yaml.safe_load(cloudinit.user_data(own, "ssh-ed25519 KEY", "root", mounts))
    assert data["mounts"] == [["/dev/vdb", "/mine"], mounts[0]]  # the user's /mine wins
    assert data["hostname"] == "h" and data["ssh_authorized_keys"] == ["ssh-ed25519 KEY"]


def test_a_script_user_data_gets_the_mounts_in_a_part_of_their_own(tmp_path: Path) -> None:
    script = tmp_path / "ud.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    text = cloudinit.user_data(CloudInit(user_data=str(script)), None, "root",
                               [["src", "/src", "virtiofs", "nofail", "0", "0"]])
    assert "echo hi" in text and "mounts:" in text and "multipart" in text.lower()


def test_launch_specs_carry_their_helpers(tmp_path: Path) -> None:
    paths = InstancePaths(tmp_path)
    helper = records.Helper(name="virtiofs0", what="shares[0] (tag a)", argv=["/x"], socket="/s", log="/l")
    records.write_launch_spec(paths, records.LaunchSpec(name="vm", argv=["qemu"], helpers=[helper]))
    spec = records.read_launch_spec(paths)
    assert spec is not None and spec.helpers == [helper]


# -- runtime/helpers.py on stand-ins ---------------------------------------------------------------

LISTENER = ("import socket, sys, time\ns = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen()\n"
            "time.sleep(60)\n")


def _helper(tmp_path: Path, argv: list[str]) -> records.Helper:
    return records.Helper(name="virtiofs0", what="shares[0] (tag t)", argv=argv, socket=str(tmp_path / "h.sock"),
                          log=str(tmp_path / "h.log"))


def test_a_helper_is_up_once_it_listens_and_is_stopped_proven(tmp_path: Path) -> None:
    helper = _helper(tmp_path, [sys.executable, "-c", LISTENER, str(tmp_path / "h.sock")])
    started = helpers.start(helper)
    entry = started
    assert helpers.proven(entry) is not None
    assert stat.S_IMODE((tmp_path / "h.sock").stat().st_mode) == 0o600
    with socket_.socket(socket_.AF_UNIX) as client:
        client.connect(str(tmp_path / "h.sock"))
    assert helpers.proven(replace(entry, cmdline=["something", "else"])) is None  # a reused pid
    [stopped] = helpers.stop([entry], grace=2)
    assert stopped.exited is not None and stopped.exited["why"] == "stopped after QEMU"
    assert helpers.proven(entry) is None


def test_a_helper_that_fails_says_how_and_why(tmp_path: Path) -> None:
    helper = _helper(tmp_path, ["/bin/sh", "-c", "echo 'failed to stat source' >&2; exit 3"])
    with pytest.raises(helpers.HelperFailed) as caught:
        helpers.start(helper)
    assert str(caught.value) == (f"sh for shares[0] (tag t) exited with code 3: failed to stat source (its log: "
                                 f"{tmp_path / 'h.log'})")


def test_a_helper_that_never_listens_is_stopped(tmp_path: Path) -> None:
    helper = _helper(tmp_path, ["/bin/sleep", "60"])
    with pytest.raises(helpers.HelperFailed, match=r"did not listen within 0\.3 s"):
        helpers.start(helper, timeout=0.3)
    assert helpers._CHILDREN == {}  # stopped and reaped


def test_status_names_a_share_whose_helper_is_gone() -> None:
    entry = {"name": "virtiofs0", "what": "shares[0] (tag src)", "pid": 1 << 30, "start_time": 1.0,
             "cmdline": ["/usr/lib/qemu/virtiofsd"], "log": "/x/virtiofs0.log",
             "exited": {"at": 2.0, "signal": "SIGKILL"}}
    [view] = helper_views(records.state_view({"state": "running", "helpers": [entry]}))
    assert not view["running"]
    assert view["gone"].startswith("shares[0] (tag src) is gone: its virtiofsd was killed by SIGKILL;")
    assert "gone" not in helper_views(records.state_view({"state": "stopped", "helpers": [entry]}))[0]  # no news


def test_a_linked_source_is_resolved_once_for_both_kinds(tmp_path: Path) -> None:
    """9p followed a link in `source` (QEMU's -fsdev path=) where virtiofs refused it: both now get the real folder,
    resolved at `up` (issue 30); a link to outside its own folder needs follow_link, as a link to /etc would hand
    the guest the host's /etc."""
    from qemuvm.qemu.compile import compile_argv
    from qemuvm.runtime import preflight

    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "inside").symlink_to(real)
    (tmp_path / "outside").symlink_to("/etc")
    resolved = preflight.resolve_shares(_profile({"source": str(tmp_path / "inside"), "tag": "a"},
                                                 {"source": str(tmp_path / "inside"), "tag": "b", "type": "9p"}))
    assert [share.source for share in resolved.shares] == [str(real), str(real)]
    [virtiofsd] = shares.helpers(resolved, PATHS, HOST)
    assert f"source={real}" in virtiofsd["argv"]
    argv = compile_argv(resolved, PATHS, HOST)
    assert any(f"path={real}," in arg for arg in argv) and not any("inside" in arg for arg in argv)

    with pytest.raises(UsageError, match=r"shares\[0\].source: .*/outside is a symbolic link to /etc, outside .*"
                                         r"set shares\[0\].follow_link: true"):
        preflight.resolve_shares(_profile({"source": str(tmp_path / "outside"), "tag": "a", "type": "9p"}))
    allowed = preflight.resolve_shares(_profile({"source": str(tmp_path / "outside"), "tag": "a", "type": "9p",
                                                 "follow_link": True}))
    assert allowed.shares[0].source == "/etc"
    plain = _profile({"source": str(real), "tag": "a"})
    assert preflight.resolve_shares(plain) == plain
