"""A VM's port on an L2 segment (`network: [{mode: segment, segment: NAME}]`), run by its supervisor as a helper:
`python -S -m qemuvm.runtime.segment LISTEN SEGMENT_DIR MEMBER`.

QEMU connects to LISTEN (`-netdev stream`: each frame after a 4-byte big-endian length). The port binds a unix
datagram socket MEMBER.sock in the segment's folder (`$QEMUVM_HOME/.segments/NAME/`, 0700) and sends each frame
from QEMU to every other member there; what the others send goes to QEMU. No switch process to share and keep
alive: the folder is the segment, each port lives and dies with its VM, and a member whose port is gone (its
socket refuses) is removed by the next sender. Frames never leave the host (unix sockets only) and no other
user can join (the folder is the owner's).

Stdlib only: it starts like the supervisor does.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import struct
import sys
import threading

MAX_FRAME = 65536 + 14  # QEMU's stream netdev sends whole Ethernet frames (no offloads: MTU-sized in practice)


def _read_exactly(conn: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _fan_out(frame: bytes, sender: socket.socket, folder: str, me: str) -> None:
    """Send one frame to every other member of the segment; drop it for a member that is full or gone."""
    with os.scandir(folder) as entries:
        peers = [entry.path for entry in entries if entry.name.endswith(".sock") and entry.name != me]
    for peer in peers:
        try:
            sender.sendto(frame, peer)
        except BlockingIOError:
            pass  # that VM is not reading fast enough: Ethernet drops too
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):  # a port that died without cleaning up
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(peer)


def serve(listen: str, folder: str, member: str) -> int:
    os.umask(0o077)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    me = f"{member}.sock"
    mine = os.path.join(folder, me)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(mine)
    port = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    port.bind(mine)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Listening before the path appears: the supervisor (helpers.start) treats the socket's existence as "up" and
    # QEMU connects right then; bound under a short private name, listening, then renamed into place.
    staging = os.path.join(os.path.dirname(listen), f".s{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staging)
    server.bind(staging)
    server.listen(1)
    os.replace(staging, listen)

    def leave(*_: object) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(mine)
        os._exit(0)

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, leave)
    qemu, _ = server.accept()
    server.close()
    write_lock = threading.Lock()

    def inbound() -> None:  # the other members -> QEMU
        while True:
            frame = port.recv(MAX_FRAME)
            with write_lock:
                try:
                    qemu.sendall(struct.pack(">I", len(frame)) + frame)
                except OSError:
                    return

    threading.Thread(target=inbound, daemon=True).start()
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # unbound: the members never answer it
    sender.setblocking(False)  # fan-out never waits for a slow member
    try:
        while True:  # QEMU -> the other members, until QEMU goes away
            header = _read_exactly(qemu, 4)
            if header is None:
                break
            frame = _read_exactly(qemu, struct.unpack(">I", header)[0])
            if frame is None:
                break
            _fan_out(frame, sender, folder, me)
    except OSError:
        pass
    leave()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m qemuvm.runtime.segment LISTEN SEGMENT_DIR MEMBER", file=sys.stderr)
        return 2
    return serve(*args)


if __name__ == "__main__":
    sys.exit(main())
