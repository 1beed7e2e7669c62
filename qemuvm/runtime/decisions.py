"""The supervisor's decisions as pure functions (table-tested in tests/unit/test_decisions.py): how a QEMU
exit is classified, and whether the restart policy starts it again. No I/O, no clock."""

from __future__ import annotations

import signal
from dataclasses import dataclass

MAX_BACKOFF = 60.0
# Exits the restart policy never undoes: asked for (down, kill, a hand-typed QMP quit) or hopeless (the
# first start failed: the same argv would fail again, and `up` reports it). A start that fails when the policy
# restarts a VM that ran ("restart-failed": its port taken meanwhile, a disk locked by a backup) is retried
# with the backoff, within max_retries.
_NEVER_RESTARTED = frozenset({"down", "kill", "save", "start-failed", "restore-failed", "host-qmp-quit"})


@dataclass(frozen=True)
class Exit:
    """What is known when a QEMU has exited."""

    exit_code: int | None = None  # None: not our child (adopted), the code is lost
    signal: str | None = None  # e.g. "SIGKILL" when it died by a signal
    shutdown_reason: str | None = None  # the SHUTDOWN event's reason, if one came
    intended: str | None = None  # the stop intent that applies to it (down | kill | save), if any
    panicked: bool = False  # GUEST_PANICKED was seen
    reached_running: bool = True  # the start completed (QMP answered, `cont` sent)
    restarted: bool = False  # this QEMU was started by the restart policy, not by `up`/`start`
    restoring: bool = False  # it was loading a saved state (`start` of a saved instance)


def classify(exit_: Exit) -> tuple[str, bool]:
    """(reason, failure) for the last_exit record."""
    if exit_.intended:
        return exit_.intended, False
    if exit_.panicked:
        return "guest-panic", True
    if not exit_.reached_running and exit_.restoring:
        return "restore-failed", True  # the saved state is kept: `start --discard-saved` boots afresh
    if not exit_.reached_running:
        return ("restart-failed" if exit_.restarted else "start-failed"), True
    if exit_.signal:
        return "signal", True
    if exit_.exit_code not in (0, None):
        return "error", True
    if exit_.shutdown_reason in ("guest-shutdown", "host-qmp-quit", "host-qmp-system-reset"):
        return exit_.shutdown_reason, False
    if exit_.shutdown_reason == "host-signal":
        return "signal", True
    return "killed", True  # adopted, and QEMU ended without a word: it was killed (the exit code is lost)


def wants_restart(policy: str, reason: str, failure: bool) -> bool:
    """never | on-failure (a failure) | always (any exit), except the exits nothing restarts."""
    return (policy == "always" or (failure and policy == "on-failure")) and reason not in _NEVER_RESTARTED


def restart_delay(policy: str, reason: str, failure: bool, restarts: int, max_retries: int,
                  backoff: float) -> float | None:
    """Seconds to wait before starting QEMU again (doubling, capped), or None when it stays down."""
    if not wants_restart(policy, reason, failure) or restarts >= max_retries:
        return None
    return min(backoff * (2 ** restarts), MAX_BACKOFF)


def gives_up(policy: str, reason: str, failure: bool, restarts: int, max_retries: int) -> bool:
    """The policy wanted a restart, but max_retries are used up."""
    return wants_restart(policy, reason, failure) and restarts >= max_retries


def signal_name(number: int) -> str:
    """SIGKILL for 9: how the exit records (QEMU's and the helpers') name a signal."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
