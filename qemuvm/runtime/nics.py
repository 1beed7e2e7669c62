"""A VM's NICs on qemuvm's NAT networks: the checks before `up`, the LaunchSpec's taps, the addresses the
guests leased, and what a running VM lost (a network removed under it). The networks themselves are
runtime/networks.py."""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING, Any

from qemuvm.errors import UsageError
from qemuvm.qemu import natnet
from qemuvm.runtime import networks, records

if TYPE_CHECKING:
    from qemuvm.profile.model import Profile

def check_nics(profile: Profile) -> None:
    """Before `up` creates anything: each `network:` NIC names a network that is here, and qemuvm may create
    its tap (UsageError: one sentence with the fix)."""
    for index, nic in enumerate(profile.network):
        if nic.network is None:
            continue
        at = f"network[{index}].network"
        if os.geteuid() != 0:
            bridge = natnet.bridge_name(nic.network)
            raise UsageError(f"{at}: joining network {nic.network} needs a tap device, and creating one needs root; "
                             f"run qemuvm as root, or join its bridge through qemu-bridge-helper instead: "
                             f"{{mode: bridge, bridge: {bridge}}}, with the line `allow {bridge}` in "
                             "/etc/qemu/bridge.conf and the helper setuid root (Debian ships it without: "
                             "chmod u+s /usr/lib/qemu/qemu-bridge-helper)")
        record = networks.read(nic.network)
        if record is None:
            raise UsageError(f"{at}: there is no network {nic.network}; create it first: "
                             f"qemuvm network create {nic.network}")
        if not networks.link_exists(record.bridge):
            raise UsageError(f"{at}: network {nic.network}'s bridge {record.bridge} is gone; make the network again: "
                             f"qemuvm network rm {nic.network} && qemuvm network create {nic.network}")


def taps(profile: Profile) -> list[records.Tap]:
    """The LaunchSpec's taps: one per `network:` NIC, named for the instance and NIC (qemu/natnet.py)."""
    from qemuvm.qemu.options import derive_mac

    found = []
    for index, nic in enumerate(profile.network):
        if nic.network is not None:
            record = networks.read(nic.network)
            found.append(records.Tap(index=index, network=nic.network, ifname=natnet.tap_name(profile.name, index),
                                     bridge=record.bridge if record else natnet.bridge_name(nic.network),
                                     mac=derive_mac(profile.name, index) if nic.mac == "auto" else nic.mac.lower()))
    return found


def tap_problems(spec_taps: list[records.Tap]) -> list[str]:
    """What a running VM has lost on its qemuvm networks, one sentence each: a network removed under it
    (`network rm --force`), its bridge or dnsmasq gone, a tap no longer on its bridge."""
    found = []
    for tap in spec_taps:
        nic = f"NIC {tap.index} (tap {tap.ifname})"
        try:
            record = networks.read(tap.network)
        except UsageError as exc:
            found.append(f"{nic}: network {tap.network}'s record cannot be read ({exc})")
            continue
        if record is None:
            found.append(f"{nic}: network {tap.network} is gone (removed while the VM ran); the guest has no network "
                         f"there until `qemuvm network create {tap.network}` and a restart of the VM")
            continue
        if not networks.link_exists(record.bridge):
            found.append(f"{nic}: network {tap.network}'s bridge {record.bridge} is gone; the guest has no network "
                         "there")
        elif tap.ifname not in networks.attached(record):
            found.append(f"{nic} is not on network {tap.network}'s bridge {record.bridge}; the guest has no network "
                         "there until the VM restarts")
        if networks.proven_dnsmasq(record) is None:
            found.append(f"{nic}: network {tap.network}'s dnsmasq is not running (no DHCP or DNS); see "
                         f"{networks.network_folder(record.name) / 'dnsmasq.log'}")
    return found


def addresses(spec_taps: list[records.Tap]) -> list[dict[str, Any]]:
    """An instance's addresses on qemuvm networks (its LaunchSpec's taps), from their leases (the guest asked
    dnsmasq for them)."""
    found = []
    for tap in spec_taps:
        record = None
        with contextlib.suppress(UsageError):  # an unreadable network record: no address known
            record = networks.read(tap.network)
        lease = natnet.lease_for(tap.mac, networks.current_leases(record), time.time()) if record else None
        found.append({"nic": tap.index, "network": tap.network, "mac": tap.mac, "tap": tap.ifname,
                      "address": lease.address if lease else None})
    return found
