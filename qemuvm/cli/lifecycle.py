"""Commands: lifecycle."""

from qemuvm.cli import app  # noqa: F401
