"""Commands that read profiles without running anything: render, validate, schema, doctor; and define (a
profile made an instance, prepared but not started) and dumpprofile (an instance's saved profile)."""

from __future__ import annotations

from pathlib import Path

import typer

from qemuvm.cli.app import app
from qemuvm.cli.output import info, print_json

SetOption = typer.Option(None, "--set", help="Override a field: KEY.PATH=VALUE (YAML value; repeatable).")
NameOption = typer.Option(None, "--name", help="Instance name (default: the profile's name, else its file stem).")


@app.command()
def render(
    profile: Path = typer.Argument(..., help="Profile file."),
    set_: list[str] = SetOption,
    name: str = NameOption,
    json_: bool = typer.Option(False, "--json", help="Print the argv as a JSON list."),
    explain: bool = typer.Option(False, "--explain", help="Show the profile field(s) behind each option."),
) -> None:
    """Print the QEMU command line a profile compiles to (one option per line, ready to paste)."""
    from qemuvm import api

    binary, options = api.render(profile, overrides=set_ or (), name=name, note=info)
    if json_:
        print_json([binary, *(arg for option in options for arg in option.args)])
    else:
        print(api.render_text(binary, options, explain=explain))


@app.command()
def validate(
    profiles: list[Path] = typer.Argument(..., help="Profile files."),
    set_: list[str] = SetOption,
) -> None:
    """Check profiles: exit 0 when all are valid, 2 with one line per problem otherwise."""
    import sys

    from qemuvm import api
    from qemuvm.errors import UsageError

    failed = False
    for profile in profiles:
        try:
            name = api.validate(profile, set_ or ())
        except UsageError as exc:
            failed = True
            print(exc, file=sys.stderr)
        else:
            print(f"{profile}: ok ({name})")
    if failed:
        raise typer.Exit(2)


@app.command()
def schema() -> None:
    """Print the profile's JSON Schema (also in qemuvm/profile.schema.json, for editors)."""
    from qemuvm import api

    print_json(api.schema())


@app.command()
def doctor(json_: bool = typer.Option(False, "--json", help="Print the checks as JSON.")) -> None:
    """Check this host: QEMU, KVM, firmware, qemu-img, the state folder. Exit 1 if something required is missing."""
    from qemuvm import api

    checks = api.doctor()
    if json_:
        print_json([check.as_dict() for check in checks])
    else:
        from qemuvm.cli.output import print_table

        marks = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "missing": "[red]missing[/]", "info": "info"}
        print_table(
            ["check", "", "found", "how to fix"],
            [[c.name, marks[c.status], c.detail, c.fix or ""] for c in checks],
        )
    if any(check.status == "missing" and check.required for check in checks):
        raise typer.Exit(1)


@app.command()
def define(
    profile: Path = typer.Argument(..., help="Profile file."),
    name: str = NameOption,
    set_: list[str] = SetOption,
    json_: bool = typer.Option(False, "--json", help="Print the instance's `ls` row as JSON."),
) -> None:
    """Create a stopped instance (virsh define): validated, disks created, seed written, no QEMU; boot it with
    `qemuvm start NAME`, remove it with `qemuvm rm NAME`."""
    from qemuvm import api
    from qemuvm.cli.output import info

    row = api.define(profile, name=name, overrides=set_ or (), progress=info)
    if json_:
        print_json(row)
    else:
        info(f"{row['name']} defined (stopped, in {row['dir']}); start it with: qemuvm start {row['name']}")


@app.command()
def dumpprofile(name: str = typer.Argument(..., help="Instance name.")) -> None:
    """Print an instance's saved profile: what its next start runs (virsh dumpxml)."""
    from qemuvm import api

    print(api.dumpprofile(name), end="")
