"""A real HTTP server on loopback for the image-cache tests: serves a folder with Range requests (206), and can
be told to misbehave the ways networks do -- close the connection after some bytes, stall, answer 404, redirect.
Run in a thread of the test (`with ImageServer(folder) as server:`); every request is counted per path."""

from __future__ import annotations

import collections
import http.server
import re
import threading
from pathlib import Path
from typing import Any


class ImageServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: collections.Counter[str] = collections.Counter()
        self.ranges: list[str] = []
        self.auth: list[str] = []  # Authorization headers received
        self.cut_after: int | None = None  # close the connection after this many body bytes (once per setting)
        self.stall_after: int | None = None  # stop sending (hold the connection) after this many body bytes
        self.redirects: dict[str, str] = {}  # path -> Location
        self.no_range = False  # ignore Range: always the whole file (200)
        self.stalled = threading.Event()
        self.release = threading.Event()  # set at exit: a stalled handler ends
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                server.requests[path] += 1
                if self.headers.get("Authorization"):
                    server.auth.append(self.headers["Authorization"])
                if path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[path])
                    self.end_headers()
                    return
                file = server.root / path.lstrip("/")
                if not file.is_file():
                    self.send_error(404, "Not Found")
                    return
                size = file.stat().st_size
                start = 0
                wanted = re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))
                if wanted and not server.no_range:
                    server.ranges.append(self.headers["Range"])
                    start = int(wanted.group(1))
                    if start >= size:
                        self.send_error(416, "Range Not Satisfiable")
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(size - start))
                self.end_headers()
                self._body(file, start)

            def _body(self, file: Path, start: int) -> None:
                sent = 0
                with open(file, "rb") as source:
                    source.seek(start)
                    while chunk := source.read(64 << 10):
                        for limit, action in ((server.cut_after, "cut"), (server.stall_after, "stall")):
                            if limit is not None and sent + len(chunk) > limit:
                                chunk = chunk[:max(limit - sent, 0)]
                                self.wfile.write(chunk)
                                self.wfile.flush()
                                if action == "cut":
                                    server.cut_after = None
                                    self.close_connection = True
                                    return
                                server.stalled.set()
                                server.release.wait(60)
                                return
                        self.wfile.write(chunk)
                        sent += len(chunk)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def __enter__(self) -> ImageServer:
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def write_blob(path: Path, size: int, seed: int = 7) -> bytes:
    """A file of `size` bytes that differ with `seed` and along the file (one block repeated with a counter)."""
    block = bytes((i * 131 + seed) % 251 for i in range(1 << 16))
    data = bytearray()
    counter = 0
    while len(data) < size:
        data += counter.to_bytes(8, "little") + block[8:]
        counter += 1
    path.write_bytes(bytes(data[:size]))
    return bytes(data[:size])
