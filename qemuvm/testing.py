"""VMs as test fixtures: a context manager and a pytest plugin (entry point `pytest11: qemuvm`).

    from qemuvm.testing import vm

    def test_kernel():
        with vm("profiles/demo.yaml", machine__memory="512M") as guest:
            assert guest.ssh("uname -r").stdout.startswith("6.")

    def test_two(qemuvm_vm):          # the fixture: start any number, all torn down at test end
        a = qemuvm_vm("a.yaml")
        b = qemuvm_vm("b.yaml", set=["machine.cpus=2"])

    def test_fast(qemuvm_vm):         # warm: the suite's first VM boots and saves a template, the rest clone it
        guest = qemuvm_vm("a.yaml", warm=True)

Overrides are profile fields as `--set` would take them: dotted keys (`**{"machine.memory": "1G"}`), or
`__` for the dots (`machine__memory="1G"`), or a `set=[...]` list of `KEY=VALUE` strings. Every VM gets
a unique instance name, waits for the profile's `ready` block, and is stopped (forced) and removed when
the block ends, whether the test passed or not. When a test fails, the guests' last serial lines are
shown with the failure (a report section for the fixture; stderr for the context manager).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from qemuvm.paths import InstancePaths

SERIAL_TAIL = 40


def overrides_to_sets(overrides: dict[str, Any], sets: Sequence[str] = ()) -> list[str]:
    """`{"machine.memory": "1G", "machine__cpus": 2}` -> `["machine.memory=\\"1G\\"", "machine.cpus=2"]`.

    Values are written as JSON, which is YAML, so strings, numbers, booleans, None, lists and mappings
    arrive typed exactly as given.
    """
    out = list(sets)
    for key, value in overrides.items():
        out.append(f"{key.replace('__', '.')}={json.dumps(value, default=str)}")
    return out


def _unique_name(profile: str | Path, sets: list[str]) -> str:
    from qemuvm.profile.validate import load_and_validate

    base = load_and_validate(str(profile), sets).name
    return f"{base[:52]}-{secrets.token_hex(3)}"


class VM:
    """A running instance, as a test sees it."""

    def __init__(self, name: str, profile: str | Path, home: Path | None = None) -> None:
        self.name = name
        self.profile = Path(profile)
        self.home = home  # None: $QEMUVM_HOME or the default; every call below passes it on
        self.paths = InstancePaths.for_name(name, home)
        self._mark = 0  # serial.log offset at the last send/keys: where expect() looks from

    def __repr__(self) -> str:
        return f"<qemuvm.testing.VM {self.name}>"

    def ssh(self, command: str | Sequence[str], *, timeout: float | None = 60, input: str | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run `command` in the guest: returncode (the remote exit status), stdout, stderr (text).

        A string is one shell command line; a list is an argv (each word quoted for the remote shell).
        `check=True` raises CalledProcessError on a nonzero exit, like subprocess.run.
        """
        from qemuvm import api

        done = api.ssh(self.name, command, timeout=timeout, input=input, home=self.home)
        if check:
            done.check_returncode()
        return done

    def exec(self, argv: Sequence[str], *, timeout: float | None = 60, env: dict[str, str] | None = None,
             input: bytes | None = None, check: bool = False):  # -> qemuvm.control.agent.ExecResult
        """Run argv in the guest through its guest agent (no network needed): `.exit_code`, `.stdout`,
        `.stderr` (bytes). Needs `guest_agent: true` and qemu-ga in the guest. `check=True` raises
        AssertionError on a nonzero exit, with the output."""
        from qemuvm import api

        result = api.exec_(self.name, argv, env=env, stdin=input, timeout=timeout, home=self.home)
        if check and result.exit_code != 0:
            raise AssertionError(f"{list(argv)} exited {result.exit_code} in {self.name}: "
                                 f"{result.stderr.decode(errors='replace')[-2000:]}")
        return result

    def qmp(self, command: str, **arguments: Any) -> Any:
        """One QMP command on the client monitor; its `return` value (`vm.qmp("query-status")["status"]`)."""
        from qemuvm import api

        return api.qmp(self.name, command, arguments or None, home=self.home)

    @property
    def serial_log(self) -> str:
        """Everything the guest wrote to its serial console so far."""
        try:
            return self.paths.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait(self, *, serial: str | None = None, ssh: bool = False, port: int | None = None,
             event: str | None = None, shutdown: bool = False, timeout: float = 60,
             from_start: bool = False) -> float:
        """Wait until every given condition holds, as `qemuvm wait` does; the seconds it took.

        `serial` and `event` count from now (say `from_start=True` to include what already happened).
        Raises qemuvm.control.wait.WaitFailed at once when QEMU exits first, or at the timeout.
        """
        from qemuvm import api

        return api.wait(self.name, serial=serial, port=port, event=event, ssh=ssh, shutdown=shutdown,
                        timeout=timeout, since="start" if from_start else "now", home=self.home)

    def wait_serial(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """Wait until `pattern` is anywhere in the serial log (including what is already there); the match."""
        self.wait(serial=pattern, timeout=timeout, from_start=True)
        found = re.search(pattern, self.serial_log, re.MULTILINE)
        assert found is not None
        return found

    def send(self, text: str) -> None:
        """Type `text` on the serial console (escapes as `qemuvm send`: \\n, \\x03, ...); a later `expect`
        looks at what the guest writes from here on."""
        from qemuvm import api

        self._mark = self.paths.serial_log.stat().st_size if self.paths.serial_log.exists() else 0
        api.send(self.name, text, home=self.home)

    def keys(self, *combos: str, text: str | None = None, delay: float = 0.05) -> None:
        """Press key combos on the VM's keyboard (`ctrl-alt-delete`, `ret`), then type `text` key by key."""
        from qemuvm import api

        self._mark = self.paths.serial_log.stat().st_size if self.paths.serial_log.exists() else 0
        api.sendkey(self.name, combos, text=text, delay=delay, home=self.home)

    def expect(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """Wait for `pattern` on the serial console after the last `send`/`keys` (an expect script); the match."""
        from qemuvm.control import wait

        mark = self._mark
        wait.wait_for(self.paths, [wait.serial_condition(self.paths, pattern, offset=mark)], timeout)
        with self.paths.serial_log.open("rb") as handle:
            handle.seek(mark)
            found = re.search(pattern, handle.read().decode(errors="replace"), re.MULTILINE)
        assert found is not None
        return found

    def status(self) -> dict[str, Any]:
        from qemuvm import api

        return api.status(self.name, home=self.home)

    def down(self, force: bool = False) -> Any:
        from qemuvm import api

        return api.down(self.name, force=force, home=self.home)

    def serial_tail(self, lines: int = SERIAL_TAIL) -> str:
        return "\n".join(self.serial_log.splitlines()[-lines:])

    def _destroy(self) -> str | None:
        """Stop and remove the VM; what went wrong, when its folder is still there afterwards (else None: a VM
        whose start failed left nothing, and nothing is wrong with its teardown)."""
        from qemuvm import api

        problems = []
        for step, action in (("down", lambda: api.down(self.name, force=True, home=self.home)),
                             ("rm", lambda: api.rm(self.name, home=self.home))):
            try:
                action()
            except Exception as exc:
                problems.append(f"{step}: {exc}")
        if not problems or not self.paths.root.exists():
            return None
        return (f"the test VM {self.name} could not be torn down ({'; '.join(problems)}); it may still run "
                "(qemuvm ls)")


@contextlib.contextmanager
def vm(profile: str | Path, *, name: str | None = None, set: Sequence[str] = (), wait: bool = True,
       home: str | Path | None = None, warm: bool = False, **overrides: Any) -> Iterator[VM]:
    """Start `profile` as a fresh instance, yield it, and always stop and remove it. `home`: the state
    folder for it (default $QEMUVM_HOME, else ~/.local/state/qemuvm).

    warm: a clone of the profile's template (`up --warm`): the first VM of a suite boots and saves it, every
    later one restores it in a fraction of a boot, each on its own new disk overlays (pristine)."""
    from qemuvm import api

    sets = overrides_to_sets(overrides, set)
    name = name or _unique_name(profile, sets)
    where = Path(home) if home is not None else None
    guest = VM(name, profile, where)
    try:
        api.up(str(profile), overrides=sets, name=name, wait=None if wait else False, home=where, warm=warm)
        yield guest
    except BaseException:
        tail = guest.serial_tail()
        if tail:
            print(f"--- qemuvm {name}: last serial lines ---\n{tail}", file=sys.stderr)
        problem = guest._destroy()
        if problem:  # said, but the error of the test itself is the one raised
            print(f"qemuvm: {problem}", file=sys.stderr)
        raise
    problem = guest._destroy()
    if problem:  # a VM that cannot be stopped is a leak in the user's suite: pytest reports a teardown error
        from qemuvm.errors import OperationError

        raise OperationError(problem)


# -- the pytest plugin ---------------------------------------------------------------------------


# pytest loads this module through the `pytest11` entry point; `vm()` alone works without pytest.
try:
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

if pytest is not None:
    _VMS = pytest.StashKey[list[VM]]()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
        """A failed test that used `qemuvm_vm` gets each guest's last serial lines as a report section."""
        outcome = yield
        report = outcome.get_result()
        if report.when == "call" and report.failed:
            for guest in item.stash.get(_VMS, []):
                report.sections.append((f"qemuvm {guest.name}: last serial lines", guest.serial_tail()))

    def _interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"interrupted by {signal.Signals(signum).name}")

    def _teardown_on_termination() -> None:
        """SIGTERM or SIGHUP (a CI job's timeout, a closed terminal) end a pytest session without its teardown,
        and every VM its tests started would run on. From the first VM on, they become what Ctrl-C is, so pytest
        tears the fixtures down. Only in the main thread, only where nobody set a handler of their own, and
        never in a session that starts no VM."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) == signal.SIG_DFL:
                signal.signal(sig, _interrupt)

    @pytest.fixture
    def qemuvm_vm(request: pytest.FixtureRequest) -> Iterator[Callable[..., VM]]:
        """A function that starts VMs (same arguments as `qemuvm.testing.vm`); all are torn down at test end,
        also when the session is ended by SIGTERM or SIGHUP."""
        _teardown_on_termination()
        started = request.node.stash.setdefault(_VMS, [])
        with contextlib.ExitStack() as stack:

            def start(profile: str | Path, **kwargs: Any) -> VM:
                guest = stack.enter_context(vm(profile, **kwargs))
                started.append(guest)
                return guest

            yield start
