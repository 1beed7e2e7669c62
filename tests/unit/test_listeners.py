"""What a VM may listen on beyond loopback, as a pure decision: the table of runtime/listeners.stray."""

from __future__ import annotations

import pytest

from qemuvm.runtime.listeners import stray

FORWARD_ALL = [["0.0.0.0", 2222]]  # a forward the profile bound to every address


@pytest.mark.parametrize(("bound", "allowed", "refused"), [
    ([("127.0.0.1", 2222, "tcp"), ("::1", 5900, "tcp"), ("127.0.0.5", 9, "udp")], [], []),  # loopback: always
    ([("::ffff:127.0.0.1", 80, "tcp")], [], []),  # a v4-mapped loopback address
    ([("0.0.0.0", 2244, "tcp")], [], ["0.0.0.0:2244/tcp"]),  # hostfwd=::2244-:22 through extra_args
    ([("::", 4444, "tcp")], [], ["[::]:4444/tcp"]),
    ([("10.0.0.5", 5353, "udp")], [], ["10.0.0.5:5353/udp"]),
    ([("0.0.0.0", 2222, "tcp")], FORWARD_ALL, []),  # what the profile asked for
    ([("::", 2222, "tcp")], FORWARD_ALL, []),  # the same wildcard on the other family
    ([("0.0.0.0", 2223, "tcp")], FORWARD_ALL, ["0.0.0.0:2223/tcp"]),  # not that port
    ([("192.168.7.1", 5901, "tcp")], [["192.168.7.1", 5901]], []),  # VNC on a named address, with a password
    ([("192.168.7.2", 5901, "tcp")], [["192.168.7.1", 5901]], ["192.168.7.2:5901/tcp"]),
    ([("0.0.0.0", 1234, "tcp"), ("0.0.0.0", 1234, "tcp")], [], ["0.0.0.0:1234/tcp"]),  # said once
    ([("0.0.0.0", 1, "tcp"), ("::", 2, "udp")], None, []),  # qemu.allow_unsafe_args
])
def test_what_listens_beyond_loopback_unasked_is_refused(bound, allowed, refused) -> None:
    assert stray(bound, allowed) == refused
