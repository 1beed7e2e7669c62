"""Suite-wide fixtures and the check that the suite leaves no QEMU, supervisor or helper (virtiofsd, passt,
dnsmasq) behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
_OURS = ("qemu-system", "qemuvm.runtime.supervisor", "qemuvm.runtime.segment", "virtiofsd", "passt", "dnsmasq")


# Processes inherit this from the session, so the check below ends only this session's processes, never
# those of another test run or a user on the same machine.
_SESSION_MARK = "QEMUVM_TEST_SESSION"


def _our_processes() -> dict[int, str]:
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if any(marker in cmdline for marker in _OURS):
            try:
                if proc.environ().get(_SESSION_MARK) != os.environ[_SESSION_MARK]:
                    continue
            except psutil.Error:
                continue
            found[proc.info["pid"]] = cmdline
    return found


def pytest_sessionstart(session: pytest.Session) -> None:
    os.environ[_SESSION_MARK] = f"{os.getpid()}-{os.urandom(4).hex()}"
    session.config._qemuvm_before = _our_processes()  # type: ignore[attr-defined]
    session.config._qemuvm_host_before = _host_network()  # type: ignore[attr-defined]


def _host_network() -> set[str]:
    """qemuvm's bridges and nftables tables in the host's own network namespace (tests make theirs in
    namespaces of their own: one here is a test that reached the host)."""
    import shutil
    import subprocess

    found = {f"bridge {name}" for name in os.listdir("/sys/class/net") if name.startswith("qvbr-")}
    if shutil.which("nft") and os.geteuid() == 0:
        tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
        found |= {f"nft {line.split()[-1]}" for line in tables.splitlines() if line.split()[-1].startswith("qemuvm-")}
    return found


def _host_network_left(before: set[str]) -> dict[str, str]:
    """What a test made in the host's namespace during this session: reported, and removed."""
    import subprocess

    left = {}
    for item in sorted(_host_network() - before):
        kind, name = item.split(" ", 1)
        argv = ["ip", "link", "del", name] if kind == "bridge" else ["nft", "delete", "table", "ip", name]
        subprocess.run(argv, capture_output=True, check=False)
        left[item] = "made in the host's own network namespace by a test (removed now)"
    return left


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with a test marked slow (minutes of TCG boots) go first: parallel workers take whole files in
    collection order, so the longest start early and the run does not end on one worker finishing a Debian
    boot alone. Within a file, and among the rest, the order stays as collected."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a test left a QEMU or supervisor running (and end those processes)."""
    before = getattr(session.config, "_qemuvm_before", {})
    left = {pid: cmd for pid, cmd in _our_processes().items() if pid not in before and pid != os.getpid()}
    left.update(_namespaces_left())
    left.update(_host_network_left(getattr(session.config, "_qemuvm_host_before", set())))
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"  {pid if isinstance(pid, str) else f'pid {pid}'}: {cmd[:160]}" for pid, cmd in left.items()]
    message = "left behind by the tests:\n" + "\n".join(lines)
    if reporter:
        reporter.write_line(message, red=True)
    for pid in left:
        with contextlib.suppress(psutil.Error, TypeError, ValueError):
            psutil.Process(pid).kill()
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _namespaces_left() -> dict[str, str]:
    """Network namespaces a test made and did not remove (tests/integration/netns.py): reported, and removed."""
    import shutil
    import subprocess

    if shutil.which("ip") is None or os.geteuid() != 0:
        return {}
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    mine = "qvn" + hashlib.sha256(os.environ.get(_SESSION_MARK, "").encode()).hexdigest()[:4]  # netns.prefix()
    names = [line.split()[0] for line in listed.splitlines() if line.startswith(mine)]
    for name in names:
        subprocess.run(["ip", "netns", "del", name], check=False)
    return {f"netns {name}": "a network namespace left by a test (removed now)" for name in names}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report carries its VMs' evidence (state.json, supervisor.log, qemu.log tails): a
    failure seen once in CI can be read there, not only guessed at."""
    outcome = yield
    report = outcome.get_result()
    home = os.environ.get("QEMUVM_HOME")
    if report.when != "call" or not report.failed or not home or not Path(home).is_dir():
        return
    for folder in sorted(Path(home).iterdir()):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            state = json.loads((folder / "state.json").read_text())
            state.pop("qemu_cmdline", None)
            report.sections.append((f"qemuvm {folder.name}/state.json", json.dumps(state, sort_keys=True)))
        for name, lines in (("supervisor.log", 30), ("qemu.log", 15)):
            with contextlib.suppress(OSError):
                text = (folder / name).read_text(errors="replace").strip().splitlines()[-lines:]
                report.sections.append((f"qemuvm {folder.name}/{name}", "\n".join(text)))


@pytest.fixture(autouse=True)
def _network_definitions(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test writes the host's network definitions (/var/lib/qemuvm/networks) or its image cache
    (~/.cache/qemuvm/images): each gets folders of its own."""
    folder = Path(tempfile.mkdtemp(prefix="qd", dir="/tmp"))
    monkeypatch.setenv("QEMUVM_NETWORK_DEFS", str(folder / "defs"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder / "cache"))
    monkeypatch.delenv("QEMUVM_IMAGE_MIRROR", raising=False)
    yield
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def qemuvm_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private, short QEMUVM_HOME (unix socket paths are limited to 107 bytes)."""
    home = Path(tempfile.mkdtemp(prefix="qv", dir="/tmp"))
    monkeypatch.setenv("QEMUVM_HOME", str(home))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary folder for sockets and scratch files."""
    path = Path(tempfile.mkdtemp(prefix="qt", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
