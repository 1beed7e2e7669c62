"""Exceptions that carry a user-facing message and the exit code the CLI uses for them.

Exit codes (DESIGN.md): 0 ok, 1 the operation failed, 2 bad usage or invalid profile.
"""

from __future__ import annotations


class QemuvmError(Exception):
    """An error with one clear sentence for the user; the CLI prints it without a traceback."""

    exit_code = 1


class UsageError(QemuvmError):
    """Bad input: a wrong argument, a missing file, an invalid value."""

    exit_code = 2


class NoSuchInstance(UsageError):
    """A name that no instance has (`qemuvm web` answers it with 404)."""


class ProfileError(UsageError):
    """An invalid profile: one line per problem, each `FILE:LINE: field.path: message`."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class OperationError(QemuvmError):
    """The operation was valid but failed (QEMU did not start, a check failed, ...)."""

    exit_code = 1
