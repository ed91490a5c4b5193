"""The rules compiler's ruleset, seen across hosts: DNAT, inbound services, logging, accounting,
the transparent SOCKS redirect, anti-spoofing and the commit-confirm rollback."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from conftest import ROUTER_OUT, converge, drops, logged_packets, spoofed_syn, try_connect


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
    dropped = drops(lab)["drop_in"]
    assert try_connect(lab, "scanner", ROUTER_OUT, 22).rc == 0, "ssh is an inbound service"
    attempt = try_connect(lab, "scanner", ROUTER_OUT, 8080, timeout=2)
    assert attempt.rc != 0, "the router's port 8080 must not be reachable from outside"
    probes = logged_packets(
        lab["router"], lambda r: r.get("src_ip") == lab["scanner"].address and r.get("dest_port") == 8080
    )
    assert probes, "no logged record of the denied probe"
    assert probes[0]["oob.prefix"] == "nattrail-in-drop: "
    assert probes[0]["tcp.syn"] == 1 and probes[0]["tcp.ack"] == 0, "the logged packet is the probe's SYN"
    assert drops(lab)["drop_in"] > dropped, "the probe was not counted as dropped"


def test_spoofed_inside_source_from_outside_is_logged_and_dropped(lab):
    spoofed, counted = spoofed_syn(lab, "10.77.0.10", 40404)
    assert spoofed and spoofed[0]["oob.prefix"] == "nattrail-spoof: ", spoofed
    assert counted >= 1
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

    changed = converge("--limit", "router", "-e", "nat_router_icmp_echo_rate=7/second")
    assert changed.returncode == 0, changed.stdout[-3000:]
    assert "7/second" in lab["router"].check("nft list chain inet nattrail input")
    after = accounting(lab)["10.77.0.0/24"]
    assert after["out"]["bytes"] >= grown["out"]["bytes"], "a reload lost accounted bytes"
    assert after["in"]["packets"] >= grown["in"]["packets"]
    restored = converge("--limit", "router")
    assert restored.returncode == 0, restored.stdout[-3000:]


def send_through_router(lab, listen, size: int) -> None:
    """``size`` bytes from the client to the server through the router, acknowledged by the server."""
    peer = listen("server", 8091)
    lab["client"].check(
        "python3 -c \"import socket; s=socket.create_connection(('203.0.113.10', 8091), timeout=5); "
        f"s.sendall(b'y' * {size}); s.shutdown(socket.SHUT_WR); s.recv(1); s.close()\""
    )
    peer()


def blocklisted(lab) -> dict[str, int]:
    listed = json.loads(lab["router"].check("nft -j list set inet nattrail blocklist"))
    elements = next(item["set"].get("elem", []) for item in listed["nftables"] if "set" in item)
    return {e["elem"]["val"]: e["elem"]["expires"] for e in elements if isinstance(e.get("elem"), dict)}


def test_every_load_of_the_saved_ruleset_keeps_the_counters_and_the_blocklist(lab, listen):
    # Debian's tooling, an administrator or a package hook may reload or restart nftables.service
    # at any time: each load starts from the live counters and blocklist, never from stale ones.
    router = lab["router"]
    assert router.run("systemctl is-active --quiet nftables").rc == 0, (
        "the role leaves nftables.service started"
    )
    router.check("nft add element inet nattrail blocklist { 203.0.113.66 timeout 10m }")
    try:
        seen = accounting(lab)["10.77.0.0/24"]["out"]
        for action in ("reload", "restart", "reload"):
            send_through_router(lab, listen, 50_000)
            counted = accounting(lab)["10.77.0.0/24"]["out"]
            assert counted["bytes"] - seen["bytes"] >= 50_000, (
                f"the traffic before the {action} was not counted"
            )
            router.check(f"systemctl {action} nftables")
            kept = accounting(lab)["10.77.0.0/24"]["out"]
            assert kept["packets"] >= counted["packets"] and kept["bytes"] >= counted["bytes"], (
                f"systemctl {action} nftables lost counted traffic: {counted} -> {kept}"
            )
            seen = kept
            left = blocklisted(lab).get("203.0.113.66")
            assert left is not None and left <= 600, f"the blocklist entry was lost by the {action}"
    finally:
        router.run("nft delete element inet nattrail blocklist { 203.0.113.66 }")


def test_a_flood_ping_from_one_source_gets_the_rate_limit_and_no_more(lab):
    before = drops(lab)["drop_icmp_limit"]
    # ping exits 1 when replies are missing, which is the point: read its statistics instead.
    # (-c alone: with -w too, ping would go on sending until 2000 replies or the deadline.)
    flood = lab["scanner"].run("timeout 60 ping -f -c 2000 -q 203.0.113.2").stdout
    sent, received = (int(n) for n in re.search(r"(\d+) packets transmitted, (\d+) received", flood).groups())
    seconds = int(re.search(r"time (\d+)ms", flood).group(1)) / 1000
    # 5/second per source with the default burst of 5 (the lab's rate), plus one for a clock tick.
    assert sent == 2000 and received <= 5 * seconds + 6, flood
    assert drops(lab)["drop_icmp_limit"] - before >= sent - received
    # An ordinary ping still gets every answer.
    assert " 3 received" in lab["scanner"].check("ping -c 3 -i 0.5 -W 2 203.0.113.2")


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


SSH = "ssh -o BatchMode=yes -o ConnectTimeout=3 -o StrictHostKeyChecking=accept-new"


def ssh_from_client(lab, *options: str) -> subprocess.CompletedProcess[str]:
    """A new SSH login from the administrator's network (never multiplexed unless ``options`` say so)."""
    mux = " ".join(options) or "-o ControlMaster=no -o ControlPath=none"
    return lab["client"].run(f"{SSH} {mux} root@10.77.0.2 true")


def loaded_ruleset(lab) -> str:
    # Stateless: without the live counters, which traffic changes between two listings.
    return lab["router"].check("nft --stateless list table inet nattrail")


def rollback_pending(lab) -> bool:
    return lab["router"].run("systemctl is-active --quiet nattrail-rollback.timer").rc == 0


def assert_confirmed(result: subprocess.CompletedProcess[str], task: str, outcome: str) -> None:
    """The play succeeded and its task ``task`` reported ``outcome`` (e.g. "changed: [router]")."""
    assert result.returncode == 0, result.stdout[-3000:]
    after = result.stdout.split(task, 1)
    assert len(after) == 2, f"no task {task!r} ran"
    reported = after[1].split("TASK [", 1)[0].split("\n", 1)[1].strip()
    assert reported.startswith(outcome), reported


@pytest.mark.parametrize(
    ("settings", "task", "outcome"),
    [
        # The default: the lab manages the router over SSH, as a real router is managed.
        ({}, "Confirm the ruleset over a new connection of Ansible's own", "changed: [router]"),
        (
            {"nat_router_confirm_from": "client"},
            "by a new SSH login from nat_router_confirm_from (client)",
            "changed: [router -> client",
        ),
    ],
    ids=["over-ansibles-own-connection", "from-another-host"],
)
def test_a_changed_ruleset_is_confirmed_over_a_new_connection(lab, settings, task, outcome):
    try:
        done = converge(
            "--limit", "router", "-e", json.dumps({**settings, "nat_router_icmp_echo_rate": "9/second"})
        )
        assert_confirmed(done, task, outcome)
        assert "9/second" in loaded_ruleset(lab)
        assert not rollback_pending(lab)
    finally:
        restored = converge("--limit", "router")
        assert restored.returncode == 0, restored.stdout[-3000:]


def test_a_ruleset_that_locks_the_administrator_out_is_rolled_back(lab):
    # The reproduction of the lock-out: Ansible itself manages the router over SSH from the inside
    # network, and the new ruleset refuses new SSH from there (established connections still pass).
    good = loaded_ruleset(lab)
    boot = lab["router"].check("sha256sum /etc/nftables.conf")
    assert ssh_from_client(lab).rc == 0
    settings = '{"nat_router_router_access_from_internal": [], "nat_router_confirm_timeout": 15}'
    try:
        bad = converge("--limit", "router", "-e", settings)
        assert bad.returncode != 0
        message = " ".join(bad.stdout.split())
        assert (
            "nat_router: host router: the new ruleset could not be confirmed over a new connection from the "
            "controller (the router could not be reached" in message
        ), bad.stdout[-3000:]
        assert "The previous ruleset was restored 15 s after the apply" in message
        assert "a new connection reaches the router again" in message
        # The play failed for the router with the role's message; it did not end "unreachable".
        assert re.search(r"router\s+: ok=\d+\s+changed=\d+\s+unreachable=0\s+failed=1", bad.stdout), (
            bad.stdout[-800:]
        )
        # The play waited for the rollback: a new login works at once, the old ruleset is loaded.
        assert ssh_from_client(lab).rc == 0
        assert loaded_ruleset(lab) == good, "the unconfirmed ruleset is still loaded"
        assert not rollback_pending(lab)
        assert lab["router"].check("sha256sum /etc/nftables.conf") == boot, (
            "the unconfirmed ruleset is loaded at boot"
        )
    finally:
        restored = converge("--limit", "router")
        assert restored.returncode == 0, restored.stdout[-3000:]


def test_a_confirmation_over_a_connection_open_before_the_apply_is_refused(lab):
    # An SSH master connection (ControlMaster), opened before the apply, as Ansible's own would be
    # without the role's reset: a confirmation multiplexed over it must not count.
    mux = "-o ControlPath=/root/.ssh/nt-test-mux"
    router = "root@10.77.0.2"
    client = lab["client"]
    client.check(f"{SSH} {mux} -o ControlMaster=yes -o ControlPersist=120 -fN {router}")
    try:
        peer_ip, peer_port, ip, port = client.check(f"{SSH} {mux} {router} 'echo $SSH_CONNECTION'").split()
        old = f"{peer_ip}:{peer_port} -> {ip}:{port}"
        # The confirmed ruleset applied again as its own candidate: nothing changes but the proof.
        client.check(f"{SSH} {mux} {router} nattrail ruleset apply --candidate /etc/nftables.conf")
        assert rollback_pending(lab)
        refused = client.run(f"{SSH} {mux} {router} nattrail ruleset confirm")
        assert refused.rc == 1, refused.stdout
        error = json.loads(refused.stderr)["error"]
        assert f"came over {old}, a connection that was already open" in error
        assert rollback_pending(lab), "a refused confirmation cancelled the rollback"
        fresh = json.loads(
            client.check(f"{SSH} -o ControlMaster=no -o ControlPath=none {router} nattrail ruleset confirm")
        )
        assert fresh["event"] == "confirmed"
        assert fresh["over"].startswith("10.77.0.10:") and fresh["over"] != old
        assert not rollback_pending(lab)
    finally:
        client.run(f"ssh {mux} -O exit {router}")
        lab["router"].run("systemctl stop nattrail-rollback.timer")


def test_bad_inventory_fails_the_play_before_the_router_changes(lab):
    state = (
        "sha256sum /etc/nftables.conf /etc/nftables.conf.candidate; nft list table inet nattrail | sha256sum"
    )
    before = lab["router"].check(state)
    bad = converge("--limit", "router", "-e", '{"nat_router_dnat": [{"port": 70000, "target": "10.99.0.1"}]}')
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
    bad = converge("--limit", "router", "-e", '{"masq_logger_protocols": ["tcp", "sctp"]}')
    assert bad.returncode != 0
    message = " ".join(bad.stdout.split())
    assert "masq_logger_protocols" in message and "sctp" in message, bad.stdout[-2000:]
    assert "[router]" in message
    assert lab["router"].check(state) == before
