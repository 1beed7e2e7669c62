"""The typed records: LaunchSpec (supervisor.json) and InstanceState (state.json): round trip, defaults in one
place, versions, type checks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from qemuvm.errors import UsageError
from qemuvm.paths import InstancePaths
from qemuvm.runtime import records


@pytest.fixture
def paths(short_tmp: Path) -> InstancePaths:
    found = InstancePaths(short_tmp / "vm")
    found.root.mkdir()
    return found


def test_round_trip_and_defaults(paths: InstancePaths) -> None:
    spec = records.LaunchSpec(name="vm", argv=["qemu-system-x86_64", "-S"], restart=records.Restart("always", 3, 2.0),
                              taps=[records.Tap(index=1, network="t", ifname="qvt0123456789", bridge="qvbr-t",
                                                mac="52:54:00:00:00:01")])
    records.write_launch_spec(paths, spec)
    assert records.read_launch_spec(paths) == spec
    assert json.loads(paths.supervisor_config.read_text())["schema"] == records.LAUNCH_SPEC_SCHEMA
    assert records.read_launch_spec(InstancePaths(paths.root.parent / "none")) is None


def test_an_unversioned_record_reads_as_schema_1(paths: InstancePaths) -> None:
    paths.supervisor_config.write_text(json.dumps({"name": "vm", "argv": ["q"], "restart": {"policy": "never"},
                                                   "old_field_gone": 1}))
    spec = records.read_launch_spec(paths)
    assert spec is not None and spec.restart.max_retries == 5 and spec.shutdown_timeout == 60.0


def test_newer_and_broken_records_are_one_sentence(paths: InstancePaths) -> None:
    paths.supervisor_config.write_text(json.dumps({"schema": 99, "name": "vm", "argv": []}))
    with pytest.raises(UsageError, match=r"started by a newer qemuvm .*schema 99"):
        records.read_launch_spec(paths)
    paths.supervisor_config.write_text(json.dumps({"name": "vm"}))
    with pytest.raises(UsageError, match="incomplete"):
        records.read_launch_spec(paths)
    paths.supervisor_config.write_text("{trunc")
    with pytest.raises(UsageError, match="unreadable"):
        records.read_launch_spec(paths)


def test_state_problem_names_the_bad_field() -> None:
    assert records.state_problem({"state": "running", "qemu_pid": 12, "qemu_start_time": 5}) is None
    assert records.state_problem({"qemu_pid": "abc"}) == "qemu_pid is str, not int"
    assert records.state_problem({"restarts": True}) == "restarts is bool, not int"
    assert records.state_problem({"forwards": {}}) == "forwards is dict, not list"
    assert records.state_problem({"schema": 2}) == "written by a newer qemuvm: schema 2, this qemuvm reads up to 1"


def test_state_round_trip_and_view(paths: InstancePaths) -> None:
    from qemuvm.runtime import instance

    state = records.InstanceState(name="vm", state="running", qemu_pid=7, restarts=2)
    records.write_state(paths, state)
    view = instance.read_state(paths)
    assert view == records.StateView(**dataclasses.asdict(state))  # every field, nothing the folder added
    # An unversioned record (qemuvm before records were typed) reads with its defaults filled in.
    paths.state.write_text(json.dumps({"state": "stopped", "gone_field": 1}))
    view = instance.read_state(paths)
    assert view is not None and view.restarts == 0 and not hasattr(view, "gone_field") and view.schema == 1


def test_nested_records_read_typed_and_tolerant(paths: InstancePaths) -> None:
    from qemuvm.runtime import instance

    exited = records.ExitRecord(time=5.0, reason="signal", failure=True, signal="SIGKILL", gave_up=True)
    helper = records.HelperState(name="virtiofs0", what="shares[0]", pid=9, start_time=1.0, cmdline=["v"], log="l")
    records.write_state(paths, records.InstanceState(name="vm", last_exit=exited, helpers=[helper]))
    view = instance.read_state(paths)
    assert view is not None and view.last_exit == exited and view.helpers == [helper]
    # A field of the wrong type inside a nested record reads as its default, never as a crash.
    paths.state.write_text(json.dumps({"last_exit": {"reason": 3, "exit_code": True, "signal": "SIGTERM"},
                                       "helpers": [{"name": "h", "pid": "x"}, "junk"]}))
    view = instance.read_state(paths)
    assert view is not None and view.last_exit == records.ExitRecord(signal="SIGTERM")
    assert [(h.name, h.pid, h.cmdline) for h in view.helpers] == [("h", 0, [])]
    assert records.state_problem({"last_exit": "killed"}) == "last_exit is str, not dict"


def test_a_newer_state_is_unknown_with_one_sentence(paths: InstancePaths) -> None:
    from qemuvm.runtime import instance

    paths.state.write_text(json.dumps({"schema": 7, "state": "running", "qemu_pid": "new-format"}))
    view = instance.read_state(paths)
    assert view == records.StateView(state="unknown", unreadable="state.json unreadable (written by a newer "
                                                                  "qemuvm: schema 7, this qemuvm reads up to 1)")


def test_saved_state_round_trip_and_refusals(paths: InstancePaths) -> None:
    assert records.read_saved_state(paths) is None
    saved = records.SavedState(saved_at=1.5, size=10, profile_sha256="ab",
                               disks=[records.DiskPrint("/d.qcow2", 1, 2, 3)])
    records.write_saved_state(paths, saved)
    assert records.read_saved_state(paths) == saved
    paths.saved_info.write_text(json.dumps({"schema": 5}))
    with pytest.raises(UsageError, match="newer qemuvm"):
        records.read_saved_state(paths)
    paths.saved_info.write_text(json.dumps({"saved_at": 1}))
    with pytest.raises(UsageError, match=r"incomplete .*--discard-saved"):
        records.read_saved_state(paths)


def test_a_reuse_record_round_trips_and_an_odd_one_is_no_record(tmp_path) -> None:
    """reuse.json is never an error: whatever is wrong with it, the start takes the full path and writes it anew."""
    from qemuvm.paths import InstancePaths
    from qemuvm.runtime import records

    paths = InstancePaths(tmp_path)
    record = records.ReuseRecord(invocations={"k": [records.DiskPrint("/p.yaml", 1, 2, 3)]}, host="h",
                                 needs=["/disk"], ready={"serial": "READY", "timeout": 60.0}, memory_mib=256)
    records.write_reuse(paths, record)
    assert records.read_reuse(paths) == record
    for odd in ('{"schema": 2}', '{"schema": 1, "host": "h"}', '[1]', 'not json',
                '{"schema": 1, "invocations": {"k": [{"path": 1}]}, "host": "h", "needs": [], "ready": null, '
                '"memory_mib": 1}',
                '{"schema": 1, "invocations": {}, "host": "h", "needs": "x", "ready": null, "memory_mib": 1}'):
        (tmp_path / "reuse.json").write_text(odd)
        assert records.read_reuse(paths) is None, odd


def test_records_are_written_through_names_nobody_can_plant(tmp_path) -> None:
    """The temporary file of an atomic write has a name of its own, made exclusively: a link planted at the
    name an earlier qemuvm used (NAME.PID.tmp) is never followed, and nothing is left behind."""
    import os
    import threading

    from qemuvm.runtime.atomic import write_private_atomic

    victim = tmp_path / "victim"
    victim.write_text("untouched")
    target = tmp_path / "state.json"
    os.symlink(victim, tmp_path / f".state.json.{os.getpid()}.tmp")
    threads = [threading.Thread(target=write_private_atomic, args=(target, f"{n}\n")) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert victim.read_text() == "untouched" and target.read_text().strip().isdigit()
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".state.json.{os.getpid()}.tmp", "state.json", "victim"]
