"""The guest agent client against a hostile agent, without a VM: a guest controls every byte on that channel."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from qemuvm.control import agent
from qemuvm.errors import OperationError
from qemuvm.paths import InstancePaths


def test_a_line_without_an_end_is_bounded(tmp_path: Path) -> None:
    ours, guest = socket.socketpair()
    session = agent.Agent(InstancePaths(tmp_path / "vm"))
    session.sock = ours

    def flood() -> None:
        chunk = b"x" * (1 << 20)
        try:
            for _ in range((agent.MAX_LINE >> 20) + 8):
                guest.sendall(chunk)
        except OSError:
            pass  # the client closed its end: what it should do

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    with pytest.raises(OperationError, match="without ending a line"):
        session._line(time.monotonic() + 60, "a test")
    assert session.sock is None and len(session.buffer) <= agent.MAX_LINE + (1 << 20)
    guest.close()
    sender.join(10)


def test_replies_split_and_joined_anyhow_are_read_line_by_line(tmp_path: Path) -> None:
    ours, guest = socket.socketpair()
    session = agent.Agent(InstancePaths(tmp_path / "vm"))
    session.sock = ours
    guest.sendall(b'{"return": 1}\n{"ret')
    assert session._line(time.monotonic() + 5, "a test") == b'{"return": 1}'
    guest.sendall(b'urn": 2}\n\n{"return": 3}\n')
    assert session._line(time.monotonic() + 5, "a test") == b'{"return": 2}'
    assert session._line(time.monotonic() + 5, "a test") == b""
    assert session._line(time.monotonic() + 5, "a test") == b'{"return": 3}'
    guest.close()


def test_what_a_hostile_agent_answers_is_one_sentence_without_its_control_bytes(tmp_path: Path) -> None:
    ours, guest = socket.socketpair()
    session = agent.Agent(InstancePaths(tmp_path / "vm"))
    session.sock = ours
    guest.sendall(b'{"error": {"class": "GenericError", "desc": "no\\u001b]0;owned\\u0007 way"}}\n')
    with pytest.raises(agent.AgentError) as failed:
        session.execute("guest-info")
    assert "no\\x1b]0;owned\\x07 way" in str(failed.value) and "\x1b" not in str(failed.value)
    guest.sendall(b'[1, 2]\n')
    with pytest.raises(OperationError, match="not a QMP reply"):
        session.execute("guest-info")
    ours2, guest2 = socket.socketpair()
    session.sock = ours2
    guest2.sendall(b'{"error": "just a string"}\n')
    with pytest.raises(agent.AgentError, match="just a string"):
        session.execute("guest-info")
    guest.close()
    guest2.close()
