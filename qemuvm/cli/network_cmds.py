"""`qemuvm network ...`: NAT networks that VMs join with `{mode: bridge, network: NAME}` (libvirt's
`virsh net-*` and its `default` network, without libvirt)."""

from __future__ import annotations

import typer

from qemuvm.cli.app import app
from qemuvm.cli.output import JsonOption, info, print_json, print_table

network_app = typer.Typer(name="network", no_args_is_help=True,
                          help="NAT networks (root): a bridge with DHCP/DNS (dnsmasq) and NAT (nftables).")
app.add_typer(network_app)

NetworkArg = typer.Argument(..., help="Network name.")


@network_app.command("create")
def network_create(
    name: str = NetworkArg,
    subnet: str | None = typer.Option(None, "--subnet", help="IPv4 subnet, e.g. 192.168.122.0/24 [default: the "
                                      "first 192.168.122-254.0/24 that no host route uses]."),
    json_: bool = JsonOption,
) -> None:
    """Create a NAT network: bridge qvbr-NAME with the subnet's first address, DHCP for the rest."""
    from qemuvm import api

    made = api.network_create(name, subnet)
    if json_:
        print_json(made)
        return
    info(f"network {name}: bridge {made['bridge']}, gateway {made['gateway']}, subnet {made['subnet']}; "
         f"VMs join it with `network: [{{mode: bridge, network: {name}}}]`")


@network_app.command("ls")
def network_ls(json_: bool = JsonOption) -> None:
    """List the networks, checked live."""
    from qemuvm import api

    found = api.network_ls()
    if json_:
        print_json(found)
        return
    print_table(["name", "state", "subnet", "bridge", "leases", "VM NICs"],
                [[n["name"], n["state"], n["subnet"], n["bridge"], n["leases"], len(n["attached"])] for n in found])


@network_app.command("status")
def network_status(name: str = NetworkArg, json_: bool = JsonOption) -> None:
    """One network: its state, problems and leases."""
    from qemuvm import api

    found = api.network_status(name)
    if json_:
        print_json(found)
        return
    print(f"{found['name']}: {found['state']}, subnet {found['subnet']}, gateway {found['gateway']}, "
          f"bridge {found['bridge']}, nftables table ip {found['nft_table']}, dnsmasq pid {found['dnsmasq_pid']}")
    for problem in found["problems"]:
        print(f"  problem: {problem}")
    if found["leases"]:
        print_table(["address", "mac", "hostname"], [[lease["address"], lease["mac"], lease["hostname"] or "-"]
                                                     for lease in found["leases"]])


@network_app.command("rm")
def network_rm(
    name: str = NetworkArg,
    force: bool = typer.Option(False, "--force", help="Remove it even while VM NICs are attached."),
    json_: bool = JsonOption,
) -> None:
    """Remove a network: its dnsmasq, nftables table and bridge (exactly what create made)."""
    from qemuvm import api

    removed = api.network_rm(name, force=force)
    if json_:
        print_json(removed)
        return
    info(f"network {name} removed (bridge {removed['bridge']})")
