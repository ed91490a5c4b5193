"""The whole appliance, seen across hosts: masquerading, conntrack state, the stateful policy."""

from __future__ import annotations

import subprocess

import yaml
from conftest import TOPOLOGY

ROUTER_OUTSIDE = "203.0.113.2"


def test_router_forwards_ipv4(lab):
    assert lab["router"].check("sysctl -n net.ipv4.ip_forward").strip() == "1"


def test_server_sees_the_router_outside_address_as_the_peer(lab, listen, connect):
    peer = listen("server", 8080)
    connect("client", lab["server"].address, 8080, 1.0)
    peer_ip, _, peer_port = peer().rpartition(":")
    assert peer_ip == ROUTER_OUTSIDE, f"server saw {peer_ip}, not the router's outside address"
    assert 0 < int(peer_port) < 65536


def test_router_conntrack_holds_both_tuples_of_the_connection(lab, listen, connect):
    peer = listen("server", 8081)
    connect("client", lab["server"].address, 8081, 10.0)
    _, _, masq_port = peer().rpartition(":")
    entries = lab["router"].wait_output("conntrack -L -p tcp --dport 8081 --state ESTABLISHED")
    line = next(ln for ln in entries.splitlines() if "dport=8081" in ln)
    # Only the tuple fields: with nf_conntrack_acct (masq_logger) packets= and bytes= sit between them.
    fields = [f for f in line.split() if f.split("=")[0] in ("src", "dst", "sport", "dport")]
    original = fields[:4]
    reply = fields[4:8]
    assert original[:2] == [f"src={lab['client'].address}", f"dst={lab['server'].address}"]
    assert original[3] == "dport=8081"
    # The reply tuple is what the server answers to: the router's outside address and the
    # masquerade port, the same port the server saw.
    assert reply == [
        f"src={lab['server'].address}",
        f"dst={ROUTER_OUTSIDE}",
        "sport=8081",
        f"dport={masq_port}",
    ]


def test_scanner_cannot_open_a_connection_to_the_inside(lab, listen):
    listen("client", 2222)
    # The scanner has a route to the inside network through the router, so only the
    # router's forward policy can stop it.
    assert "10.77.0.0/24 via 203.0.113.2" in lab["scanner"].check("ip -4 route")
    attempt = lab["scanner"].run(
        "python3 -c 'import socket; socket.create_connection((\"10.77.0.10\", 2222), timeout=3)'"
    )
    assert attempt.rc != 0
    assert "timed out" in attempt.stderr, attempt.stderr
    # The listener is up and reachable from the inside: the failure above is the firewall's.
    probe = lab["router"].run(
        "python3 -c 'import socket; socket.create_connection((\"10.77.0.10\", 2222), timeout=3).close()'"
    )
    assert probe.rc == 0, probe.stderr


def test_lab_networks_have_no_address_on_the_host():
    """The engine's host holds no lab address, so nothing in the lab can route to it."""
    topology = yaml.safe_load(TOPOLOGY.read_text())
    for network in topology["lab_networks"]:
        shown = subprocess.run(
            ["ip", "-o", "-4", "addr", "show", "dev", network["bridge"]],
            capture_output=True,
            text=True,
            check=True,
        )
        assert shown.stdout.strip() == "", f"host bridge {network['bridge']} has {shown.stdout}"
