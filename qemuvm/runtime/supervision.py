"""The per-VM supervisor's loop (entered from runtime/supervisor.py, `python -m qemuvm.runtime.supervisor`).

It starts QEMU (paused with -S) as its child in a new session, holds the supervisor monitor
(supervisor.sock), writes every QMP event to events.jsonl, keeps state.json current and applies the
restart policy. A QEMU that outlived an earlier supervisor is adopted when state.json proves it is ours.

Imports: stdlib, qemu.qmp, psutil and qemuvm.runtime only, so it starts fast and stays small. What
it needs from the profile comes from supervisor.json, written by `up`.
"""

from __future__ import annotations

import sys
import types

# The supervisor never speaks TLS, but asyncio and qemu.qmp import ssl, and libssl/libcrypto cost every
# supervisor ~4 MiB of RSS. asyncio treats a missing ssl as optional; qemu.qmp only names ssl.SSLContext in
# annotations, so a stub carries that one name while it loads. (Skipped when something already loaded ssl.)
if "ssl" not in sys.modules:
    sys.modules["ssl"] = None  # type: ignore[assignment]
    import asyncio

    sys.modules["ssl"] = types.ModuleType("ssl")
    sys.modules["ssl"].SSLContext = type("SSLContext", (), {})  # type: ignore[attr-defined]
    import qemu.qmp  # noqa: F401

    del sys.modules["ssl"]

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from qemu.qmp import EventListener, Message, QMPClient
from qemu.qmp.protocol import Runstate

from qemuvm.errors import UsageError
from qemuvm.paths import InstancePaths
from qemuvm.runtime import decisions, helpers, instance, intent, listeners, preflight, records, taps
from qemuvm.runtime.instance import CRASHED, PAUSED, RUNNING, SAVED, STARTING, STOPPED
from qemuvm.runtime.supervisor_base import EarlyQemu, checkpoint, log, serial_size, start_qemu

CONNECT_TIMEOUT = 30.0  # QEMU creates its monitor sockets within a second; this covers a loaded host
QMP_TIMEOUT = 10.0
EVENTS_MAX = 4 << 20  # events.jsonl: past this it becomes events.jsonl.1 (an RTC_CHANGE a second is ~100 B/s)



class BringUpRefused(Exception):
    """A step before the guest runs refused it: a tap QEMU opened could not join its network's bridge
    (runtime/taps.py), or QEMU listens where the profile does not say (runtime/listeners.py)."""


class _Recorder(EventListener):
    """Hands each event to the supervisor the moment QMP reads it (in order, nothing queued)."""

    def __init__(self, handler: Any) -> None:
        super().__init__()
        self._handler = handler

    async def put(self, event: Message) -> None:
        self._handler(event)


class Supervisor:
    def __init__(self, paths: InstancePaths, previous: records.StateView | None = None,
                 early: EarlyQemu | None = None) -> None:
        self.paths = paths
        self.previous, self.early = previous, early
        try:
            spec = records.read_launch_spec(paths)
        except UsageError as exc:
            raise SystemExit(f"qemuvm supervisor: {exc}") from None
        if spec is None:
            raise SystemExit(f"qemuvm supervisor: {paths.supervisor_config} is missing")
        self.spec = spec
        self.policy = spec.restart.policy
        self.max_retries = spec.restart.max_retries
        self.backoff = spec.restart.backoff
        self.state = records.InstanceState(name=spec.name or paths.name)
        self.unsaved = False  # the last state write failed (disk full): housekeeping retries it
        # Per QEMU run:
        self.shutdown_reason: str | None = None
        self.panicked = False
        self.ending_poweroff = False  # the supervisor itself ends a QEMU left paused at a power-off
        self.restarted = False  # started by the restart policy (not by up/start)
        self.restoring = False  # loading the LaunchSpec's saved state (until `cont`)
        self.reached_running = False  # the guest ran (RESUME seen, or `cont` answered): an exit is no start failure
        self.proc: subprocess.Popen[bytes] | None = None
        self.qemu_pid = 0
        self.qmp: QMPClient | None = None
        self.helpers = helpers.Watch(record=lambda entries: self.save(helpers=entries), log=log,
                                     qemu_runs=lambda: instance.process_if_alive(self.qemu_pid, None) is not None)

    # -- state ---------------------------------------------------------------------------------

    def save(self, **changes: Any) -> None:
        """Record the state. A write that fails (a full disk with no room even in place) is logged and retried
        by `housekeeping` until it lands: the record catches up rather than freezing."""
        for key, value in changes.items():
            setattr(self.state, key, value)
        self.state.updated_at = time.time()
        try:
            records.write_state(self.paths, self.state)
            if self.unsaved:
                log("state.json written again")
            self.unsaved = False
        except OSError as exc:
            if not self.unsaved:
                log(f"cannot write state.json ({exc.strerror}); retrying every second")
            self.unsaved = True

    async def housekeeping(self) -> None:
        """Every second: retry a state write that failed, and keep serial.log within its cap."""
        while True:
            await asyncio.sleep(1.0)
            if self.unsaved:
                self.save()
            with contextlib.suppress(OSError):
                self.rotate_serial_log()

    def rotate_serial_log(self) -> None:
        """QEMU appends to serial.log (O_APPEND) for its whole life: past the cap, keep its newest half as
        serial.log.1 and truncate serial.log in place -- QEMU's next write lands at the new end."""
        limit = self.spec.serial_log_max
        if serial_size(self.paths) <= limit:
            return
        with self.paths.serial_log.open("rb") as handle:
            handle.seek(-(limit // 2), os.SEEK_END)
            newest = handle.read(limit // 2)  # what QEMU appends before the truncate below is lost (a moment)
        instance.write_private_atomic(self.paths.serial_log.with_name("serial.log.1"), newest)
        os.truncate(self.paths.serial_log, 0)
        self.save(serial_offset=0)  # waits read the new file from its start
        log(f"serial.log passed {limit} bytes: its newest {len(newest)} bytes are in serial.log.1")

    def on_event(self, event: Message) -> None:
        name = event.get("event", "")
        stamp = event.get("timestamp", {})
        record = {"timestamp": stamp.get("seconds", 0) + stamp.get("microseconds", 0) / 1e6,
                  "event": name, "data": event.get("data", {})}
        try:
            if self.paths.events.exists() and self.paths.events.stat().st_size > EVENTS_MAX:
                os.replace(self.paths.events, self.paths.events.with_name("events.jsonl.1"))
            with self.paths.events.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as exc:  # a full disk loses the event line, never the state change below
            log(f"cannot append to events.jsonl ({exc.strerror}): {name}")
        if name == "STOP" and self.state.state == RUNNING:
            self.save(state=PAUSED)
            if self.shutdown_reason == "guest-shutdown" and "-no-shutdown" not in self.spec.argv:
                asyncio.get_running_loop().create_task(self._end_left_paused())
        elif name == "RESUME":
            # The guest runs from here, whether or not `cont`'s answer arrives: QEMU killed in between (up has
            # already seen this state and returned) is a crash for the restart policy, not a failed start.
            self.reached_running = True
            self.save(state=RUNNING)
            checkpoint("on-resume")
        elif name == "RESET":
            # A new boot: `wait --serial` (and anything else reading serial_offset) starts from here, not from
            # the previous boot's output; `reboot` returns once this is recorded.
            self.save(resets=self.state.resets + 1, serial_offset=serial_size(self.paths))
            self.shutdown_reason = None  # a power-off before it (reboot's ACPI way, -no-shutdown) is over
        elif name == "SHUTDOWN" and not self.ending_poweroff:  # (the quit that ends a power-off is not news)
            self.shutdown_reason = record["data"].get("reason")
        elif name == "GUEST_PANICKED":
            log(f"guest panicked: {record['data']}")
            self.panicked = True
            # The guest is dead; like libvirt's on_crash=destroy, end QEMU so the policy can act.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.qemu_pid, signal.SIGKILL)

    async def _end_left_paused(self) -> None:
        """Paused at the guest's power-off, though the profile has QEMU end then: unless a live `reboot` holds it
        there (it resets and continues it), a killed reboot left its set-action behind. End QEMU as the
        power-off would have. Asked of QEMU now, not of the event: a reboot may have continued it meanwhile."""
        with contextlib.suppress(Exception):  # QEMU gone meanwhile: its exit is recorded anyway
            if (await self.execute("query-status"))["status"] != "shutdown" \
                    or intent.reboot_in_progress(self.paths, self.qemu_pid):
                return
            log("paused at the guest's power-off with no reboot under way: ending QEMU")
            self.ending_poweroff = True
            await self.execute("set-action", {"shutdown": "poweroff"})
            await self.execute("quit")

    # -- QEMU ------------------------------------------------------------------------------------

    def spawn(self) -> None:
        """QEMU, compiled with -S by `up`: paused until our monitor listens, no event lost. The first one may
        already run: the entry started it before asyncio loaded (runtime/supervisor.py)."""
        if self.early is not None:
            self.proc, argv, serial_offset = self.early.proc, self.early.argv, self.early.serial_offset
            self.early = None
            self.qemu_pid = self.proc.pid
        else:
            self.proc, argv, serial_offset = start_qemu(self.paths, self.spec, self.restarted)
            self.qemu_pid = self.proc.pid
            checkpoint("after-exec")  # QEMU runs, nothing recorded it yet: its pidfile is the only proof
        start_time = instance.process_if_alive(self.qemu_pid, None)
        self.save(state=STARTING, qemu_pid=self.qemu_pid, qemu_cmdline=argv, serial_offset=serial_offset,
                  qemu_start_time=start_time.create_time() if start_time else None, accel=None, qmp_status=None)
        log(f"started QEMU pid {self.qemu_pid}")

    async def connect(self, exited: asyncio.Future[None], deadline: float) -> QMPClient | None:
        """Connect to the supervisor monitor; None when QEMU exits first or the deadline passes."""
        while not exited.done() and time.monotonic() < deadline:
            client = QMPClient(f"supervisor-{self.paths.name}")
            client.register_listener(_Recorder(self.on_event))
            try:
                await asyncio.wait_for(client.connect(str(self.paths.supervisor_socket)), 5)
                return client
            except (TimeoutError, OSError, Exception):  # ConnectError wraps the cause
                with contextlib.suppress(Exception):
                    await client.disconnect()
            await asyncio.sleep(0.05)
        return None

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        assert self.qmp is not None
        return await asyncio.wait_for(self.qmp.execute(command, arguments), QMP_TIMEOUT)

    def exit_future(self) -> asyncio.Future[None]:
        """Resolves when QEMU exits (pidfd: works for a child and for an adopted process alike)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        try:
            pidfd = os.pidfd_open(self.qemu_pid)
        except ProcessLookupError:
            future.set_result(None)
            return future

        def ready() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            if not future.done():
                future.set_result(None)

        loop.add_reader(pidfd, ready)
        return future

    # -- from prelaunch to a running guest: BRING_UP's steps, in order ----------------------------------------
    # A step that refuses raises BringUpRefused: QEMU is then killed before its guest ever ran, and the exit
    # record says why (the one undo of every step: nothing of them outlives that QEMU).

    async def attach_taps(self) -> None:
        """Each tap QEMU opened joins its qemuvm network's bridge (runtime/taps.py)."""
        failure = taps.attach(self.spec.taps)
        if failure is not None:
            raise BringUpRefused(failure)

    async def check_listeners(self) -> None:
        """Nothing listens beyond loopback that the profile did not name: everything QEMU and its helpers
        listen on is bound by now (netdevs, VNC, chardevs), before the guest runs (runtime/listeners.py)."""
        refused = listeners.refusal([self.qemu_pid, *self.helpers.pids()], self.spec.listeners_allowed)
        if refused is not None:
            raise BringUpRefused(refused)

    async def set_vnc_password(self) -> None:
        """`password=on` VNC refuses everyone until a password is set: set it before the guest runs."""
        password_file = self.spec.vnc_password_file
        if password_file:
            password = preflight.read_vnc_password(password_file)  # the one reader `up` checked it with
            await self.execute("set_password", {"protocol": "vnc", "password": password})

    async def start_guest(self) -> None:
        await self.execute("cont")

    BRING_UP: tuple[tuple[str, str], ...] = (  # (step, method): taps before the listener proof, cont last
        ("taps", "attach_taps"), ("listeners", "check_listeners"), ("vnc-password", "set_vnc_password"),
        ("cont", "start_guest"))

    async def bring_up(self) -> None:
        for step, method in self.BRING_UP:
            log(f"bring-up: {step}")
            await getattr(self, method)()

    async def restore(self, state_file: Path) -> None:
        """Load a saved state into this QEMU (-incoming defer): the stream comes from an fd we pass, so no
        shell command is involved. The file goes once it is loaded: the guest's disks move on from here, and
        loading the same state again later would roll RAM back under them. A template's state stays: a clone's
        disks are new overlays on the template's frozen ones, which never move on."""
        assert self.qmp is not None
        self.restoring = True
        fd = os.open(state_file, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.qmp.send_fd_scm(fd)
            await self.execute("getfd", {"fdname": "saved-state"})
        finally:
            os.close(fd)
        await self.execute("migrate-incoming", {"uri": "fd:saved-state"})
        while (info := await self.execute("query-migrate")).get("status") != "completed":
            if info.get("status") == "failed":
                raise RuntimeError(f"loading {state_file} failed: {info.get('error-desc', 'see qemu.log')}")
            await asyncio.sleep(0.01)
        for loaded in () if self.spec.restore_keep else (state_file, self.paths.saved_info):
            with contextlib.suppress(FileNotFoundError):
                loaded.unlink()
        now = time.time()
        saved_at = self.spec.restore_saved_at
        self.state.restored_at = now
        self.state.clock_behind_s = round(now - saved_at, 1) if saved_at else None
        self.restoring = False
        log(f"restored {state_file}")

    async def run_qemu(self, adopted: bool) -> records.ExitRecord:
        """One QEMU lifetime: start (or adopt), watch until it exits; returns the last_exit record."""
        self.shutdown_reason, self.panicked, self.reached_running = None, False, adopted
        self.ending_poweroff = False
        if not adopted:
            failed = None
            if self.early is None:  # (an early QEMU passed these steps in the entry: it has no helpers)
                checkpoint("before-qemu")
                failed = self.helpers.start_all(self.spec.helpers)
                checkpoint("after-helpers")
            if failed is not None:
                reason, failure = decisions.classify(decisions.Exit(reached_running=False, restarted=self.restarted))
                return records.ExitRecord(time=time.time(), reason=reason, failure=failure, helper=failed)
            try:
                self.spawn()
            except OSError as exc:  # no binary any more, no memory, no pids: every helper goes, the record says
                self.helpers.stop_all()
                log(f"cannot start QEMU: {exc!r}")
                reason, failure = decisions.classify(decisions.Exit(reached_running=False, restarted=self.restarted))
                return records.ExitRecord(
                    time=time.time(), reason=reason, failure=failure,
                    helper=f"QEMU could not be started ({self.spec.argv[0]}: {exc.strerror or exc})")
        exited = self.exit_future()
        attach_failure: str | None = None
        self.qmp = await self.connect(exited, time.monotonic() + CONNECT_TIMEOUT)
        if self.qmp is not None:
            try:
                kvm = await self.execute("query-kvm")
                status = (await self.execute("query-status"))["status"]
                # Recorded before `cont`: its RESUME event marks the state running, and whoever sees that
                # (up's wait) must also see the accelerator and the start time.
                self.state.accel = "kvm" if kvm.get("enabled") else "tcg"
                if not adopted:
                    self.state.started_at = time.time()
                if status == "inmigrate" and self.spec.restore_from and not adopted and not self.restarted:
                    await self.restore(Path(self.spec.restore_from))
                    status = "prelaunch"  # loaded and paused (-S): from here as a fresh start
                # An adopted QEMU still in prelaunch never ran: its supervisor died between exec and `cont`.
                if status == "prelaunch" and (not adopted or not self.state.started_at):
                    self.state.started_at = time.time()
                    await self.bring_up()
                    status = "running"
                    checkpoint("after-cont")
                self.save(state=instance.qmp_state(status), qmp_status=status)
                self.reached_running = True
                log(f"QEMU {'adopted' if adopted else 'running'}: {status}, accel {self.state.accel}")
            except BringUpRefused as exc:  # the guest never ran: QEMU goes, the exit record says why
                log(str(exc))
                attach_failure = str(exc)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.qemu_pid, signal.SIGKILL)
            except Exception as exc:
                log(f"QMP setup failed: {exc!r}")
                # A QEMU that is exiting (a restore it could not load) drops the monitor a moment before its
                # exit shows: give it that moment, so that its own words (qemu.log) say why.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(exited), 2.0)
                if not exited.done() and not self.reached_running:
                    # QEMU lives, paused before its guest ever ran (a QMP timeout, a password that cannot be
                    # set): it would wait for a `cont` forever and the state would say starting. It goes, and
                    # the exit record says why, so that `up` says it. (A QEMU that died says why itself.)
                    attach_failure = (f"its supervisor could not set QEMU up ({type(exc).__name__}: "
                                      f"{instance.printable(str(exc))}), so QEMU was stopped")
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.qemu_pid, signal.SIGKILL)
        elif not exited.done():
            log("could not connect to the supervisor monitor; killing QEMU")
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.qemu_pid, signal.SIGKILL)
        await exited
        await self._drain_events()
        record = self._exit_record(self.reached_running)
        if attach_failure is not None:
            record.helper = attach_failure  # launch reports it as "failed to start: ..."
        self.helpers.stop_all()  # virtiofsd ends by itself when QEMU does; one still running gets SIGTERM
        return record

    async def _drain_events(self) -> None:
        """After QEMU exits, let QMP read up to EOF so every last event (SHUTDOWN) is recorded."""
        if self.qmp is None:
            return
        deadline = time.monotonic() + 2
        while self.qmp.runstate == Runstate.RUNNING and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.qmp.disconnect(), 2)
        self.qmp = None

    def _exit_record(self, reached_running: bool) -> records.ExitRecord:
        code: int | None = None
        if self.proc is not None:
            code = self.proc.wait()
            self.proc = None
        record = records.ExitRecord(time=time.time(), shutdown_reason=self.shutdown_reason)
        if code is not None and code < 0:
            record.signal = decisions.signal_name(-code)
        elif code is not None:
            record.exit_code = code
        record.reason, record.failure = decisions.classify(decisions.Exit(
            exit_code=record.exit_code, signal=record.signal, shutdown_reason=self.shutdown_reason,
            intended=intent.action_for(self.paths, self.qemu_pid), panicked=self.panicked,
            reached_running=reached_running, restarted=self.restarted, restoring=self.restoring))
        log(f"QEMU exited: {record}")
        return record

    # -- the loop --------------------------------------------------------------------------------

    async def wait_backoff(self, delay: float) -> bool:
        """Sleep before a restart; False when a stop request arrives meanwhile."""
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            if intent.action_for(self.paths, self.qemu_pid):
                return False
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        return not intent.action_for(self.paths, self.qemu_pid)

    async def run(self) -> int:
        previous = (self.previous if self.early is not None else instance.read_state(self.paths)) \
            or records.StateView()
        adopt = instance.proven_qemu(previous) is not None
        me = instance.process_if_alive(os.getpid(), None)
        self.state = records.InstanceState(
            name=self.spec.name or self.paths.name, state=STARTING, supervisor_pid=os.getpid(),
            supervisor_start_time=me.create_time() if me else None, policy=self.policy,
            forwards=self.spec.forwards, vnc=self.spec.vnc, ssh=self.spec.ssh, last_exit=previous.last_exit)
        if adopt:  # the same QEMU run goes on: its counters and where its boot's output starts go on too
            self.state.restarts = previous.restarts
            self.state.started_at = previous.started_at
            self.state.serial_offset = previous.serial_offset
            self.state.resets = previous.resets
            self.qemu_pid = previous.qemu_pid or 0
            self.save(qemu_pid=self.qemu_pid, qemu_start_time=previous.qemu_start_time,
                      qemu_cmdline=previous.qemu_cmdline, accel=previous.accel)
            log(f"adopting QEMU pid {self.qemu_pid}")
            self.helpers.adopt(previous.helpers)
        else:
            # Helpers of a run whose QEMU is gone (a supervisor killed before QEMU connected): ours, so ended.
            helpers.stop(previous.helpers)
            self.save()
        saver = asyncio.get_running_loop().create_task(self.housekeeping())
        while True:
            last_exit = await self.run_qemu(adopted=adopt)
            adopt = False
            failure, reason = last_exit.failure, last_exit.reason
            # After `save`, or a restore that failed: the saved state is there for the next `start`.
            final = SAVED if reason in ("save", "restore-failed") else CRASHED if failure else STOPPED
            self.restoring = False
            restarts = self.state.restarts
            delay = decisions.restart_delay(self.policy, reason, failure, restarts, self.max_retries, self.backoff)
            if decisions.gives_up(self.policy, reason, failure, restarts, self.max_retries):
                log(f"giving up after {restarts} restarts")
                last_exit.gave_up = True
            if delay is None:
                self.save(state=final, last_exit=last_exit, qmp_status=None)
                break
            self.save(state=STARTING, last_exit=last_exit, qmp_status=None, next_restart_at=time.time() + delay)
            log(f"restarting in {delay:g} s (policy {self.policy})")
            if not await self.wait_backoff(delay):
                self.save(state=STOPPED, next_restart_at=None)
                break
            self.save(restarts=self.state.restarts + 1, next_restart_at=None)
            self.restarted = True
        saver.cancel()
        if self.unsaved:  # the final record must land: a last tries before giving up
            for _ in range(10):
                self.save()
                if not self.unsaved:
                    break
                await asyncio.sleep(0.5)
        with contextlib.suppress(OSError):  # blanked, not removed: its block stays for the next stop's intent
            intent.clear(self.paths)
        log(f"supervisor exits: {self.state.state}")
        return 0


def run(paths: InstancePaths, previous: records.StateView | None, early: EarlyQemu | None) -> int:
    """The loop, until the instance stops for good: `previous` is the state read before `early` (a QEMU the entry
    started before this module was imported) or None to read it here."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)  # connect retries are expected, not errors
    return asyncio.run(Supervisor(paths, previous, early).run())
