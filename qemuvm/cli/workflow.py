"""Commands for the developer and CI workflow: ssh, smoke."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from qemuvm.cli.app import app
from qemuvm.cli.output import NameArg, print_json

SetOption = typer.Option(None, "--set", help="Override a field: KEY.PATH=VALUE (YAML value; repeatable).")


@app.command(context_settings={"allow_interspersed_args": False})
def ssh(
    name: str = NameArg,
    command: list[str] = typer.Argument(None, help="Command to run (after --); none: an interactive shell."),
) -> int:
    """SSH into an instance: the per-instance key and known_hosts, no prompts, the remote exit code.

    One command word is run by the remote shell as written (`qemuvm ssh vm -- 'dmesg | tail'`);
    several words are passed as they are (`qemuvm ssh vm -- sh -c 'exit 7'` exits 7).
    """
    from qemuvm import api

    words = list(command or ())
    if words[:1] == ["--"]:  # click keeps the separator once arguments stop being interspersed
        words = words[1:]
    return api.ssh_interactive(name, words)


@app.command()
def smoke(
    profile: Path = typer.Argument(..., help="Profile file with a smoke section."),
    junit: Path = typer.Option(None, "--junit", help="Write a JUnit XML report to this file."),
    artifacts: Path = typer.Option(
        None, "--artifacts", help="Folder for the evidence when a step fails [default: ./qemuvm-artifacts/NAME]."
    ),
    keep: bool = typer.Option(False, "--keep", help="Leave the instance running (and its files) at the end."),
    redact: bool = typer.Option(False, "--redact", help="Blank secret-looking values (password:, token:, ...) in "
                                "the copied profile.yaml, argv.json and run.sh. Artifacts are 0600 in a 0700 "
                                "folder either way."),
    set_: list[str] = SetOption,
    timeout: float = typer.Option(None, "--timeout", help="Seconds for the whole run [default: smoke.timeout]."),
    json_: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    warm: bool = typer.Option(False, "--warm", help="Boot a clone of the profile's template (`up --warm`): the "
                              "first run makes it, later runs of the same image skip the boot."),
) -> int:
    """Boot a throwaway instance, wait until ready, run the smoke checks, tear down.

    Exit 0 when every check passes, 1 when one fails (with an artifacts folder), 2 for an invalid profile
    or a file it names that does not exist.
    """
    from qemuvm.workflow import smoke as smoke_

    try:
        result = smoke_.run(str(profile), sets=set_ or (), junit_file=junit, artifacts=artifacts, keep=keep,
                            timeout=timeout, redact=redact, warm=warm)
    except smoke_.Interrupted as exc:  # SIGTERM/SIGHUP: torn down and reported already; say so, exit 128+N
        print(f"qemuvm: smoke {exc}; its VM was torn down{' and the JUnit file written' if junit else ''}",
              file=sys.stderr)
        return 128 + exc.signum
    if json_:
        print_json(result.to_json())
    return result.exit_code
