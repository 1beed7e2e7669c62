"""`qemuvm web` (the browser page, consoles and /metrics) and `qemuvm metrics` (the same metrics, printed once)."""

from __future__ import annotations

from pathlib import Path

import typer

from qemuvm.cli.app import app
from qemuvm.errors import UsageError


@app.command()
def web(
    listen: str = typer.Option("127.0.0.1", "--listen", help="Address to listen on; beyond loopback only with TLS."),
    port: int = typer.Option(8470, "--port", min=0, max=65535, help="TCP port; 0 picks a free one."),
    token_file: Path = typer.Option(None, "--token-file", help="Keep the access token in this file (made 0600 "
                                    "with a new token if missing); default: a new random token per start."),
    tls_cert: Path = typer.Option(None, "--tls-cert", help="PEM certificate (chain): serve HTTPS."),
    tls_key: Path = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert."),
) -> None:
    """Your VMs in the browser: the list with its actions, each VM's screen (noVNC) and serial console (xterm.js),
    and /metrics for Prometheus. Runs in the foreground until Ctrl-C; prints the URL with its access token."""
    from qemuvm.web import auth

    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together: give both, or neither")
    if not auth.is_loopback(listen) and tls_cert is None:
        raise UsageError(f"--listen {listen} is beyond loopback: give --tls-cert and --tls-key (the access token "
                         "would cross the network in clear), or listen on 127.0.0.1")
    token = auth.load_token(str(token_file) if token_file else None)
    from qemuvm.web.server import serve

    serve(token, listen, port, cert=str(tls_cert) if tls_cert else None, key=str(tls_key) if tls_key else None,
          ready=lambda url: print(url, flush=True))


@app.command()
def metrics(
    openmetrics: bool = typer.Option(False, "--openmetrics", help="OpenMetrics instead of Prometheus' text format."),
) -> None:
    """Print every instance's metrics once, in Prometheus' text format: for node exporter's textfile collector
    or Zabbix agent 2's Prometheus items (`qemuvm web` serves the same at /metrics)."""
    import sys

    from qemuvm.api.monitoring import Sampler
    from qemuvm.web.metrics import OPENMETRICS, exposition

    rows = Sampler().sample()
    body, _type = exposition(rows, OPENMETRICS if openmetrics else "")
    sys.stdout.write(body.decode())
