"""`qemuvm CMD` imports only the module that registers CMD: the map in qemuvm/cli/__init__.py is checked against
what the modules really register, and a command's run is checked not to load the others."""

from __future__ import annotations

import json
import subprocess
import sys

import typer

from qemuvm import cli


def test_the_command_map_is_what_the_modules_register() -> None:
    root = typer.main.get_command(cli.load_commands())
    registered = {}
    for name, command in root.commands.items():
        callback = command.callback if not hasattr(command, "commands") else \
            next(iter(command.commands.values())).callback  # a group: its first subcommand
        registered[name] = callback.__module__.rsplit(".", 1)[1]
    assert registered == cli.COMMANDS
    assert list(dict.fromkeys(registered.values())) == list(cli.MODULES)  # --help keeps its order


def test_a_command_loads_only_its_own_module() -> None:
    probe = ("import json, sys\nfrom qemuvm import cli\ncli.load_commands(['--debug', 'up', 'x.yaml'])\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith('qemuvm.cli.'))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout) == ["qemuvm.cli.app", "qemuvm.cli.lifecycle", "qemuvm.cli.output"]


def test_help_and_an_unknown_command_see_every_command() -> None:
    shown = subprocess.run([sys.executable, "-m", "qemuvm", "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and all(name in shown.stdout for name in ("up", "network", "export", "top"))
    wrong = subprocess.run([sys.executable, "-m", "qemuvm", "tmeplate"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "No such command" in wrong.stderr


def test_an_up_that_fails_before_it_starts_leaves_no_prestarted_supervisor(monkeypatch) -> None:
    """`up` starts a supervisor before parsing (api.prestart); an `up` that never takes it -- a usage error,
    run in-process as a test suite or the fuzzer does -- lets it go at once, so nothing is left waiting."""
    import contextlib

    import psutil
    import pytest

    monkeypatch.setattr(sys, "argv", ["qemuvm", "up", "--no-such-option"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 2

    supervisors = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):  # gone meanwhile
            if "qemuvm.runtime.supervisor" in " ".join(child.cmdline()):
                supervisors.append(child)
    _, alive = psutil.wait_procs(supervisors, timeout=30)  # released, it exits once its imports are done
    assert alive == []


def test_a_full_disk_is_one_sentence_from_any_command(monkeypatch, capsys) -> None:
    """Whatever a command writes when the disk is full (a record, an image, a copy): one sentence, exit 1,
    naming the file where the error carries it -- never "unexpected error" (issue 30: `start` showed a raw OSError)."""
    import errno

    import pytest

    from qemuvm import api

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/var/lib/x/state.json")

    monkeypatch.setattr(api, "ls", full)
    monkeypatch.setattr(sys, "argv", ["qemuvm", "ls"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    err = capsys.readouterr().err
    assert exited.value.code == 1 and err == ("qemuvm: no space left on the device writing /var/lib/x/state.json "
                                              "(disk full or over quota); free some space and try again\n")
