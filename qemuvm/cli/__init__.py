"""The command line: a thin typer layer over the Python API.

Each area registers its commands from its own module; heavy imports happen inside the commands so
that `qemuvm --help` stays fast.
"""

from __future__ import annotations

import os
import sys

# typer's rich help costs ~200 ms of imports on every call; plain help keeps `qemuvm --help` fast.
os.environ.setdefault("TYPER_USE_RICH", "0")
# The CLI uses no pydantic plugins; looking them up scans every installed package's entry points.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "1")

import typer

from qemuvm import __version__
from qemuvm.errors import QemuvmError

app = typer.Typer(
    name="qemuvm",
    help="Run QEMU/KVM virtual machines from YAML profiles, without libvirt.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"qemuvm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors.", envvar="QEMUVM_DEBUG"),
) -> None:
    if debug:
        os.environ["QEMUVM_DEBUG"] = "1"


# Registration order is the order of `--help`.
from qemuvm.cli import profile_cmds, lifecycle, images, workflow, monitor  # noqa: E402, F401, I001


def main() -> None:
    """Console entry point: QemuvmError becomes one sentence on stderr and its exit code."""
    try:
        result = app(standalone_mode=False)
        if isinstance(result, int):
            sys.exit(result)
    except QemuvmError as exc:
        if os.environ.get("QEMUVM_DEBUG"):
            raise
        print(f"qemuvm: {exc}" if "\n" not in str(exc) else str(exc), file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
        raise
