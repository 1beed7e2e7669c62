"""The supervisor's step for NICs on qemuvm NAT networks (runtime/networks.py): QEMU opens each tap itself
(`-netdev tap,ifname=...`: the device goes away with QEMU, whatever ends it), and before the guest runs
(`cont`) each one joins its network's bridge. Stdlib only, as the supervisor.
"""

from __future__ import annotations

import subprocess

from qemuvm.runtime import records


def attach(spec_taps: list[records.Tap]) -> str | None:
    """In the supervisor, once QEMU has opened its taps and before the guest runs: each joins its bridge.
    Returns why one could not (the VM is then not started), or None."""
    for tap in spec_taps:
        for argv in (["ip", "link", "set", "dev", tap.ifname, "master", tap.bridge],
                     ["ip", "link", "set", "dev", tap.ifname, "up"]):
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"network[{tap.index}]: tap {tap.ifname} could not join bridge {tap.bridge}: {exc}"
            if done.returncode != 0:
                why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit code {done.returncode}"
                return (f"network[{tap.index}]: tap {tap.ifname} could not join bridge {tap.bridge} of network "
                        f"{tap.network} ({why}); is the network still there? `qemuvm network status {tap.network}`")
    return None
