"""The address a worker advertises to the other nodes of a job of several nodes
(db/gangs.py, worker/gang.py): `TRAINDEPOT_ADVERTISE_ADDRESS`, or the IPv4 address of
`TRAINDEPOT_ADVERTISE_INTERFACE`, which is then also the interface its ranks' collectives
use (gloo's and NCCL's socket interface: `GLOO_SOCKET_IFNAME`, `NCCL_SOCKET_IFNAME`)."""

from __future__ import annotations

import socket

import psutil

from traindepot.settings import Settings, SettingsError


def interface_address(name: str) -> str:
    """The first IPv4 address of interface `name` (SettingsError: none, or no such one)."""
    interfaces = psutil.net_if_addrs()
    if name not in interfaces:
        have = ", ".join(sorted(interfaces)) or "none"
        raise SettingsError(
            f"TRAINDEPOT_ADVERTISE_INTERFACE={name!r}: no such network interface"
            f" on this machine (it has: {have})"
        )
    for address in interfaces[name]:
        if address.family == socket.AF_INET:
            return str(address.address)
    raise SettingsError(f"TRAINDEPOT_ADVERTISE_INTERFACE={name!r} has no IPv4 address")


def advertised(settings: Settings) -> str:
    """The address the other nodes reach this worker at."""
    if settings.advertise_interface is None:
        return settings.advertise_address
    return interface_address(settings.advertise_interface)


def collective_env(settings: Settings) -> dict[str, str]:
    """The environment that puts a node's ranks' gloo and NCCL traffic on the advertised
    interface (none without one: the libraries choose)."""
    name = settings.advertise_interface
    return {} if name is None else {"GLOO_SOCKET_IFNAME": name, "NCCL_SOCKET_IFNAME": name}
