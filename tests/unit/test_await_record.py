"""await_record: a command returns once the supervisor has recorded what it did, and a supervisor that records and
exits between the command's read and its liveness check is not taken for one that ended without recording (a
save's supervisor records QEMU's exit and exits at once: under load, that race failed a warm template's save)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qemuvm.control import wait
from qemuvm.errors import OperationError
from qemuvm.paths import InstancePaths
from qemuvm.runtime import instance, records


@pytest.fixture
def paths(short_tmp: Path) -> InstancePaths:
    found = InstancePaths(short_tmp / "vm")
    found.root.mkdir()
    return found


def _saved() -> records.StateView:
    return records.StateView(state=instance.SAVED, last_exit=records.ExitRecord(time=100.0, reason="save"))


@pytest.mark.parametrize(("reads", "outcome"), [
    # what each read of state.json returns, in order (the supervisor is gone at every liveness check)
    ([records.StateView(state=instance.RUNNING), _saved()], "returns"),  # recorded, then exited, between the two
    ([_saved()], "returns"),
    ([records.StateView(state=instance.RUNNING), records.StateView(state=instance.RUNNING)], "ended without"),
])
def test_a_supervisor_gone_after_its_record_is_no_failure(paths: InstancePaths, monkeypatch: pytest.MonkeyPatch,
                                                        reads: list[records.StateView], outcome: str) -> None:
    pending = list(reads)
    monkeypatch.setattr(instance, "read_state", lambda _paths: pending.pop(0) if len(pending) > 1 else pending[0])
    monkeypatch.setattr(instance, "live_supervisor", lambda _state: None)

    def holds(state: records.StateView) -> bool:
        return state.last_exit is not None and state.last_exit.time >= 50.0

    if outcome == "returns":
        assert wait.await_record(paths, "QEMU's exit", holds).state == instance.SAVED
    else:
        with pytest.raises(OperationError, match="ended without recording QEMU's exit"):
            wait.await_record(paths, "QEMU's exit", holds)


def test_a_live_supervisor_that_never_records_times_out(paths: InstancePaths, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(instance, "read_state", lambda _paths: records.StateView(state=instance.RUNNING))
    monkeypatch.setattr(instance, "live_supervisor", lambda _state: object())
    with pytest.raises(OperationError, match=r"has not recorded the pause within 0\.05 s"):
        wait.await_record(paths, "the pause", lambda s: s.state == instance.PAUSED, timeout=0.05)
