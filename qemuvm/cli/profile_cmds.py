"""Commands: profile_cmds."""

from qemuvm.cli import app  # noqa: F401
