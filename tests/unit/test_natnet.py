"""NAT networks, the pure parts (qemu/natnet.py): names, the address plan, overlap with host routes, dnsmasq's
command line, the nftables ruleset, leases; the network record; and the refusals before anything is made."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qemuvm.errors import UsageError
from qemuvm.profile.model import Profile
from qemuvm.qemu import natnet
from qemuvm.runtime import networks, nics, records, taps


def test_interface_names_fit_linux_and_are_stable() -> None:
    assert natnet.bridge_name("default") == "qvbr-default"
    long = natnet.bridge_name("a-network-name-that-is-long")
    assert long.startswith("qvbr-") and len(long) == 15 and long == natnet.bridge_name("a-network-name-that-is-long")
    tap = natnet.tap_name("vm", 1)
    assert len(tap) <= natnet.IFNAMSIZ and tap == natnet.tap_name("vm", 1)
    assert len({tap, natnet.tap_name("vm", 2), natnet.tap_name("vm2", 1)}) == 3
    assert natnet.nft_table("lab") == "qemuvm-lab"


@pytest.mark.parametrize(("subnet", "gateway", "start", "end"), [
    ("192.168.122.0/24", "192.168.122.1", "192.168.122.2", "192.168.122.254"),
    ("10.77.0.0/16", "10.77.0.1", "10.77.0.2", "10.77.255.254"),
    ("172.16.5.0/29", "172.16.5.1", "172.16.5.2", "172.16.5.6"),
    ("100.64.0.0/24", "100.64.0.1", "100.64.0.2", "100.64.0.254"),  # RFC 6598 shared space: allowed on purpose
])
def test_address_plan(subnet: str, gateway: str, start: str, end: str) -> None:
    plan = natnet.address_plan(subnet)
    assert (plan.gateway, plan.dhcp_start, plan.dhcp_end) == (gateway, start, end)


@pytest.mark.parametrize(("subnet", "why"), [
    ("192.168.122.1/24", "not an IPv4 subnet"),  # host bits set
    ("fd00::/64", "not an IPv4 subnet"),
    ("banana", "not an IPv4 subnet"),
    ("192.168.122.0/30", "from /8 to /29"),
    ("8.8.8.0/24", "not a private range"),
    ("169.254.0.0/16", "not a private range"),  # link-local (is_private passed it)
    ("198.18.0.0/15", "not a private range"),  # benchmarking
    ("192.0.2.0/24", "not a private range"),  # documentation
    ("127.0.0.0/8", "not a private range"),
    ("192.0.0.0/24", "not a private range"),  # IETF protocol assignments
    ("240.0.0.0/8", "not a private range"),  # reserved
    ("172.0.0.0/8", "not a private range"),  # reaches past 172.16.0.0/12
])
def test_address_plan_refusals(subnet: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        natnet.address_plan(subnet)


def test_overlap_and_the_first_free_subnet() -> None:
    routes = ["default", "10.0.0.0/8", "192.168.122.0/24", "192.168.123.7"]
    assert natnet.overlapping("10.1.0.0/24", routes) == "10.0.0.0/8"
    assert natnet.overlapping("192.168.123.0/24", routes) == "192.168.123.7"
    assert natnet.overlapping("172.16.0.0/24", routes) is None  # the default route overlaps nothing
    assert natnet.first_free_subnet(routes, taken=["192.168.124.0/24"]) == "192.168.125.0/24"
    assert natnet.first_free_subnet(["192.168.0.0/16"], taken=[]) is None


def test_dnsmasq_listens_on_the_bridge_only() -> None:
    argv = natnet.dnsmasq_argv("/usr/sbin/dnsmasq", "qvbr-t", natnet.address_plan("192.168.122.0/24"), "/run/n/t")
    assert argv[0] == "/usr/sbin/dnsmasq" and "--conf-file=/dev/null" in argv
    assert {"--bind-interfaces", "--interface=qvbr-t", "--listen-address=192.168.122.1",
            "--except-interface=lo"} <= set(argv)
    assert "--dhcp-range=192.168.122.2,192.168.122.254,255.255.255.0,1h" in argv
    assert "--dhcp-leasefile=/run/n/t/leases" in argv and "--pid-file=/run/n/t/dnsmasq.pid" in argv


def test_the_nft_ruleset_is_one_table_of_the_networks() -> None:
    text = natnet.nft_ruleset("qemuvm-t", "qvbr-t", natnet.address_plan("192.168.122.0/24"))
    assert text.startswith("table ip qemuvm-t {") and text.count("table ") == 1
    assert 'ip saddr 192.168.122.0/24 ip daddr != 192.168.122.0/24 oifname != "qvbr-t" masquerade' in text
    assert 'oifname "qvbr-t" ip daddr 192.168.122.0/24 ct state established,related accept' in text
    assert 'ip daddr 192.168.122.1 iifname != { "qvbr-t", "lo" } drop' in text
    if shutil.which("nft"):  # nft's own parser, without touching the kernel: --check
        import subprocess

        checked = subprocess.run(["nft", "--check", "-f", "-"], input=text, capture_output=True, text=True)
        assert checked.returncode == 0 or "Operation not permitted" in checked.stderr, checked.stderr


def test_leases() -> None:
    text = ("1700000100 52:54:00:AA:00:01 192.168.122.10 vm1 01:52:54:00:aa:00:01\n"
            "1700000200 52:54:00:aa:00:01 192.168.122.11 * *\n"
            "duid 00:01:00:01\n"
            "1700000300 52:54:00:aa:00:02 192.168.122.1")  # torn last line: skipped
    found = natnet.leases(text)
    assert [(lease.address, lease.hostname) for lease in found] == [("192.168.122.10", "vm1"),
                                                                    ("192.168.122.11", None)]
    assert natnet.lease_for("52:54:00:AA:00:01", found, now=1700000000).address == "192.168.122.11"  # the latest
    assert natnet.lease_for("52:54:00:aa:00:01", found, now=1700000150).address == "192.168.122.11"
    assert natnet.lease_for("52:54:00:aa:00:01", found, now=1700000250) is None  # expired
    assert natnet.lease_for("52:54:00:aa:00:09", found, now=0) is None


def test_network_record_round_trip_and_corruption(tmp_path: Path) -> None:
    path = tmp_path / "t" / "network.json"
    path.parent.mkdir()
    record = records.NetworkRecord(name="t", subnet="192.168.122.0/24", gateway="192.168.122.1",
                                   bridge="qvbr-t", created_at=1.5, bridge_created=True, nft_table="qemuvm-t")
    records.write_network(path, record)
    assert records.read_network(path) == record
    assert records.read_network(tmp_path / "none" / "network.json") is None
    path.write_text(json.dumps({**json.loads(path.read_text()), "bridge": 5, "complete": "yes"}))
    with pytest.raises(UsageError, match=r"corrupt \(wrong type of bridge, complete\)"):
        records.read_network(path)
    path.write_text(json.dumps({"schema": 99}))
    with pytest.raises(UsageError, match="newer qemuvm"):
        records.read_network(path)
    path.write_text("{")
    with pytest.raises(UsageError, match="unreadable"):
        records.read_network(path)


def test_an_unreadable_network_is_listed_not_hidden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QEMUVM_NETWORKS", str(tmp_path))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "network.json").write_text("[1, 2")
    [row] = networks.list_all()
    assert row["name"] == "broken" and row["state"] == "unreadable" and "unreadable" in row["problems"][0]


def test_profile_nics_on_networks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QEMUVM_NETWORKS", str(tmp_path))
    profile = Profile(name="vm", network=[{"mode": "user"}, {"mode": "bridge", "network": "lab"}])
    [tap] = nics.taps(profile)
    assert (tap.index, tap.network, tap.bridge, tap.ifname) == (1, "lab", "qvbr-lab", natnet.tap_name("vm", 1))
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(UsageError, match=r"network\[1\].network: joining network lab needs a tap device.*root"):
        nics.check_nics(profile)
    monkeypatch.setattr("os.geteuid", lambda: 0)
    with pytest.raises(UsageError, match="there is no network lab; create it first: qemuvm network create lab"):
        nics.check_nics(profile)


def test_network_names_are_checked_before_anything() -> None:
    with pytest.raises(UsageError, match="is not a network name"):
        networks.status("../etc")


@pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2")
def test_a_tap_that_cannot_join_says_which_and_why() -> None:
    # No such device: `ip` fails before it changes anything, whoever runs it.
    why = taps.attach([records.Tap(index=0, network="gone", ifname="qvtnotthere0", bridge="qvbr-gone",
                                   mac="52:54:00:00:00:01")])
    assert why is not None and why.startswith("network[0]: tap qvtnotthere0 could not join bridge qvbr-gone")
    assert "qemuvm network status gone" in why
    assert taps.attach([]) is None


@pytest.mark.parametrize("failing", [None, "creating bridge", "addressing", "loading nftables", "starting dnsmasq"])
def test_create_is_a_table_of_steps_undone_backwards(failing: str | None, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`network create` runs its steps in order, recording each; a step that fails undoes, in reverse, exactly
    the steps done before it (what `rm` does too), and leaves no folder. No root: `run` and IPv4 forwarding are
    stand-ins here; test_nat_network.py runs the real thing in a namespace."""
    forward = tmp_path / "ip_forward"
    forward.write_text("0\n")
    monkeypatch.setattr(networks, "IP_FORWARD", forward)
    monkeypatch.setenv("QEMUVM_NETWORKS", str(tmp_path / "networks"))
    monkeypatch.setattr(networks, "_require", lambda what: None)
    monkeypatch.setattr(networks, "host_routes", lambda: [])
    monkeypatch.setattr(networks, "forwarding_users", lambda: [])  # (this host may have bridges of its own)
    links: set[str] = set()
    monkeypatch.setattr(networks, "link_exists", lambda ifname: ifname in links)
    ran: list[str] = []
    recorded: list[dict] = []
    phase: dict[str, int] = {}

    def fake_run(argv: list[str], what: str, stdin: str | None = None) -> str:
        ran.append(" ".join(argv[:3]) if argv[0] != "nft" or argv[1] != "-f" else "nft -f")
        if failing and what.startswith(failing) and "failed_at" not in phase:
            phase["failed_at"] = len(ran)
            raise networks.OperationError(f"{what} failed: made to fail")
        if argv[:3] == ["ip", "link", "add"]:
            links.add(argv[3])
        elif argv[:3] == ["ip", "link", "del"]:
            links.discard(argv[3])
        return ""

    def fake_dnsmasq(bridge: str, plan: object, folder: Path) -> dict:
        fake_run(["dnsmasq"], "starting dnsmasq")
        return {"pid": 1, "start_time": 0.0, "cmdline": ["dnsmasq"]}

    real_write = records.write_network
    monkeypatch.setattr(networks, "run", fake_run)
    monkeypatch.setattr(networks, "_start_dnsmasq", fake_dnsmasq)
    monkeypatch.setattr(networks, "proven_dnsmasq", lambda record: None)
    monkeypatch.setattr(records, "write_network",
                        lambda path, record: (recorded.append(dict(vars(record))), real_write(path, record))[1])
    if failing is None:
        record = networks.create("lab", "10.9.0.0/24")
        assert record.complete and forward.read_text() == "1\n"
        assert ran == ["ip link add", "ip addr add", "ip link set", "nft -f", "dnsmasq"]
        assert [r["complete"] for r in recorded][-1] is True and len(recorded) == len(networks.CREATE_STEPS) + 2
        ran.clear()
        networks.remove("lab")
        assert ran == ["nft delete table", "ip link del"] and forward.read_text() == "0\n"
        return
    with pytest.raises(networks.OperationError, match="made to fail"):
        networks.create("lab", "10.9.0.0/24")
    done, undone = ran[:phase["failed_at"] - 1], ran[phase["failed_at"]:]  # (the failing command made nothing)
    undo = {"ip link add": "ip link del", "nft -f": "nft delete table"}
    assert undone == [undo[command] for command in reversed(done) if command in undo]
    assert forward.read_text() == "0\n"  # forwarding back as it was, whichever step failed
    assert not (tmp_path / "networks" / "lab").exists()


def test_definitions_list_inactive_and_unreadable_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a reboot every defined network is `inactive`; a definition that cannot be read is listed with why,
    never the end of the whole listing (hostile try: a corrupt file made `network ls` exit 2)."""
    from qemuvm import api
    from qemuvm.runtime import netdefs

    monkeypatch.setenv("QEMUVM_NETWORKS", str(tmp_path / "run"))
    monkeypatch.setenv("QEMUVM_NETWORK_DEFS", str(tmp_path / "defs"))
    netdefs.define("lab", "10.9.0.0/24")
    assert (tmp_path / "defs").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "defs" / "lab.json").stat().st_mode & 0o777 == 0o600
    (tmp_path / "defs" / "bad.json").write_text("nonsense")
    rows = {row["name"]: row for row in api.network_ls()}
    assert (rows["lab"]["state"], rows["lab"]["subnet"]) == ("inactive", "10.9.0.0/24")
    assert rows["bad"]["state"] == "unreadable" and "bad.json is unreadable" in rows["bad"]["problems"][0]
    assert api.network_rm("lab")["removed"] and netdefs.definition("lab") is None
    with pytest.raises(UsageError, match="not a network name"):
        netdefs.define("../x", "10.9.0.0/24")
