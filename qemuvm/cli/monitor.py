"""Commands: monitor (`top`, the virt-top of qemuvm)."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

import typer

from qemuvm.cli.app import app

if TYPE_CHECKING:
    from rich.table import Table

COLUMNS = ["NAME", "STATE", "VCPUS", "CPU%", "VCPU%", "RSS", "MEM", "DISK RD", "DISK WR", "RD/WR OPS", "NET RX/TX",
           "UPTIME", "RESTARTS"]


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "K", "M", "G"):
        if size < 1024 or unit == "G":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}G"


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}d" if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def row_cells(row: dict[str, Any]) -> list[str]:
    """The table cells of one `top.Sampler` row."""
    running = row["pid"] is not None
    disks = row["disks"]
    rd = sum(d["rd_bytes"] for d in disks) if disks else None
    wr = sum(d["wr_bytes"] for d in disks) if disks else None
    ops = f"{sum(d['rd_ops'] for d in disks)}/{sum(d['wr_ops'] for d in disks)}" if disks else "-"
    if row["qmp"] == "stale":
        ops += "*"  # the monitor was busy: last known disk values
    vcpu = " ".join(_percent(v["cpu_percent"]) for v in row["vcpu_percent"]) or "-"
    counted = [n for n in row["net"] if n["rx_bytes"] is not None]
    if not running:
        net = "-"
    elif counted:
        net = f"{_bytes(sum(n['rx_bytes'] for n in counted))}/{_bytes(sum(n['tx_bytes'] for n in counted))}"
    else:
        net = "n/a" if row["net"] else "-"  # user-mode NICs have no counters in QEMU
    return [row["name"], row["state"], str(row["vcpus"] or "-"), _percent(row["cpu_percent"]), vcpu,
            _bytes(row["rss_bytes"]), _bytes(row["memory_bytes"]), _bytes(rd), _bytes(wr), ops, net,
            _uptime(row["uptime_s"]), str(row["restarts"])]


def build_table(rows: list[dict[str, Any]], interval: float | None = None) -> Table:
    from rich.table import Table

    title = f"qemuvm top — {time.strftime('%H:%M:%S')}" + (f", every {interval:g} s (Ctrl-C quits)" if interval else "")
    table = Table(*COLUMNS, title=title, box=None, header_style="bold", pad_edge=False)
    for row in rows:
        style = "green" if row["state"] == "running" else ("red" if row["state"] == "crashed" else None)
        table.add_row(*row_cells(row), style=style)
    if not rows:
        table.caption = "no instances (see `qemuvm up`)"
    return table


@app.command()
def top(
    once: bool = typer.Option(False, "--once", help="Print one sample and exit."),
    json_: bool = typer.Option(False, "--json", help="JSON: one list with --once, else one line per sample."),
    interval: float = typer.Option(1.0, "--interval", min=0.1, help="Seconds between samples (CPU % window)."),
) -> None:
    """A live table of every instance: CPU (per vCPU too), RSS, disk and network I/O, uptime, restarts."""
    from qemuvm.api.monitoring import Sampler, sample_once

    if once:
        rows = sample_once(interval=interval)
        if json_:
            json.dump(rows, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            from rich.console import Console

            Console(width=None if sys.stdout.isatty() else 200).print(build_table(rows))
        return
    sampler = Sampler()
    first = sampler.sample()  # shown at once; CPU % needs the second sample
    try:
        if json_:
            while True:
                time.sleep(interval)
                print(json.dumps({"time": time.time(), "instances": sampler.sample()}), flush=True)
        from rich.live import Live

        with Live(build_table(first, interval), auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(interval)
                live.update(build_table(sampler.sample(), interval), refresh=True)
    except KeyboardInterrupt:
        return
