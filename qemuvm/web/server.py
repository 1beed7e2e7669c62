"""The `qemuvm web` application (aiohttp): pages, the JSON API over qemuvm's Python API, the VNC and serial
websockets, and /metrics.

Routes (every one behind the token, auth.py):
  GET  /                              the instance list (static/index.html; it polls /api/instances)
  GET  /api/instances                 what `qemuvm ls --json` prints
  POST /api/instances/NAME/ACTION     start | down | pause | resume | reboot | reset | rm | screenshot (a PNG)
  GET  /console/NAME                  noVNC, connected to the websocket /vnc/NAME
  GET  /serial/NAME                   xterm.js; the same path as a websocket is the serial console
  GET  /metrics                       Prometheus text format, OpenMetrics when the Accept header asks for it
Blocking API calls run in worker threads; the event loop only relays bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from qemuvm import api
from qemuvm.api import consoles
from qemuvm.errors import NoSuchInstance, OperationError, QemuvmError, UsageError
from qemuvm.web import auth, metrics, rfb

STATIC = Path(__file__).resolve().parent / "static"
HEADERS = {  # pages only from here: no framing, no sniffing, scripts and sockets from this origin only
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
                               "connect-src 'self'; frame-ancestors 'none'",
}
HOME: web.AppKey[Path | None] = web.AppKey("home", Path)
SAMPLER: web.AppKey[Any] = web.AppKey("sampler", object)


# ACTION -> the API call behind it (the CLI's verbs, with the CLI's defaults); screenshot answers with the PNG.
ACTIONS: dict[str, Callable[[str, Path | None], Any]] = {
    "start": lambda name, home: api.start(name, wait=False, home=home),
    "down": lambda name, home: api.down(name, home=home),
    "pause": lambda name, home: api.pause(name, home=home),
    "resume": lambda name, home: api.resume(name, home=home),
    "reboot": lambda name, home: api.reboot(name, home=home),
    "reset": lambda name, home: api.reset(name, home=home),
    "rm": lambda name, home: api.rm(name, home=home),
}


def make_app(token: str, *, home: Path | None = None, tls: bool = False) -> web.Application:
    app = web.Application(middlewares=[_guard(token, tls)], client_max_size=1 << 16)
    app[HOME] = home
    from qemuvm.api.monitoring import Sampler

    app[SAMPLER] = Sampler(home)
    app.router.add_get("/", _page("index.html"))
    app.router.add_get("/console/{name}", _page("console.html"))
    app.router.add_get("/serial/{name}", _serial)
    app.router.add_get("/vnc/{name}", _vnc)
    app.router.add_get("/api/instances", _instances)
    app.router.add_post("/api/instances/{name}/{action}", _act)
    app.router.add_get("/metrics", _metrics)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    return app


def _guard(token: str, tls: bool) -> Any:
    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        decision = auth.decide(
            token, method=request.method, authorization=request.headers.get("Authorization"),
            cookie=request.cookies.get(auth.COOKIE), query_token=request.query.get("token"),
            origin=request.headers.get("Origin"), own_origin=f"{request.scheme}://{request.host}",
            websocket=_is_websocket(request))
        if not decision.allowed:
            return web.Response(status=401, text="401: qemuvm web needs its access token (the URL it printed)\n",
                                headers={"WWW-Authenticate": "Bearer", **HEADERS})
        if decision.set_cookie:  # keep the token out of the address bar and the history from here on
            query = {k: v for k, v in request.query.items() if k != "token"}
            response: web.StreamResponse = web.Response(status=302, headers={
                "Location": str(request.rel_url.with_query(query))})
            response.set_cookie(auth.COOKIE, token, httponly=True, samesite="Strict", secure=tls, path="/")
        else:
            response = await handler(request)
        if not response.prepared:
            response.headers.update(HEADERS)
        return response

    return guard


def _is_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def _page(file: str) -> Any:
    async def page(_request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / file, headers={"Cache-Control": "no-store"})

    return page


def _error(exc: QemuvmError) -> web.Response:
    status = 404 if isinstance(exc, NoSuchInstance) else 400 if isinstance(exc, UsageError) else 409
    return web.json_response({"error": str(exc)}, status=status)


async def _instances(request: web.Request) -> web.Response:
    rows = await asyncio.to_thread(api.ls, request.app[HOME])
    return web.Response(text=json.dumps(rows, default=str), content_type="application/json",
                        headers={"Cache-Control": "no-store"})


async def _act(request: web.Request) -> web.StreamResponse:
    name, action = request.match_info["name"], request.match_info["action"]
    home = request.app[HOME]
    try:
        if action == "screenshot":
            return web.Response(body=await asyncio.to_thread(_screenshot, name, home), content_type="image/png")
        call = ACTIONS.get(action)
        if call is None:
            return web.json_response({"error": f"unknown action {action!r}; allowed: "
                                      f"{', '.join([*ACTIONS, 'screenshot'])}"}, status=404)
        result = await asyncio.to_thread(call, name, home)
    except QemuvmError as exc:
        return _error(exc)
    return web.Response(text=json.dumps({"name": name, "action": action, "result": result}, default=str),
                        content_type="application/json")


def _screenshot(name: str, home: Path | None) -> bytes:
    with tempfile.TemporaryDirectory(prefix="qvweb") as folder:
        return api.screenshot(name, Path(folder) / "screen.png", home=home).read_bytes()


async def _metrics(request: web.Request) -> web.Response:
    sampler = request.app[SAMPLER]
    rows = await asyncio.to_thread(sampler.sample)  # asyncio.run inside: off the event loop
    body, content_type = metrics.exposition(rows, request.headers.get("Accept", ""))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def _vnc(request: web.Request) -> web.StreamResponse:
    """noVNC's websocket: the proxy logs in to the VM's VNC server itself (rfb.py), then relays."""
    name = request.match_info["name"]
    try:
        access = await asyncio.to_thread(consoles.vnc_access, name, home=request.app[HOME])
        reader, writer = await rfb.open_vnc(access.endpoint)
    except QemuvmError as exc:
        return _error(exc)
    try:
        await rfb.login(reader, writer, access.password)
    except OperationError as exc:
        writer.close()
        return _error(exc)
    ws = web.WebSocketResponse(protocols=("binary",), max_msg_size=1 << 20)
    await ws.prepare(request)
    client = rfb.Buffered(lambda: _next_bytes(ws))
    try:
        await rfb.greet_browser(client, ws.send_bytes)
        writer.write(client.rest())
        await _relay(ws, reader, writer)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
        await ws.close()
    return ws


async def _next_bytes(ws: web.WebSocketResponse) -> bytes | None:
    message = await ws.receive()
    if message.type == WSMsgType.BINARY:
        return message.data
    if message.type == WSMsgType.TEXT:
        return message.data.encode()
    return None


async def _relay(ws: web.WebSocketResponse, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Bytes both ways until either side closes."""

    async def upstream() -> None:
        while (data := await _next_bytes(ws)) is not None:
            writer.write(data)
            await writer.drain()

    async def downstream() -> None:
        while data := await reader.read(1 << 16):
            await ws.send_bytes(data)

    tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
    _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await task


async def _serial(request: web.Request) -> web.StreamResponse:
    """The xterm.js page, or (as a websocket) the serial console under the console lock."""
    if not _is_websocket(request):
        return await _page("serial.html")(request)
    name = request.match_info["name"]
    with contextlib.ExitStack() as hold:
        try:
            access = await asyncio.to_thread(consoles.serial_access, name, home=request.app[HOME])
            from qemuvm.control.console import exclusive

            hold.enter_context(exclusive(access.lock, name))  # non-blocking: busy is an error at once
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(access.socket)), 10)
        except QemuvmError as exc:
            return _error(exc)
        except (OSError, TimeoutError) as exc:
            return _error(OperationError(f"cannot connect to the serial console of {name}: {exc}"))
        ws = web.WebSocketResponse(max_msg_size=1 << 16)
        await ws.prepare(request)
        try:
            await _relay(ws, reader, writer)
        finally:
            writer.close()
            await ws.close()
        return ws


def serve(token: str, listen: str, port: int, *, home: Path | None = None, cert: str | None = None,
          key: str | None = None, ready: Callable[[str], None] = print) -> None:
    """Run until SIGINT or SIGTERM; `ready(url)` once listening (the URL with the token)."""
    context = None
    if cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"--tls-cert/--tls-key: cannot load {cert}: {exc}") from None
    app = make_app(token, home=home, tls=context is not None)

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, listen, port, ssl_context=context, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise UsageError(f"--port: cannot listen on {listen}:{port}: {exc.strerror}") from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):  # before the URL: whoever reads it may stop us at once
            loop.add_signal_handler(signum, stop.set)
        host, bound = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        ready(f"{'https' if context else 'http'}://{shown}:{bound}/?token={token}")
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())
