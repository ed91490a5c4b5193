"""The rules compiler's ruleset, seen across hosts: DNAT, inbound services, logging, accounting,
the transparent SOCKS redirect, anti-spoofing and the commit-confirm rollback."""

from __future__ import annotations

import json
import os
import subprocess
import time

from conftest import PROJECT, logged_packets

ROUTER_OUT = "203.0.113.2"


def try_connect(lab, source: str, address: str, port: int, timeout: float = 3.0):
    code = f"import socket; socket.create_connection(({address!r}, {port}), timeout={timeout}).close()"
    return lab[source].run(f'python3 -c "{code}"')


def converge(*extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_CONFIG": str(PROJECT / "ansible.cfg")}
    return subprocess.run(
        ["ansible-playbook", "-i", str(PROJECT / "inventory/lab"), str(PROJECT / "site.yml"), *extra],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def accounting(lab) -> dict[str, dict]:
    report = json.loads(lab["router"].check("nattrail accounting --json"))
    return {row["network"]: row for row in report["networks"]}


def test_dnat_entry_reaches_the_client_from_its_source_network(lab, listen):
    peer = listen("client", 8023)
    assert try_connect(lab, "scanner", ROUTER_OUT, 2323).rc == 0
    # DNAT keeps the source: the client sees the scanner itself.
    assert peer().startswith(f"{lab['scanner'].address}:")


def test_dnat_entry_is_closed_to_sources_outside_its_network(lab, listen):
    listen("client", 8023)
    attempt = try_connect(lab, "server", ROUTER_OUT, 2323)
    assert attempt.rc != 0 and "timed out" in attempt.stderr, attempt.stderr
    # The listener is there: the entry's source network, not a missing service, refused the server.
    assert try_connect(lab, "scanner", ROUTER_OUT, 2323).rc == 0


def test_scanner_reaches_the_allowed_service_and_a_denied_probe_is_logged(lab, listen):
    listen("router", 8080)
    assert try_connect(lab, "scanner", ROUTER_OUT, 22).rc == 0, "ssh is an inbound service"
    attempt = try_connect(lab, "scanner", ROUTER_OUT, 8080, timeout=2)
    assert attempt.rc != 0, "the router's port 8080 must not be reachable from outside"
    probes = logged_packets(
        lab["router"], lambda r: r.get("src_ip") == lab["scanner"].address and r.get("dest_port") == 8080
    )
    assert probes, "no logged record of the denied probe"
    assert probes[0]["oob.prefix"] == "nattrail-in-drop: "
    assert probes[0]["tcp.syn"] == 1 and probes[0]["tcp.ack"] == 0, "the logged packet is the probe's SYN"


def test_spoofed_inside_source_from_outside_is_logged_and_dropped(lab):
    spoof = (
        "from scapy.all import IP, TCP, send; "
        "send(IP(src='10.77.0.10', dst='203.0.113.2')/TCP(sport=40404, dport=22, flags='S'), verbose=0)"
    )
    lab["scanner"].check(f'python3 -c "{spoof}"')
    spoofed = logged_packets(
        lab["router"], lambda r: r.get("src_ip") == "10.77.0.10" and r.get("src_port") == 40404
    )
    assert spoofed and spoofed[0]["oob.prefix"] == "nattrail-spoof: ", spoofed
    # Dropped before connection tracking: sshd never answered it.
    assert "40404" not in lab["router"].run("conntrack -L -p tcp --dport 22").stdout


def test_accounting_counts_traffic_and_keeps_it_across_a_ruleset_change(lab, listen):
    before = accounting(lab)["10.77.0.0/24"]
    listen("server", 8090)
    payload = "x" * 200_000
    lab["client"].check(
        "python3 -c \"import socket; s=socket.create_connection(('203.0.113.10', 8090), timeout=5); "
        f"s.sendall(b'{payload[:10]}' * 20000); s.close()\""
    )
    time.sleep(0.5)
    grown = accounting(lab)["10.77.0.0/24"]
    assert grown["out"]["bytes"] - before["out"]["bytes"] >= 200_000
    assert grown["in"]["packets"] > before["in"]["packets"], "the server's ACKs count as inbound"

    changed = converge("-e", "nat_router_icmp_echo_rate=7/second")
    assert changed.returncode == 0, changed.stdout[-3000:]
    assert "7/second" in lab["router"].check("nft list chain inet nattrail input")
    after = accounting(lab)["10.77.0.0/24"]
    assert after["out"]["bytes"] >= grown["out"]["bytes"], "a reload lost accounted bytes"
    assert after["in"]["packets"] >= grown["in"]["packets"]
    restored = converge("--limit", "router")
    assert restored.returncode == 0, restored.stdout[-3000:]


def danted_journal(lab) -> str:
    return lab["server"].check("journalctl -u danted --no-pager -o cat")


def test_client_http_goes_through_the_socks_proxy(lab, listen):
    peer = listen("server", 80)
    lab["client"].check(
        "python3 -c \"import socket; s=socket.create_connection(('203.0.113.10', 80), timeout=5); "
        "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); s.close()\""
    )
    # The proxy, not the router, opened the connection the server saw.
    assert peer().startswith("203.0.113.10:")
    assert "203.0.113.2" in danted_journal(lab)


def test_connection_to_an_excluded_network_bypasses_the_proxy(lab, listen):
    journal_before = danted_journal(lab)
    peer = listen("scanner", 80)
    lab["client"].check(
        "python3 -c \"import socket; s=socket.create_connection(('203.0.113.20', 80), timeout=5); s.close()\""
    )
    assert peer().startswith(f"{ROUTER_OUT}:"), "excluded destinations are masqueraded, not proxied"
    assert "203.0.113.20" not in danted_journal(lab)[len(journal_before) :]


def ssh_from_client(lab):
    return lab["client"].run("ssh -o BatchMode=yes -o ConnectTimeout=3 root@10.77.0.2 true")


def test_a_ruleset_that_locks_the_administrator_out_is_rolled_back(lab):
    good = lab["router"].check("sha256sum /etc/nftables.conf")
    assert ssh_from_client(lab).rc == 0
    bad = converge("-e", '{"nat_router_router_access_from_internal": [], "nat_router_confirm_timeout": 15}')
    assert bad.returncode != 0
    assert "could not be confirmed" in bad.stdout
    deadline = time.monotonic() + 40
    while ssh_from_client(lab).rc != 0:
        assert time.monotonic() < deadline, "the previous ruleset was not restored"
        time.sleep(1)
    assert lab["router"].check("sha256sum /etc/nftables.conf") == good, "an unconfirmed ruleset was kept"
    restored = converge("--limit", "router")
    assert restored.returncode == 0, restored.stdout[-3000:]


def test_bad_inventory_fails_the_play_before_the_router_changes(lab):
    state = (
        "sha256sum /etc/nftables.conf /etc/nftables.conf.candidate; nft list table inet nattrail | sha256sum"
    )
    before = lab["router"].check(state)
    bad = converge("-e", '{"nat_router_dnat": [{"port": 70000, "target": "10.99.0.1"}]}')
    assert bad.returncode != 0
    message = " ".join(bad.stdout.split())
    assert "nat_router: host router: variable nat_router_dnat, entry 0" in message, bad.stdout[-2000:]
    assert "70000" in message and "10.99.0.1" in message
    assert lab["router"].check(state) == before


def test_bad_masq_logger_setting_fails_before_the_router_changes(lab):
    state = (
        "sha256sum /etc/nftables.conf /etc/nattrail/masqlog.json; nft list table inet nattrail | sha256sum; "
        "systemctl show -p MainPID --value nattrail-masqlog"
    )
    before = lab["router"].check(state)
    bad = converge("-e", '{"masq_logger_protocols": ["tcp", "sctp"]}')
    assert bad.returncode != 0
    message = " ".join(bad.stdout.split())
    assert "masq_logger_protocols" in message and "sctp" in message, bad.stdout[-2000:]
    assert "[router]" in message
    assert lab["router"].check(state) == before


def test_converge_confirms_directly_without_an_admin_workstation(lab):
    # No nat_router_confirm_from: the confirmation runs on the router itself. A changed ruleset
    # (another ICMP rate) makes the apply and confirm tasks run.
    settings = '{"nat_router_confirm_from": "", "nat_router_icmp_echo_rate": "7/second"}'
    done = converge("--limit", "router", "-e", settings)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "7/second" in lab["router"].check("nft list table inet nattrail")
    restored = converge("--limit", "router")
    assert restored.returncode == 0, restored.stdout[-3000:]
