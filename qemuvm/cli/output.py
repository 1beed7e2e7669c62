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


def human_size(size: float | None) -> str:
    """Bytes for people: 512 B, 1.5 MiB, 2.0 GiB; None is "-"."""
    if size is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def info(message: str) -> None:
    """Progress and notices go to stderr so stdout stays parseable."""
    print(message, file=sys.stderr, flush=True)


# Arguments and options that several commands share (one definition, one help text).
NameArg = typer.Argument(..., help="Instance name.")
JsonOption = typer.Option(False, "--json", help="Print JSON on stdout.")
WaitOption = typer.Option(None, "--wait/--no-wait", help="Wait for the profile's `ready` condition "
                          "[default: when it has one].")
ReadyTimeoutOption = typer.Option(None, "--timeout", help="How long to wait for ready [default: ready.timeout].")


class Download:
    """How a download shows itself: a progress bar with bytes, rate and time left on a terminal (rich), one
    line per 10 % otherwise (a CI log gets ten lines, not thousands). Call it as (done, total) per chunk."""

    def __init__(self, label: str = "downloading") -> None:
        self.label, self._bar, self._task, self._shown = label, None, None, -1
        self._tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int | None) -> None:
        if self._tty:
            if self._bar is None:
                from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

                self._bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                                     TransferSpeedColumn(), TimeRemainingColumn(), transient=False)
                self._bar.start()
                self._task = self._bar.add_task(self.label, total=total)
            self._bar.update(self._task, completed=done, total=total)
            if total is not None and done >= total:
                self.close()  # complete: what follows (the boot's progress lines) prints below it
            return
        # Without a size from the server: a line per 100 MiB.
        step = done * 10 // total if total else done // (100 << 20)
        if step != self._shown:
            self._shown = step
            info(f"{self.label}: {step * 10} % ({done >> 20} of {total >> 20} MiB)" if total
                 else f"{self.label}: {done >> 20} MiB")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
