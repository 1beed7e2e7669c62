"""The command line: a thin typer layer over the Python API.

Each area registers its commands on `cli.app.app` from its own module, and `main` imports only the module of
the command it runs (`COMMANDS`): `qemuvm up` never builds the other thirty commands. Heavy imports happen
inside the commands, so that `qemuvm --help` stays fast too.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys

from qemuvm.errors import QemuvmError

# The command modules, in the order of `--help`.
MODULES = ("profile_cmds", "lifecycle", "images", "workflow", "agent_cmds", "monitor", "web_cmds", "network_cmds",
           "convert_cmds")
# Which module registers each top-level command (tests/unit/test_cli_lazy.py derives it from the modules).
COMMANDS = {
    **dict.fromkeys(("render", "validate", "schema", "doctor", "define", "dumpprofile"), "profile_cmds"),
    **dict.fromkeys(("up", "start", "save", "edit", "down", "ls", "status", "pause", "resume", "reset", "reboot",
                     "autostart", "kill", "rm", "logs", "events", "console", "qmp", "wait", "supervise"), "lifecycle"),
    **dict.fromkeys(("screenshot", "image", "snapshot", "template"), "images"),
    **dict.fromkeys(("ssh", "smoke"), "workflow"),
    **dict.fromkeys(("exec", "cp", "send", "sendkey"), "agent_cmds"),
    "top": "monitor", "web": "web_cmds", "metrics": "web_cmds", "network": "network_cmds",
    "import": "convert_cmds", "export": "convert_cmds",
}


def _command(argv: list[str]) -> str | None:
    """The command word: the first argument that is not an option (the root options take no values)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def load_commands(argv: list[str] | None = None):  # -> typer.Typer
    """The application with the commands `argv` needs registered: the one its first word names, or all of
    them (no command, `--help`, a misspelt one: click then lists or suggests the real ones)."""
    from qemuvm.cli.app import app

    word = _command(argv or [])
    for module in [COMMANDS[word]] if word in COMMANDS else MODULES:
        importlib.import_module(f"qemuvm.cli.{module}")
    return app


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
        spawn = None
        if _command(sys.argv[1:]) in ("up", "start") and not any(a in ("-h", "--help") for a in sys.argv[1:]):
            # The one import past the api: the supervisor starts before this process imports the api, typer and
            # the command, and parses (runtime/spawn.py says why; tests/unit/import_graph.py allows exactly it).
            from qemuvm.runtime import spawn

            spawn.prestart()
        app = load_commands(sys.argv[1:])
        try:
            result = app(standalone_mode=False)
        finally:
            if spawn is not None:  # one that no `up` took (a usage error, a failure before it): never left waiting
                spawn.release_early()
        if isinstance(result, int):
            sys.exit(result)
    except QemuvmError as exc:
        if debug:
            raise
        print(f"qemuvm: {exc}" if "\n" not in str(exc) else str(exc), file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # (inside a command, typer turns it into exit 130 itself)
        print("qemuvm: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        import typer

        if isinstance(exc, typer.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, typer.Abort):
            sys.exit(1)
        errors = _click_exceptions()
        if isinstance(exc, errors.ClickException):
            exc.show()
            sys.exit(2 if isinstance(exc, errors.UsageError) else exc.exit_code)
        if debug:
            raise
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):  # any command, any file
            where = f" writing {exc.filename}" if exc.filename else ""
            print(f"qemuvm: no space left on the device{where} (disk full or over quota); free some space and try "
                  "again", file=sys.stderr)
            sys.exit(1)
        print(f"qemuvm: unexpected error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        sys.exit(1)
