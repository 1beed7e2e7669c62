"""Into the guest without a network: exec and cp through the guest agent; send (the serial console) and
sendkey (the keyboard) for guests with neither an agent nor SSH."""

from __future__ import annotations

import sys

import typer

from qemuvm.cli.app import app
from qemuvm.cli.output import NameArg, print_json
from qemuvm.errors import UsageError

TRUNCATED_EXIT = 3  # `exec` succeeded in the guest, but qemu-ga cut its output at 16 MiB


@app.command("exec")
def exec_(
    name: str = NameArg,
    command: list[str] = typer.Argument(..., help="The command and its arguments (after --), searched on the "
                                        "guest's PATH; no shell: `-- sh -c 'a | b'` for one."),
    timeout: float = typer.Option(None, "--timeout", help="Seconds to wait for the command [default: no limit]."),
    env: list[str] = typer.Option(None, "--env", help="KEY=VALUE in the command's environment (repeatable)."),
    json_: bool = typer.Option(False, "--json", help="Print exit code, stdout, stderr and duration as JSON."),
) -> int:
    """Run a command in the guest through its guest agent: its stdout and stderr, its exit code (a signal N:
    128+N; 3 when it succeeded but qemu-ga cut its output at 16 MiB). stdin is passed on when it is not a
    terminal. Needs `guest_agent: true` and qemu-ga in the guest."""
    from qemuvm import api

    words = list(command)
    if words[:1] == ["--"]:
        words = words[1:]
    if not words:
        raise UsageError("exec: give the command to run after --")
    variables = {}
    for item in env or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {item!r}: expected KEY=VALUE")
        variables[key] = value
    stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    result = api.exec_(name, words, env=variables, stdin=stdin, timeout=timeout)
    # Output cut at the agent's cap is not the command's output: a script's `exec ... > out` must not take a
    # truncated file for success. Its own failure code stays; a success becomes TRUNCATED_EXIT.
    code = TRUNCATED_EXIT if result.truncated and result.exit_code == 0 else result.exit_code
    if json_:
        print_json(result.as_json())
        return code
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(result.stderr)
    for stream in result.truncated:
        print(f"qemuvm: {stream} was cut by the guest agent at 16 MiB (qemu-ga keeps no more); redirect it to a "
              "file in the guest and `qemuvm cp` that", file=sys.stderr)
    sys.stderr.flush()
    return code


@app.command()
def cp(
    source: str = typer.Argument(..., help="A host file, or NAME:/guest/path."),
    target: str = typer.Argument(..., help="A host path, or NAME:/guest/path."),
    json_: bool = typer.Option(False, "--json", help="Print what was copied as JSON."),
    max_size: str = typer.Option(None, "--max-size", help="From the guest: refuse a file larger than this "
                                 "(e.g. 512M)."),
) -> None:
    """Copy one file between the host and a guest through its guest agent (either direction; the mode
    follows, without setuid, setgid or sticky bits from a guest; from the guest, regular files only)."""
    import signal

    from qemuvm import api

    limit = api.parse_size(max_size, "--max-size") if max_size is not None else None
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a killed copy removes its partial file too

    def shown(copied: int, size: int) -> None:  # on a terminal only: a log gets the one line at the end
        total = max(size, copied, 1)
        sys.stderr.write(f"\r{copied >> 20} of {total >> 20} MiB ({100 * copied // total} %)")
        sys.stderr.flush()

    terminal = sys.stderr.isatty()
    result = api.cp(source, target, max_size=limit, progress=shown if terminal else None)
    if terminal:
        sys.stderr.write("\n")
    if json_:
        print_json(result)
    else:
        print(f"copied {result['bytes']} bytes: {result['source']} -> {result['target']}")


@app.command()
def send(
    name: str = NameArg,
    text: str = typer.Argument(..., help="What to type; escapes: \\n \\r \\t \\e (Esc) \\0 \\\\ \\xHH "
                               "(\\x03: Ctrl-C)."),
) -> None:
    """Type on the VM's serial console, for guests with no agent and no SSH (a login prompt, an installer)."""
    from qemuvm import api

    api.send(name, text)


@app.command()
def sendkey(
    name: str = NameArg,
    keys: list[str] = typer.Argument(None, help="Key combos pressed in order: ctrl-alt-delete, esc, ret, f12, "
                                     "shift-tab, a ... (QEMU's qcodes)."),
    text: str = typer.Option(None, "--text", help="Then type this text key by key (a US keyboard layout)."),
    delay: float = typer.Option(0.05, "--delay", help="Seconds between key presses."),
) -> None:
    """Press keys on the VM's keyboard (QMP send-key): boot menus, installers, anything on the screen."""
    from qemuvm import api

    api.sendkey(name, keys or [], text=text, delay=delay)
