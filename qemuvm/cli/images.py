"""Commands: images."""

from qemuvm.cli import app  # noqa: F401
