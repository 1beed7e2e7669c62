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
from qemuvm.cli import profile_cmds, lifecycle, images, workflow, agent_cmds, monitor, network_cmds, convert_cmds  # noqa: E402, F401, I001


def _click_exceptions():  # -> module
    """click's exceptions: typer 0.28 vendors click as typer._click; older typers depend on click itself."""
    try:
        from typer._click import exceptions  # type: ignore[import-not-found]
    except ImportError:
        from click import exceptions
    return exceptions


def main() -> None:
    """Console entry point: QemuvmError becomes one sentence on stderr and its exit code; a usage error is
    click's one-line message with exit 2; anything unexpected is one sentence too (--debug shows the traceback)."""
    debug = bool(os.environ.get("QEMUVM_DEBUG")) or "--debug" in sys.argv[1:]
    if any("\0" in arg for arg in sys.argv[1:]):  # only an in-process caller can pass one: no path holds it
        print("qemuvm: an argument contains a NUL byte, which no file name or value can hold", file=sys.stderr)
        sys.exit(2)
    try:
        result = app(standalone_mode=False)
        if isinstance(result, int):
            sys.exit(result)
    except QemuvmError as exc:
        if debug:
            raise
        print(f"qemuvm: {exc}" if "\n" not in str(exc) else str(exc), file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("qemuvm: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:
        errors = _click_exceptions()
        if isinstance(exc, errors.ClickException):
            exc.show()
            sys.exit(2 if isinstance(exc, errors.UsageError) else exc.exit_code)
        if debug:
            raise
        print(f"qemuvm: unexpected error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        sys.exit(1)
