"""qemuvm's NAT networks (`qemuvm network create NAME`), the pure part: names, the address plan, dnsmasq's
command line, the nftables ruleset and the leases file. What runs them is runtime/networks.py.

A network is what libvirt's `default` network is: a Linux bridge with the first address of the subnet (the
guests' gateway and DNS server), dnsmasq handing out the rest by DHCP, and an nftables table of its own that
masquerades the subnet's traffic to the host's other interfaces and lets nothing new in from them. A VM joins
through a tap device QEMU opens (`-netdev tap,ifname=...`) that the supervisor puts on the bridge before the
guest runs, so the tap goes away with QEMU whatever kills it.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

DEFAULT_SUBNETS = [f"192.168.{third}.0/24" for third in range(122, 255)]  # libvirt's default first
IFNAMSIZ = 15  # Linux interface names: at most 15 bytes


def tap_name(instance: str, index: int) -> str:
    """The tap device of an instance's NIC `index` on a network: stable, unique per instance and NIC, and
    short enough for Linux (qvt + 10 hex digits of the name's hash + the index)."""
    return f"qvt{hashlib.sha256(instance.encode()).hexdigest()[:10]}{index}"[:IFNAMSIZ]


def bridge_name(network: str) -> str:
    """qvbr-NAME where that fits in an interface name, else qvbr- and a hash of the name."""
    name = f"qvbr-{network}"
    return name if len(name) <= IFNAMSIZ else f"qvbr-{hashlib.sha256(network.encode()).hexdigest()[:10]}"


def nft_table(network: str) -> str:
    # nftables identifiers allow letters, digits, _ . - /, so a network name (NAME_PATTERN) fits as it is.
    return f"qemuvm-{network}"


# Where a network's subnet may lie: RFC 1918's private ranges, and RFC 6598's shared address space (carrier-grade
# NAT; allowed on purpose, as some LANs use it). Never link-local, loopback, benchmarking (198.18.0.0/15),
# documentation, multicast or reserved ranges.
ALLOWED_RANGES = tuple(ipaddress.IPv4Network(r) for r in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                                                           "100.64.0.0/10"))


@dataclass(frozen=True)
class AddressPlan:
    subnet: str  # 192.168.122.0/24
    gateway: str  # 192.168.122.1: the bridge's address, the guests' router and DNS server
    dhcp_start: str
    dhcp_end: str
    netmask: str
    prefix: int


def address_plan(subnet: str) -> AddressPlan:
    """The bridge takes the first address; DHCP hands out the rest (ValueError says what is wrong)."""
    try:
        net = ipaddress.IPv4Network(subnet, strict=True)
    except ValueError as exc:
        raise ValueError(f"{subnet!r} is not an IPv4 subnet such as 192.168.122.0/24 ({exc})") from None
    if not 8 <= net.prefixlen <= 29:
        raise ValueError(f"{subnet} must have a prefix length from /8 to /29 (room for the bridge and guests)")
    if not any(net.subnet_of(allowed) for allowed in ALLOWED_RANGES):
        # is_private would also pass link-local, benchmarking, documentation and other special-purpose ranges,
        # which dnsmasq would hand out and nftables masquerade as if they were a LAN's.
        raise ValueError(f"{subnet} is not a private range: a network's subnet lies in RFC 1918 (10.0.0.0/8, "
                         "172.16.0.0/12, 192.168.0.0/16) or the shared 100.64.0.0/10, e.g. 192.168.122.0/24")
    first, last = net.network_address + 1, net.broadcast_address - 1
    return AddressPlan(subnet=str(net), gateway=str(first), dhcp_start=str(first + 1), dhcp_end=str(last),
                       netmask=str(net.netmask), prefix=net.prefixlen)


def overlapping(subnet: str, routes: list[str]) -> str | None:
    """The first host route (a destination such as 10.0.0.0/8 or 192.168.1.7) that overlaps `subnet`; the
    default route overlaps everything and is not counted."""
    net = ipaddress.IPv4Network(subnet)
    for route in routes:
        if route in ("default", "0.0.0.0/0"):
            continue
        try:
            other = ipaddress.IPv4Network(route, strict=False)
        except ValueError:
            continue
        if other.prefixlen > 0 and net.overlaps(other):
            return route
    return None


def first_free_subnet(routes: list[str], taken: list[str]) -> str | None:
    """The default subnet: the first of 192.168.122.0/24 .. 192.168.254.0/24 that no host route and no other
    qemuvm network overlaps."""
    for subnet in DEFAULT_SUBNETS:
        if overlapping(subnet, [*routes, *taken]) is None:
            return subnet
    return None


def dnsmasq_argv(binary: str, bridge: str, plan: AddressPlan, folder: str, lease_time: str = "1h") -> list[str]:
    """dnsmasq for one network: DHCP and DNS on the bridge's address only (never on another interface), its
    pidfile, leases and log in the network's folder, no configuration file of the host's read."""
    return [
        binary, "--conf-file=/dev/null", "--no-hosts", "--strict-order",
        "--bind-interfaces", f"--interface={bridge}", "--except-interface=lo", f"--listen-address={plan.gateway}",
        f"--dhcp-range={plan.dhcp_start},{plan.dhcp_end},{plan.netmask},{lease_time}",
        "--dhcp-authoritative",
        "--no-ping",  # no ping before an offer: a fresh guest's DHCP client (udhcpc: 1 s) gives up before it
        f"--dhcp-leasefile={folder}/leases", f"--pid-file={folder}/dnsmasq.pid",
        f"--log-facility={folder}/dnsmasq.log", "--log-dhcp",
    ]


def nft_ruleset(table: str, bridge: str, plan: AddressPlan) -> str:
    """The network's own nftables table (nothing else of the host's ruleset is touched; `rm` deletes the table):
    masquerade what leaves the subnet for another interface; forward the guests' traffic out and only replies
    back in; the bridge's address (DHCP, DNS) answers only the bridge and the host itself."""
    return f"""table ip {table} {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {plan.subnet} ip daddr != {plan.subnet} oifname != "{bridge}" masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{bridge}" ip saddr {plan.subnet} accept
    oifname "{bridge}" ip daddr {plan.subnet} ct state established,related accept
    oifname "{bridge}" reject
    iifname "{bridge}" reject
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    ip daddr {plan.gateway} iifname != {{ "{bridge}", "lo" }} drop
  }}
}}
"""


@dataclass(frozen=True)
class Lease:
    mac: str
    address: str
    hostname: str | None
    expires: int  # seconds since the epoch; 0: never


def leases(text: str) -> list[Lease]:
    """dnsmasq's leases file (`EXPIRY MAC IP HOSTNAME CLIENT-ID` per line; `*` for no hostname)."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or not fields[0].isdigit():
            continue  # the duid line, or a torn write
        found.append(Lease(mac=fields[1].lower(), address=fields[2],
                           hostname=None if fields[3] == "*" else fields[3], expires=int(fields[0])))
    return found


def lease_for(mac: str, all_leases: list[Lease], now: float) -> Lease | None:
    """The current lease of `mac`: the latest one that has not expired."""
    mine = [lease for lease in all_leases if lease.mac == mac.lower() and (lease.expires == 0 or lease.expires > now)]
    return max(mine, key=lambda lease: lease.expires or float("inf"), default=None)
