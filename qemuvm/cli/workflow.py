"""Commands: workflow."""

from qemuvm.cli import app  # noqa: F401
