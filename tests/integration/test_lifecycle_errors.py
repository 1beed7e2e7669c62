"""Lifecycle edge cases with real QEMU: concurrent `up`, start failures, KVM, many VMs at once, edit."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import cli, kill_everything

from qemuvm import api
from qemuvm.errors import OperationError, UsageError
from qemuvm.paths import InstancePaths

pytestmark = pytest.mark.integration


@pytest.fixture
def home(qemuvm_home: Path) -> Iterator[Path]:
    yield qemuvm_home
    kill_everything(qemuvm_home)


def _our_processes(home: Path) -> list[int]:
    """Live QEMU/supervisor processes whose command line mentions `home`."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(home) in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc.info["pid"])
    return found


def _bare_profile(folder: Path, name: str, **machine: Any) -> Path:
    """A VM with no OS (the firmware keeps looking for one): cheap, for tests that only need QEMU running."""
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "machine": {"accel": "tcg", "memory": "64M", **machine},
                                    "shutdown": {"timeout": "1s"}}))
    return path


# -- 6. concurrent up, start errors ---------------------------------------------------------------------------


def test_two_concurrent_up_make_one_vm(home: Path) -> None:
    profile = _bare_profile(home, "twin")
    argv = [sys.executable, "-m", "qemuvm", "up", str(profile)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(120), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, _, err in results if code == 1)
    assert "twin is already running (pid" in loser
    assert len([p for p in _our_processes(home) if "qemu-system" in " ".join(_cmdline(p))]) == 1
    assert api.down("twin", force=True)["state"] == "stopped"


def _cmdline(pid: int) -> list[str]:
    import psutil

    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []


def test_forward_port_in_use_is_refused(home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        profile = _bare_profile(home, "busy")
        data = yaml.safe_load(profile.read_text())
        data["network"] = [{"mode": "user", "forwards": [f"tcp:127.0.0.1:{port}-:80"]}]
        profile.write_text(yaml.safe_dump(data))
        result = cli("up", str(profile))
    assert result.returncode == 1
    assert f"host port {port} (network[0].forwards[0]) is already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert not InstancePaths.for_name("busy").root.exists()  # nothing left behind
    assert _our_processes(home) == []


def test_disk_held_by_another_vm_quotes_qemu(home: Path, test_guest: Any, short_tmp: Path) -> None:
    disk = short_tmp / "shared.qcow2"
    shutil.copyfile(test_guest.data_disk, disk)
    holder = _bare_profile(home, "holder")
    for path in (holder, _bare_profile(home, "intruder")):
        data = yaml.safe_load(path.read_text())
        data["disks"] = [{"file": str(disk)}]
        path.write_text(yaml.safe_dump(data))
    api.up(holder)
    with pytest.raises(OperationError) as failed:
        api.up(home / "intruder.yaml")
    message = str(failed.value)
    assert message.startswith("intruder failed to start: QEMU exited with code 1")
    assert 'Failed to get "write" lock' in message
    # A first start that failed leaves nothing behind (the message above carries QEMU's own words).
    assert not InstancePaths.for_name("intruder").root.exists()
    api.down("holder", force=True)
    assert _our_processes(home) == []


def test_socket_path_too_long(monkeypatch: pytest.MonkeyPatch, short_tmp: Path) -> None:
    deep = short_tmp / ("d" * 90)
    monkeypatch.setenv("QEMUVM_HOME", str(deep))
    profile = _bare_profile(short_tmp, "far")
    with pytest.raises(UsageError, match=r"longer than 107 bytes; set QEMUVM_HOME"):
        api.up(profile)
    result = cli("up", str(profile))
    assert result.returncode == 2 and "QEMUVM_HOME" in result.stderr and str(deep) in result.stderr
    assert not deep.exists()


# -- 7. accel kvm ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="/dev/kvm is not usable here")
def test_kvm_reports_kvm_from_query_kvm(home: Path) -> None:
    # The VM need not boot far: on a software KVM a guest crawls, but query-kvm answers at once.
    profile = _bare_profile(home, "kvm", accel="kvm", cpu="host,arch-capabilities=off")
    api.up(profile)
    assert api.status("kvm")["accel"] == "kvm"
    assert api.qmp("kvm", "query-kvm")["enabled"] is True
    assert api.down("kvm", force=True)["state"] == "stopped"


# -- 8. eight VMs at once --------------------------------------------------------------------------------------


def test_eight_vms_at_once(home: Path) -> None:
    names = [f"many{i}" for i in range(8)]
    profiles = [_bare_profile(home, name) for name in names]
    with ThreadPoolExecutor(8) as pool:
        started = list(pool.map(lambda p: cli("up", str(p)), profiles))
    assert [r.returncode for r in started] == [0] * 8, [r.stderr for r in started]
    rows = {row["name"]: row for row in api.ls()}
    assert all(rows[name]["state"] == "running" and rows[name]["supervised"] for name in names)
    ssh_ports = {f["host_port"] for name in names for f in rows[name]["forwards"]}
    assert len(ssh_ports) == 8  # every VM got its own forward
    with ThreadPoolExecutor(8) as pool:
        stopped = list(pool.map(lambda n: api.down(n, force=True), names))
    assert all(r["state"] == "stopped" for r in stopped)
    assert all(row["state"] == "stopped" for row in api.ls())
    assert _our_processes(home) == []


# -- edit / rm ----------------------------------------------------------------------------------------------------


def test_edit_refuses_invalid_profile_and_rm(home: Path, short_tmp: Path) -> None:
    api.up(_bare_profile(home, "edited"))
    editor = short_tmp / "editor.sh"
    editor.write_text("#!/bin/sh\nsed -i 's/memory: .*/memory: lots/' \"$1\"\n")
    editor.chmod(0o700)
    saved = InstancePaths.for_name("edited").profile
    before = saved.read_text()
    result = subprocess.run([sys.executable, "-m", "qemuvm", "edit", "edited"], capture_output=True, text=True,
                            env={**os.environ, "EDITOR": str(editor)}, timeout=60, check=False)
    assert result.returncode == 2 and "machine.memory" in result.stderr and "unchanged" in result.stderr
    assert saved.read_text() == before

    refused = cli("rm", "edited")
    assert refused.returncode == 1 and "is running" in refused.stderr
    assert cli("rm", "edited", "--force").returncode == 0
    assert not InstancePaths.for_name("edited").root.exists()
    assert _our_processes(home) == []


def test_a_setup_step_that_fails_after_qemu_started_stops_it_and_says_why(home: Path, test_guest: Any,
                                                                          tmp_path: Path) -> None:
    """The supervisor's bring-up (here: setting the VNC password, whose file went away after `up` checked it)
    fails while QEMU waits paused: QEMU is stopped and the record says why -- never `starting` for ever."""
    from helpers import guest_profile

    from qemuvm.runtime import instance, launch, spawn

    secret = tmp_path / "vnc-secret"
    secret.write_text("hunter2\n")
    profile = guest_profile(tmp_path, test_guest, "vncfail",
                            display={"vga": "std", "vnc": {"port": "auto", "password_file": str(secret)}})
    api.up(str(profile), wait=False)
    api.down("vncfail", force=True)
    secret.unlink()
    paths = InstancePaths.for_name("vncfail")
    supervisor = subprocess.run([sys.executable, "-S", "-m", "qemuvm.runtime.supervisor", str(paths.root)],
                                env=dict(os.environ, PYTHONPATH=os.pathsep.join(spawn.module_path())),
                                capture_output=True, text=True, timeout=120)
    state = instance.read_state(paths)
    assert state is not None and state.state in ("stopped", "crashed"), (state, supervisor.stdout[-2000:])
    assert state.last_exit is not None and state.last_exit.helper is not None
    assert "could not set QEMU up" in state.last_exit.helper and "vnc-secret" in state.last_exit.helper
    assert instance.proven_qemu(state) is None and instance.scan_for_qemu(paths) is None
    assert "could not set QEMU up" in launch.failure_message(paths, state)


def test_a_qemu_that_cannot_be_started_is_recorded_not_a_crashed_supervisor(home: Path, test_guest: Any,
                                                                           tmp_path: Path) -> None:
    """Popen itself fails (the binary gone since `up`, no memory, no pids) -- at a first start or a policy
    restart, the same step: the supervisor records why, stops the helpers it started, and ends cleanly."""
    import json

    from helpers import guest_profile

    from qemuvm.runtime import instance, spawn

    profile = guest_profile(tmp_path, test_guest, "nobinary")
    api.up(str(profile), wait=False)
    api.down("nobinary", force=True)
    paths = InstancePaths.for_name("nobinary")
    spec = json.loads(paths.supervisor_config.read_text())
    spec["argv"][0] = str(tmp_path / "qemu-system-gone")
    paths.supervisor_config.write_text(json.dumps(spec))
    supervisor = subprocess.run([sys.executable, "-S", "-m", "qemuvm.runtime.supervisor", str(paths.root)],
                                env=dict(os.environ, PYTHONPATH=os.pathsep.join(spawn.module_path())),
                                capture_output=True, text=True, timeout=120)
    assert supervisor.returncode == 0 and "Traceback" not in paths.supervisor_log.read_text()
    state = instance.read_state(paths)
    assert state is not None and state.state in ("stopped", "crashed")
    assert state.last_exit is not None and state.last_exit.helper is not None
    assert "QEMU could not be started" in state.last_exit.helper and "qemu-system-gone" in state.last_exit.helper


def test_a_port_another_instance_holds_is_named_with_that_instance(home: Path, test_guest: Any,
                                                                   tmp_path: Path) -> None:
    from helpers import guest_profile

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    forward = [{"mode": "user", "forwards": [f"tcp:127.0.0.1:{port}-:22"]}]
    first = guest_profile(tmp_path, test_guest, "holder", network=forward)
    second = guest_profile(tmp_path, test_guest, "wanter", network=forward)
    api.up(str(first), wait=False)
    api.down("holder", force=True)  # stopped moments ago: its start still reserves the port
    done = cli("up", str(second), "--no-wait")
    assert done.returncode == 1 and f"host port {port}" in done.stderr and "held by instance holder" in done.stderr
    assert "qemuvm rm holder" in done.stderr and "Traceback" not in done.stderr


def test_a_listener_beyond_loopback_through_extra_args_is_proven_and_stopped(home: Path, test_guest: Any,
                                                                           tmp_path: Path) -> None:
    """`hostfwd=::PORT-:22` (empty host: every address) slips past any list of spellings; the sockets QEMU
    really bound do not: the start stops before the guest runs, naming the address, and leaves nothing."""
    from helpers import guest_profile

    from qemuvm.runtime import instance

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sneaky = ["-netdev", f"user,id=x,hostfwd=::{port}-:22", "-device", "e1000,netdev=x"]
    profile = guest_profile(tmp_path, test_guest, "listener", qemu={"extra_args": sneaky})
    done = cli("up", str(profile), "--no-wait")
    assert done.returncode == 1 and f"0.0.0.0:{port}/tcp" in done.stderr, done.stderr
    assert "beyond loopback" in done.stderr and "Traceback" not in done.stderr
    assert not (home / "listener").exists() and instance.scan_for_qemu(InstancePaths.for_name("listener")) is None
    allowed = guest_profile(tmp_path, test_guest, "listener", qemu={"extra_args": sneaky, "allow_unsafe_args": True})
    assert cli("up", str(allowed), "--no-wait").returncode == 0  # the profile said so
    api.down("listener", force=True)
