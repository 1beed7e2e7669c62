"""`qemuvm smoke PROFILE`: boot a throwaway instance, check it, always tear it down, report.

Steps, each a JUnit test case: `boot` (the instance starts), `ready` (the profile's ready block),
then one per `smoke.checks` entry (an SSH command that must exit 0 and match `expect`, or a serial
regex). `smoke.timeout` bounds the whole run; a step that never started is reported as skipped.
Nothing the profile points at is written: every disk runs on an overlay (or, for a disk the profile
would create, a scratch file), and the instance is removed at the end unless --keep.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemuvm.errors import QemuvmError, UsageError
from qemuvm.paths import InstancePaths
from qemuvm.profile.model import Profile, SmokeCheck
from qemuvm.runtime import instance
from qemuvm.workflow import junit
from qemuvm.workflow.junit import Case

# Instance files copied into the artifacts folder when a run fails (missing ones are skipped).
ARTIFACT_FILES = ("serial.log", "qemu.log", "events.jsonl", "argv.json", "run.sh", "profile.yaml",
                  "state.json", "supervisor.log")
REDACTED_FILES = ("profile.yaml", "argv.json", "run.sh")
# Keys whose values `--redact` replaces: passwords, secrets, tokens, keys (cloud-init's chpasswd included).
_SECRET_KEY = re.compile(r"^(\s*-?\s*[\w.-]*(?:pass(?:wd|word)?|secret|token|api[_-]?key|private[_-]?key|"
                         r"chpasswd|hashed_passwd)[\w.-]*\s*:\s*)(?!\s*$)(.+)$", re.IGNORECASE | re.MULTILINE)


def redact(text: str) -> str:
    """Secret-looking YAML values blanked (`password: hunter2` -> `password: <redacted>`). Pure."""
    return _SECRET_KEY.sub(lambda m: m[1] + "<redacted>", text)


SERIAL_POLL = 0.1  # seconds between reads of serial.log (the contract: no slower than 100 ms)
SSH_RETRY = 0.25  # seconds between SSH attempts while the guest's sshd is not up yet
TAIL_LINES = 30  # serial lines quoted in a failure


# -- pure pieces ---------------------------------------------------------------------------------


def instance_name(profile_name: str, token: str | None = None) -> str:
    """`<profile>-smoke-<6 hex>`: unique, and still a valid instance name (at most 63 characters)."""
    return f"{profile_name[:49]}-smoke-{token or secrets.token_hex(3)}"


def isolation_overrides(profile: Profile, scratch: Path) -> list[str]:
    """`--set` overrides that keep the run from writing any image the profile names.

    Existing disks become ephemeral (a qcow2 overlay in the instance folder); a disk the profile
    would create (`size`, file missing) is created in `scratch` instead. cdroms are read-only already.
    """
    sets = []
    for index, disk in enumerate(profile.disks):
        if disk.is_cdrom or disk.ephemeral:
            continue
        if disk.size is not None and not Path(disk.path).exists():
            sets.append(f"disks.{index}.file={scratch / f'disk{index}.{disk.image_format}'}")
            sets.append(f"disks.{index}.format={disk.image_format}")
        else:
            sets += [f"disks.{index}.size=null", f"disks.{index}.ephemeral=true"]
    return sets


def search(pattern: str, text: str) -> re.Match[str] | None:
    """Regexes match anywhere; `^` and `$` anchor at line boundaries (command output has many lines)."""
    return re.search(pattern, text, re.MULTILINE)


def evaluate_ssh(check: SmokeCheck, returncode: int, stdout: str, stderr: str, seconds: float) -> Case:
    """An SSH (or agent) check passes when the command exits 0 and its stdout matches `expect` (if any)."""
    output = stdout + (f"\n--- stderr ---\n{stderr}" if stderr.strip() else "")
    if returncode != 0:
        reason = "ssh failed" if returncode == 255 and check.ssh is not None else \
            ("timed out" if returncode == 124 else "command failed")
        return Case(check.name, "failed", seconds, f"{reason}: `{check.command}` exited with status {returncode}",
                    output)
    if check.expect is not None and not search(check.expect, stdout):
        return Case(check.name, "failed", seconds, f"output of `{check.command}` does not match {check.expect!r}",
                    output)
    return Case(check.name, "passed", seconds, output=stdout)


def evaluate_serial(check: SmokeCheck, serial_text: str, seconds: float, finished: bool) -> Case | None:
    """A serial check passes once its regex appears in the log; None while it may still appear."""
    assert check.serial is not None
    found = search(check.serial, serial_text)
    if found:
        return Case(check.name, "passed", seconds, output=found.group(0))
    if not finished:
        return None
    return Case(check.name, "failed", seconds, f"{check.serial!r} did not appear on the serial console",
                last_lines(serial_text))


# A smoke step's kind is the field it sets (validation allows exactly one), and each kind has its runner.
STEP_KINDS = {"ssh": "_ssh_check", "agent": "_agent_check", "send": "_typing_step", "keys": "_typing_step",
              "serial": "_serial_check"}


def check_kind(check: SmokeCheck) -> str:
    """ssh | agent | send | keys | serial: the one of those fields `check` sets."""
    return next(kind for kind in STEP_KINDS if getattr(check, kind) is not None)


def last_lines(text: str, count: int = TAIL_LINES) -> str:
    lines = text.splitlines()[-count:]
    return "\n".join(lines)


def skipped(names: list[str], why: str) -> list[Case]:
    return [Case(name, "skipped", message=why) for name in names]


def step_names(profile: Profile) -> list[str]:
    return ["boot", "ready", *(check.name for check in profile.smoke.checks)]


# -- progress ------------------------------------------------------------------------------------


class Progress:
    """Step lines: a rich spinner on a terminal; `[12:00:01] boot: ok (2.1s)` lines otherwise (CI logs)."""

    def __init__(self, stream=None, tty: bool | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.quiet = quiet
        self._console = None
        if self.tty and not quiet:
            from rich.console import Console

            self._console = Console(file=self.stream, highlight=False)

    @contextlib.contextmanager
    def step(self, label: str, announce: bool = True) -> Iterator[None]:
        """Show `label` while the step runs: a spinner on a TTY; a plain line (if `announce`) otherwise."""
        if self.quiet:
            yield
        elif self._console is not None:
            with self._console.status(label):
                yield
        else:
            if announce:
                self.line(label)
            yield

    def result(self, case: Case) -> None:
        mark = {"passed": "ok", "failed": "FAILED", "skipped": "skipped"}[case.status]
        detail = f" ({case.seconds:.1f}s)" if case.status != "skipped" else ""
        why = f": {case.message}" if case.message and not case.ok else ""
        if self._console is not None and not self.quiet:
            style = {"passed": "green", "failed": "bold red", "skipped": "yellow"}[case.status]
            self._console.print(f"[{style}]{mark:>7}[/] {case.name}{detail}{why}", markup=True)
        else:
            self.line(f"{case.name}: {mark}{detail}{why}")

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self._console is not None:
            self._console.print(text, markup=False)
        else:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.stream, flush=True)


# -- the run -------------------------------------------------------------------------------------


@dataclass
class SmokeResult:
    instance: str
    suite: str
    cases: list[Case] = field(default_factory=list)
    artifacts: Path | None = None
    junit: Path | None = None
    kept: bool = False
    usage_error: bool = False  # the run could not start for a reason the user must fix (a missing file)

    @property
    def ok(self) -> bool:
        return bool(self.cases) and all(case.ok for case in self.cases)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else (2 if self.usage_error else 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "instance": self.instance, "ok": self.ok,
            "artifacts": str(self.artifacts) if self.artifacts else None,
            "junit": str(self.junit) if self.junit else None, "kept": self.kept,
            "cases": [{"name": c.name, "status": c.status, "seconds": round(c.seconds, 3), "message": c.message}
                      for c in self.cases],
        }


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP -- what a CI job's timeout or a closed terminal sends -- during a run: handled as Ctrl-C
    is (the VM torn down, the JUnit file and artifacts written), then the CLI exits 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


_ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[list[int]]:
    """SIGTERM and SIGHUP raise Interrupted in the run (the main thread only: handlers live there). Yields the
    signals that arrived, so that teardown can hold them (see _holding_signals)."""
    arrived: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield arrived
        return

    def interrupt(signum: int, _frame: Any) -> None:
        arrived.append(signum)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in _ENDING_SIGNALS}
    try:
        yield arrived
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _holding_signals(arrived: list[int]) -> Iterator[None]:
    """Teardown, artifacts and the JUnit file must finish: SIGTERM, SIGHUP and SIGINT that arrive meanwhile are
    noted (the run then ends as interrupted), not acted on. Each step there is bounded (down --force)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda signum, _frame: arrived.append(signum))
                for sig in (*_ENDING_SIGNALS, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Clock:
    """The run's deadline (smoke.timeout bounds everything, boot included)."""

    def __init__(self, seconds: float) -> None:
        self.total = seconds
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


def run(profile_file: str, *, sets: list[str] | tuple[str, ...] = (), junit_file: str | Path | None = None,
        artifacts: str | Path | None = None, keep: bool = False, timeout: float | None = None,
        progress: Progress | None = None, token: str | None = None, redact: bool = False,
        home: str | Path | None = None, warm: bool = False) -> SmokeResult:
    """Smoke-test `profile_file`. An invalid profile raises ProfileError (exit 2) before anything starts.

    warm: boot a clone of the profile's template (`up --warm`): the first run makes it, later runs of the same
    image start in a fraction of a boot. Its serial log begins with the template's boot, so serial checks see it.
    """
    from qemuvm.profile.validate import load_and_validate

    progress = progress or Progress()
    profile = load_and_validate(profile_file, list(sets))
    name = instance_name(profile.name, token)
    result = SmokeResult(instance=name, suite=f"qemuvm.smoke.{profile.name}")
    clock = _Clock(timeout if timeout is not None else profile.smoke.timeout)
    scratch = Path(tempfile.mkdtemp(prefix="qvsmoke", dir="/tmp"))
    runner = _Runner(profile, name, clock, progress, result, redact=redact,
                     home=Path(home) if home is not None else None, warm=warm)
    progress.line(f"smoke {profile_file}: instance {name}, timeout {clock.total:g}s")
    with _signals_interrupt() as arrived:
        try:
            runner.boot(profile_file, [*sets, *isolation_overrides(profile, scratch)])
            runner.ready()
            runner.checks()
        except _Stop:
            pass  # recorded by the step; the rest is skipped below
        except BaseException as exc:  # a signal, Ctrl-C or a bug: still record, collect and tear down
            why = str(exc) if isinstance(exc, Interrupted) else "interrupted" \
                if isinstance(exc, KeyboardInterrupt) else f"error: {type(exc).__name__}: {exc}"
            done = {case.name for case in result.cases}  # (between two steps: the next one is the one cut short)
            cut = runner.current if runner.current not in done else \
                next((step for step in step_names(profile) if step not in done), None)
            if cut is not None:
                result.cases.append(Case(cut, "failed", 0.0, why))
            raise
        finally:
            with _holding_signals(arrived):
                _finish(runner, result, profile, artifacts, keep, scratch, junit_file, profile_file, progress)
    if arrived:  # a signal came while the run was being torn down: it still ends as interrupted
        raise Interrupted(arrived[0])
    failed = [c.name for c in result.cases if c.status == "failed"]
    progress.line("smoke: passed" if result.ok else f"smoke: FAILED ({', '.join(failed) or 'no steps'})")
    return result


def _finish(runner: _Runner, result: SmokeResult, profile: Profile, artifacts: str | Path | None, keep: bool,
            scratch: Path, junit_file: str | Path | None, profile_file: str, progress: Progress) -> None:
    """Whatever ended the run: the skipped steps, the evidence, the teardown and the JUnit file."""
    name = runner.name
    names = step_names(profile)
    done = {case.name for case in result.cases}
    result.cases += skipped([n for n in names if n not in done], "not run: an earlier step failed")
    if not result.ok:
        result.artifacts = runner.collect(Path(artifacts) if artifacts else Path("qemuvm-artifacts") / name)
        progress.line(f"artifacts: {result.artifacts}")
    result.kept = keep and runner.started
    if runner.started and not keep:
        runner.teardown()
    elif result.kept:
        progress.line(f"kept instance {name} (qemuvm down {name} && qemuvm rm {name})")
    if not result.kept:
        shutil.rmtree(scratch, ignore_errors=True)
    if junit_file:
        result.junit = junit.write(junit_file, result.suite, result.cases,
                                   properties={"instance": name, "profile": str(profile_file)})


class _Runner:
    """The steps of one run, against the lifecycle API."""

    def __init__(self, profile: Profile, name: str, clock: _Clock, progress: Progress, result: SmokeResult,
                 redact: bool = False, home: Path | None = None, warm: bool = False):
        self.profile, self.name, self.clock, self.progress, self.result = profile, name, clock, progress, result
        self.redact, self.home, self.warm = redact, home, warm
        self.paths = InstancePaths.for_name(name, home)
        self.started = False
        self.current = "boot"
        self._ssh_seen = False
        self._serial_mark = 0  # serial checks look from here: the end of the log at the last send/keys step

    def _record(self, case: Case) -> bool:
        self.result.cases.append(case)
        self.progress.result(case)
        return case.ok

    def boot(self, profile_file: str, sets: list[str]) -> None:
        from qemuvm import api

        self.current = "boot"
        start = time.monotonic()
        with self.progress.step(f"boot: starting {self.name}"):
            try:
                self.started = True  # even a failed up may leave an instance folder to collect and remove
                api.up(profile_file, overrides=sets, name=self.name, wait=False, home=self.home, warm=self.warm,
                       timeout=self.clock.left())
            except Exception as exc:  # any failure to start is this step's failure
                self.result.usage_error = isinstance(exc, UsageError)
                self._record(Case("boot", "failed", time.monotonic() - start, _one_line(exc), self._serial_tail()))
                raise _Stop from None
        self._record(Case("boot", "passed", time.monotonic() - start))

    def ready(self) -> None:
        """The profile's ready block; without one, SSH when a check needs it, else the VM running is ready."""
        from qemuvm.control import wait

        self.current = "ready"
        start = time.monotonic()
        conditions = wait.ready_conditions(self.paths, self.profile.ready, serial_offset=0)
        if self.profile.ready is None and any(check.ssh is not None for check in self.profile.smoke.checks):
            conditions = [wait.ssh_condition(self.paths)]
        described = ", ".join(c.description for c in conditions) or "running"
        with self.progress.step(f"ready: waiting for {described}"):
            try:
                # The profile's ready.timeout bounds this step as it bounds `up`; smoke.timeout the whole run.
                limit = self.profile.ready.timeout if self.profile.ready is not None else self.clock.left()
                wait.wait_for(self.paths, conditions, min(self.clock.left(), limit))
            except Exception as exc:
                # A WaitFailed's sentence without its serial tail: the tail goes to the output instead.
                message = exc.summary if isinstance(exc, wait.WaitFailed) else str(exc)
                self._record(Case("ready", "failed", time.monotonic() - start, _one_line(Exception(message)),
                                  self._serial_tail()))
                raise _Stop from None
        self._record(Case("ready", "passed", time.monotonic() - start, output=described))

    def checks(self) -> None:
        for check in self.profile.smoke.checks:
            self.current = check.name
            with self.progress.step(f"{check.name}: running", announce=False):
                case = getattr(self, STEP_KINDS[check_kind(check)])(check)
            self._record(case)

    def _ssh_check(self, check: SmokeCheck) -> Case:
        from qemuvm.control import ssh

        start = time.monotonic()
        while True:
            done = ssh.run(self.name, check.ssh or "", timeout=max(self.clock.left(), 0.1), home=self.home)
            # Until a first connection succeeds, 255 means "sshd is not up yet" (ready may be serial only).
            if done.returncode != 255 or self._ssh_seen or self.clock.left() <= SSH_RETRY or not self._alive():
                break
            time.sleep(SSH_RETRY)
        self._ssh_seen = self._ssh_seen or done.returncode != 255
        return evaluate_ssh(check, done.returncode, done.stdout, done.stderr, time.monotonic() - start)

    def _agent_check(self, check: SmokeCheck) -> Case:
        """`sh -c COMMAND` through the guest agent, once it answers (ready may not have waited for it)."""
        from qemuvm.control import agent, wait

        start = time.monotonic()
        try:
            wait.wait_for(self.paths, [wait.agent_condition(self.paths)], max(self.clock.left(), 0.1))
            with agent.Agent(self.paths) as session:
                done = agent.exec_command(session, ["sh", "-c", check.agent or ""],
                                          timeout=max(self.clock.left(), 0.1))
        except agent.AgentTimeout as exc:
            return Case(check.name, "failed", time.monotonic() - start, f"timed out: {exc}")
        except QemuvmError as exc:  # the check fails with the sentence; the run goes on
            return Case(check.name, "failed", time.monotonic() - start, _one_line(exc))
        return evaluate_ssh(check, done.exit_code, done.stdout.decode(errors="replace"),
                            done.stderr.decode(errors="replace"), time.monotonic() - start)

    def _typing_step(self, check: SmokeCheck) -> Case:
        """send: text on the serial console; keys: combos on the keyboard. A serial check after it looks only at
        what came after (an expect script: send, expect, send, ...)."""
        from qemuvm import api

        start = time.monotonic()
        self._serial_mark = len(_read(self.paths.serial_log))
        try:
            if check.send is not None:
                sent = f"{api.send(self.name, check.send, home=self.home)} bytes on the serial console"
            else:
                sent = f"{api.sendkey(self.name, check.keys or [], home=self.home)} key presses"
        except QemuvmError as exc:
            return Case(check.name, "failed", time.monotonic() - start, _one_line(exc))
        return Case(check.name, "passed", time.monotonic() - start, output=sent)

    def _serial_check(self, check: SmokeCheck) -> Case:
        start = time.monotonic()
        until = start + check.timeout if check.timeout is not None else None
        while True:
            finished = self.clock.left() <= 0 or not self._alive() or (until is not None and time.monotonic() > until)
            text = _read(self.paths.serial_log)[self._serial_mark:]
            case = evaluate_serial(check, text, time.monotonic() - start, finished)
            if case is not None:
                return case
            time.sleep(SERIAL_POLL)

    def _alive(self) -> bool:
        from qemuvm.runtime import instance

        state = instance.read_state(self.paths)
        return state is not None and instance.is_active(state) and state.state not in (instance.STOPPED,
                                                                                        instance.CRASHED)

    def _serial_tail(self) -> str:
        return last_lines(_read(self.paths.serial_log))

    def collect(self, dest: Path) -> Path:
        """Copy the evidence (logs, argv, status, a screenshot when there is a display) to `dest`."""
        from qemuvm import api

        # The evidence is as private as the instance it comes from (0700 folder, 0600 files): profile.yaml
        # holds cloud-init user data, passwords included. `--redact` also blanks secret-looking values.
        instance.create_dir(dest)
        for file in ARTIFACT_FILES:
            with contextlib.suppress(OSError):
                data = (self.paths.root / file).read_bytes()
                if self.redact and file in REDACTED_FILES:
                    data = redact(data.decode(errors="replace")).encode()
                instance.write_private_atomic(dest / file, data)
        with contextlib.suppress(Exception):
            shown = json.dumps(api.status(self.name, home=self.home), indent=2, default=str)
            instance.write_private_atomic(dest / "status.json", shown + "\n")
        if self.profile.display is not None and self.profile.display.vga != "none" and self._alive():
            _best_effort(lambda: api.screenshot(self.name, dest / "screenshot.png", home=self.home))
        junit.write(dest / "junit.xml", self.result.suite, self.result.cases)
        return dest

    def teardown(self) -> None:
        from qemuvm import api

        with self.progress.step(f"teardown: removing {self.name}"):
            _best_effort(lambda: api.down(self.name, force=True, home=self.home))
            _best_effort(lambda: api.rm(self.name, home=self.home))


class _Stop(Exception):
    """A step failed: the remaining steps are skipped."""


def _best_effort(action: Callable[[], Any]) -> None:
    with contextlib.suppress(Exception):
        action()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
