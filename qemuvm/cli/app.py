"""The typer application that every command module registers its commands on, and its root options."""

from __future__ import annotations

import os

# typer's rich help costs ~200 ms of imports on every call; plain help keeps `qemuvm --help` fast.
os.environ.setdefault("TYPER_USE_RICH", "0")
# The CLI uses no pydantic plugins; looking them up scans every installed package's entry points.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "1")

import typer

from qemuvm import __version__

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
