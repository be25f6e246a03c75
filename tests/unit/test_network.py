"""The address a worker advertises to a gang's other nodes (worker/network.py)."""

from __future__ import annotations

import pytest

from traindepot.settings import Settings, SettingsError
from worker import network


def test_an_interface_s_ipv4_address_is_advertised_and_carries_the_collectives() -> None:
    settings = Settings(advertise_interface="lo", advertise_address="10.9.9.9")
    assert network.advertised(settings) == "127.0.0.1"  # the interface's, not the address
    assert network.collective_env(settings) == {
        "GLOO_SOCKET_IFNAME": "lo",
        "NCCL_SOCKET_IFNAME": "lo",
    }


def test_without_an_interface_the_address_is_advertised_and_the_libraries_choose() -> None:
    settings = Settings(advertise_address="10.9.9.9")
    assert network.advertised(settings) == "10.9.9.9"
    assert network.collective_env(settings) == {}


def test_an_unknown_interface_is_named_with_the_ones_there_are() -> None:
    with pytest.raises(SettingsError, match=r"'nosuch0': no such network interface.*\blo\b"):
        network.advertised(Settings(advertise_interface="nosuch0"))
