"""The supervisor's bring-up, from a QEMU paused in prelaunch to a running guest, as a table of named steps
(runtime/supervision.Supervisor.BRING_UP), tested without QEMU: the order, and that a step that refuses keeps
every later one -- `cont` above all -- from running."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from qemuvm.paths import InstancePaths
from qemuvm.runtime import records
from qemuvm.runtime import supervision as supervisor


def _supervisor(tmp_path: Path) -> supervisor.Supervisor:
    paths = InstancePaths(tmp_path / "vm")
    paths.root.mkdir()
    records.write_launch_spec(paths, records.LaunchSpec(name="vm", argv=["qemu-system-x86_64"]))
    return supervisor.Supervisor(paths)


def test_the_steps_and_their_order() -> None:
    assert [step for step, _ in supervisor.Supervisor.BRING_UP] == ["taps", "listeners", "vnc-password", "cont"]
    for _, method in supervisor.Supervisor.BRING_UP:
        assert asyncio.iscoroutinefunction(getattr(supervisor.Supervisor, method))


@pytest.mark.parametrize("refusing", [None, "attach_taps", "check_listeners"])
def test_a_refusing_step_stops_the_rest(refusing: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _supervisor(tmp_path)
    called: list[str] = []
    for _, method in supervisor.Supervisor.BRING_UP:
        async def step(name: str = method) -> None:
            called.append(name)
            if name == refusing:
                raise supervisor.BringUpRefused(f"{name} refused")
        monkeypatch.setattr(run, method, step)
    methods = [method for _, method in supervisor.Supervisor.BRING_UP]
    if refusing is None:
        asyncio.run(run.bring_up())
        assert called == methods
    else:
        with pytest.raises(supervisor.BringUpRefused, match=f"{refusing} refused"):
            asyncio.run(run.bring_up())
        assert called == methods[:methods.index(refusing) + 1] and "start_guest" not in called
