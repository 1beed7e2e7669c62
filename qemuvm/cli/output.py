"""Output helpers shared by the CLI commands: JSON for scripts, rich for people, errors to stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer


def print_json(data: Any) -> None:
    """Stable, indented JSON on stdout (what `--json` prints)."""
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def print_table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    """A table for people (rich); plain columns when stdout is not a terminal."""
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, title=title, box=None, header_style="bold", pad_edge=False)
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    # Piped output keeps whole lines rather than wrapping at 80 columns.
    width = None if sys.stdout.isatty() else 200
    Console(width=width).print(table)


def info(message: str) -> None:
    """Progress and notices go to stderr so stdout stays parseable."""
    print(message, file=sys.stderr, flush=True)


# Arguments and options that several commands share (one definition, one help text).
NameArg = typer.Argument(..., help="Instance name.")
JsonOption = typer.Option(False, "--json", help="Print JSON on stdout.")
WaitOption = typer.Option(None, "--wait/--no-wait", help="Wait for the profile's `ready` condition "
                          "[default: when it has one].")
ReadyTimeoutOption = typer.Option(None, "--timeout", help="How long to wait for ready [default: ready.timeout].")
