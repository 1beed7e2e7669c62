"""Typing and the agent client's pure parts: key combos, text on a US layout, serial escapes, cp's two sides, the
smoke step kinds; and the agent protocol against a stand-in agent on a socket (sync drops stale replies, a
timeout closes the session, errors carry the guest's words)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from qemuvm.control import agent, keys
from qemuvm.errors import OperationError, UsageError
from qemuvm.paths import InstancePaths
from qemuvm.profile.model import SmokeCheck


@pytest.mark.parametrize(("spec", "expected"), [
    ("ctrl-alt-delete", ["ctrl", "alt", "delete"]),
    ("Ctrl-B", ["ctrl", "b"]),
    ("enter", ["ret"]),
    ("esc", ["esc"]),
    ("shift-tab", ["shift", "tab"]),
    ("f12", ["f12"]),
    ("-", ["minus"]),
])
def test_key_combos(spec: str, expected: list[str]) -> None:
    assert keys.combo(spec) == expected


def test_an_unknown_key_is_one_sentence() -> None:
    with pytest.raises(UsageError, match="'hyper' in 'ctrl-hyper' is not a key"):
        keys.combo("ctrl-hyper")


def test_text_on_a_us_keyboard() -> None:
    assert keys.text_combos("Hi! a_b\n") == [["shift", "h"], ["i"], ["shift", "1"], ["spc"], ["a"],
                                               ["shift", "minus"], ["b"], ["ret"]]
    with pytest.raises(UsageError, match="qemuvm send"):
        keys.text_combos("é")


@pytest.mark.parametrize(("text", "expected"), [
    (r"root\n", b"root\n"),
    (r"\x03", b"\x03"),
    (r"a\tb\r\e[A", b"a\tb\r\x1b[A"),
    (r"back\\slash", b"back\\slash"),
    (r"keep \q", b"keep \\q"),
    ("é", "é".encode()),
])
def test_serial_escapes(text: str, expected: bytes) -> None:
    assert keys.unescape(text) == expected


@pytest.mark.parametrize(("source", "target", "expected"), [
    ("./f.txt", "vm:/tmp/f.txt", ("vm", "/tmp/f.txt", True)),
    ("vm:/etc/os-release", ".", ("vm", "/etc/os-release", False)),
])
def test_cp_sides(source: str, target: str, expected: tuple[str, str, bool]) -> None:
    assert agent.split_cp(source, target) == expected


@pytest.mark.parametrize(("source", "target"), [("a", "b"), ("vm:/a", "vm:/b"), ("vm:relative", "x"), (":/a", "x")])
def test_cp_needs_exactly_one_guest_side(source: str, target: str) -> None:
    with pytest.raises(UsageError, match="exactly one of"):
        agent.split_cp(source, target)


@pytest.mark.parametrize("check", [
    {"name": "x"},
    {"name": "x", "ssh": "true", "agent": "true"},
    {"name": "x", "send": "a", "serial": "b"},
    {"name": "x", "keys": ["ret"], "expect": "y"},
])
def test_a_smoke_step_is_one_kind(check: dict) -> None:
    with pytest.raises(ValidationError):
        SmokeCheck(**check)


# -- the agent protocol on a stand-in ---------------------------------------------------------------


class FakeAgent:
    """Answers like qemu-ga on a unix socket: a stale reply first (what a timed-out client left), then sync,
    then the replies `handle` gives (None: no answer)."""

    def __init__(self, path: Path, handle: Callable[[dict], dict | None]) -> None:
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen()
        self.handle = handle
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            reader = conn.makefile("rb")
            while line := reader.readline():
                message = json.loads(line.lstrip(b"\xff"))
                if message["execute"] == "guest-sync-delimited":
                    conn.sendall(b'{"return": {"pid": 1}}\n' + b"\xff" +
                                 json.dumps({"return": message["arguments"]["id"]}).encode() + b"\n")
                    continue
                reply = self.handle(message)
                if reply is not None:
                    conn.sendall(json.dumps(reply).encode() + b"\n")


def _paths(tmp_path: Path) -> InstancePaths:
    return InstancePaths(tmp_path / "vm")


def test_the_client_syncs_past_stale_replies_and_reports_the_guests_error(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    paths.root.mkdir()

    def handle(message: dict) -> dict:
        if message["execute"] == "guest-get-host-name":
            return {"return": {"host-name": "box"}}
        return {"error": {"class": "GenericError", "desc": "No such file"}}

    FakeAgent(paths.guest_agent_socket, handle)
    with agent.Agent(paths) as session:
        assert session.execute("guest-get-host-name") == {"host-name": "box"}
        with pytest.raises(agent.AgentError, match="guest-file-open failed in vm: No such file"):
            session.execute("guest-file-open", {"path": "/nope"})


def test_a_command_that_gets_no_answer_times_out_in_one_sentence(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    paths.root.mkdir()
    FakeAgent(paths.guest_agent_socket, lambda message: None)
    with agent.Agent(paths) as session:
        with pytest.raises(agent.AgentTimeout, match=r"did not answer guest-info within 0\.2 s"):
            session.execute("guest-info", timeout=0.2)
        assert session.sock is None  # closed: its late answer can never be taken for another command's


def test_no_channel_says_how_to_enable_it(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    paths.root.mkdir()
    with pytest.raises(UsageError, match="set `guest_agent: true`"):
        agent.Agent(paths).connect()
    assert not agent.available(paths)


def test_a_channel_without_an_agent_is_a_timeout(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    paths.root.mkdir()
    server = socket.socket(socket.AF_UNIX)  # QEMU's end with no qemu-ga behind it: accepts, never answers
    server.bind(str(paths.guest_agent_socket))
    server.listen()
    with pytest.raises(OperationError, match="qemu-ga is not running in the guest"):
        agent.Agent(paths, sync_timeout=0.2).connect()
    server.close()
