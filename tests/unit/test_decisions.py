"""The supervisor's decisions as tables: exit classification and the restart policy (pure functions)."""

from __future__ import annotations

import pytest

from qemuvm.runtime.decisions import Exit, classify, gives_up, restart_delay


@pytest.mark.parametrize(("exit_", "expected"), [
    (Exit(exit_code=0, shutdown_reason="guest-shutdown"), ("guest-shutdown", False)),
    (Exit(exit_code=0, shutdown_reason="host-qmp-quit"), ("host-qmp-quit", False)),
    (Exit(exit_code=0, shutdown_reason="host-qmp-system-reset"), ("host-qmp-system-reset", False)),
    (Exit(exit_code=0, shutdown_reason="host-signal"), ("signal", True)),
    (Exit(signal="SIGKILL"), ("signal", True)),
    (Exit(signal="SIGKILL", intended="kill"), ("kill", False)),  # the intent wins over how it ended
    (Exit(exit_code=0, shutdown_reason="guest-shutdown", intended="down"), ("down", False)),
    (Exit(exit_code=1), ("error", True)),
    (Exit(exit_code=1, reached_running=False), ("start-failed", True)),
    (Exit(exit_code=1, reached_running=False, restarted=True), ("restart-failed", True)),
    (Exit(exit_code=1, reached_running=False, restoring=True), ("restore-failed", True)),  # state file kept
    (Exit(exit_code=0, shutdown_reason="host-qmp-quit", intended="save"), ("save", False)),
    (Exit(signal="SIGKILL", panicked=True), ("guest-panic", True)),
    (Exit(), ("killed", True)),  # adopted and silent: the exit code is lost
    (Exit(exit_code=0), ("killed", True)),  # exited 0 with no SHUTDOWN event: not a guest power-off
])
def test_classify(exit_: Exit, expected: tuple[str, bool]) -> None:
    assert classify(exit_) == expected


@pytest.mark.parametrize(("policy", "reason", "failure", "restarts", "delay", "gave_up"), [
    ("never", "signal", True, 0, None, False),
    ("on-failure", "signal", True, 0, 1.0, False),
    ("on-failure", "signal", True, 3, 8.0, False),  # doubling
    ("on-failure", "signal", True, 9, 60.0, False),  # capped at 60 s
    ("on-failure", "signal", True, 10, None, True),  # max_retries used up
    ("on-failure", "guest-shutdown", False, 0, None, False),
    ("always", "guest-shutdown", False, 0, 1.0, False),
    ("always", "down", False, 0, None, False),
    ("always", "kill", False, 0, None, False),
    ("always", "host-qmp-quit", False, 0, None, False),
    ("always", "start-failed", True, 0, None, False),
    ("on-failure", "restart-failed", True, 1, 2.0, False),  # retried: the first run proved the argv
    ("on-failure", "restart-failed", True, 10, None, True),
    ("always", "save", False, 0, None, False),  # a saved VM waits for `start`
    ("always", "restore-failed", True, 0, None, False),  # the same file would fail again
    ("on-failure", "guest-panic", True, 1, 2.0, False),
])
def test_restart_policy(policy, reason, failure, restarts, delay, gave_up) -> None:
    assert restart_delay(policy, reason, failure, restarts, 10, 1.0) == delay
    assert gives_up(policy, reason, failure, restarts, 10) is gave_up
