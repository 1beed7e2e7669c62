"""Who may use `qemuvm web`: one access token, shown once in the URL the server prints (pure decisions, and the
token file).

A request is allowed with `Authorization: Bearer TOKEN`, or with the cookie the server sets after the first
`?token=TOKEN` (HttpOnly, SameSite=Strict), or with `?token=` itself. A request that changes something (POST) or
opens a websocket, and that is allowed by the cookie alone, must also come from the page's own origin: that,
with SameSite=Strict, is the CSRF (and cross-site websocket) defence. Everything else is 401 and says nothing more.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from qemuvm.errors import UsageError

COOKIE = "qemuvm_web"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    set_cookie: bool = False  # the token came in the query: keep it in the cookie and drop it from the URL
    why: str = ""


def _same(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def decide(token: str, *, method: str, authorization: str | None, cookie: str | None, query_token: str | None,
           origin: str | None, own_origin: str, websocket: bool = False) -> Decision:
    """Whether one request may go on (the middleware's whole logic, table-tested)."""
    bearer = authorization[7:] if authorization and authorization.lower().startswith("bearer ") else None
    if _same(bearer, token):
        return Decision(True)
    mutating = method not in ("GET", "HEAD") or websocket
    if _same(query_token, token):
        if mutating and origin is not None and origin != own_origin:
            return Decision(False, why="another origin")
        return Decision(True, set_cookie=method == "GET" and not websocket)
    if _same(cookie, token):
        if mutating and origin != own_origin:  # a browser always sends Origin on POST and websocket requests
            return Decision(False, why="the request does not come from this page's origin")
        return Decision(True)
    return Decision(False, why="no valid token")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_token(token_file: str | None) -> str:
    """A new random token, or the one in `token_file` (made 0600 with a new token when it does not exist)."""
    if token_file is None:
        return secrets.token_urlsafe(24)
    path = Path(token_file)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            raise UsageError(f"--token-file: {path} can be read by other users; chmod 600 it") from None
        token = path.read_text().strip()
        if len(token) < 16:
            raise UsageError(f"--token-file: {path} holds no token of at least 16 characters") from None
        return token
    except OSError as exc:
        raise UsageError(f"--token-file: cannot create {path}: {exc.strerror}") from None
    token = secrets.token_urlsafe(24)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token
