"""Commands: monitor."""

from qemuvm.cli import app  # noqa: F401
