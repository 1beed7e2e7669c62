"""Human forms of a compiled command line: pasteable shell text, and the explained listing."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from qemuvm.qemu.compile import Option


def format_command(binary: str, options: Sequence[Option]) -> str:
    """One option per line, shell-quoted, joined with `\\` so the whole text pastes into a shell."""
    lines = [shlex.quote(binary)] + [f"  {shlex.join(option.args)}" for option in options]
    return " \\\n".join(lines)


def format_explained(binary: str, options: Sequence[Option]) -> str:
    """Each option next to the profile field(s) that produced it."""
    rendered = [shlex.join(option.args) for option in options]
    width = min(max((len(text) for text in rendered), default=0), 72)
    lines = [shlex.quote(binary)]
    for text, option in zip(rendered, options, strict=True):
        lines.append(f"  {text.ljust(width)}  # {', '.join(option.fields) or '(qemuvm)'}")
    return "\n".join(lines)
