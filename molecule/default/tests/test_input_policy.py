"""The router's input policy and its DNAT entries, proven with packets from the outside: what each
rule does is seen in the answer (or the silence) the sender gets, in the router's drop counters and
in its packet log. Each test puts back what it changes."""

from __future__ import annotations

import shlex
import uuid

from conftest import ROUTER_OUT, drops, logged_packets, spoofed_syn, try_connect

# One UDP datagram from a chosen source address and port.
UDP_SEND = (
    "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    "s.bind((sys.argv[1], int(sys.argv[2]))); s.sendto(b'nattrail', (sys.argv[3], int(sys.argv[4])))"
)

# A one-shot UDP listener: records the sender of the first datagram.
UDP_LISTENER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(60)
data, peer = s.recvfrom(2048)
with open(sys.argv[2], "w") as f:
    f.write("%s:%d\\n" % peer)
"""


def send_udp(lab, source: tuple[str, int], destination: tuple[str, int]) -> None:
    """One datagram from the scanner, from ``source`` (address, port) to ``destination``."""
    args = " ".join(shlex.quote(str(a)) for a in (*source, *destination))
    lab["scanner"].check(f"python3 -c {shlex.quote(UDP_SEND)} {args}")


def listen_udp(lab, host: str, port: int):
    out = f"/run/nt-test-udp-{port}-{uuid.uuid4().hex[:6]}"
    unit = lab[host].background(UDP_LISTENER, str(port), out)
    lab[host].wait_output(f"ss -Hlun 'sport = :{port}'")
    return unit, lambda: lab[host].wait_output(f"cat {out}")


def test_ident_is_answered_with_a_reset_at_once(lab):
    before = drops(lab)["drop_ident_reset"]
    attempt = try_connect(lab, "scanner", ROUTER_OUT, 113)
    # A reset, not silence: a mail server asking ident gets its answer at once, not after a timeout.
    assert attempt.rc != 0 and "Connection refused" in attempt.stderr, attempt.stderr
    assert drops(lab)["drop_ident_reset"] > before


def test_noisy_udp_is_dropped_silently_while_other_unsolicited_udp_is_logged(lab):
    scanner = lab["scanner"].address
    before = drops(lab)
    # netbios-ns (137) is a noisy port; 40137 is not. The noisy datagram goes first, so had it been
    # logged, its record would be there before the other one's.
    send_udp(lab, (scanner, 50137), (ROUTER_OUT, 137))
    send_udp(lab, (scanner, 50138), (ROUTER_OUT, 40137))
    other = logged_packets(lab["router"], lambda r: r.get("src_ip") == scanner and r.get("src_port") == 50138)
    assert other and other[0]["oob.prefix"] == "nattrail-in-drop: " and other[0]["dest_port"] == 40137
    noisy = logged_packets(
        lab["router"], lambda r: r.get("src_ip") == scanner and r.get("src_port") == 50137, timeout=0
    )
    assert noisy == [], "a noisy UDP datagram was logged"
    after = drops(lab)
    assert after["drop_noisy_udp"] == before["drop_noisy_udp"] + 1
    assert after["drop_in"] >= before["drop_in"] + 1


def test_a_link_local_source_arriving_outside_is_dropped_and_logged(lab):
    logged, counted = spoofed_syn(lab, "169.254.7.7", 40407)
    assert logged and logged[0]["oob.prefix"] == "nattrail-spoof: ", logged
    assert counted >= 1
    assert "40407" not in lab["router"].run("conntrack -L -p tcp --dport 22").stdout


def test_a_blocklisted_source_is_dropped_and_let_in_once_removed(lab):
    router, scanner = lab["router"], lab["scanner"].address
    assert try_connect(lab, "scanner", ROUTER_OUT, 22).rc == 0, "ssh is an inbound service"
    before = drops(lab)["drop_blocklist"]
    router.check(f"nft add element inet nattrail blocklist {{ {scanner} timeout 5m }}")
    try:
        attempt = try_connect(lab, "scanner", ROUTER_OUT, 22, timeout=2)
        assert attempt.rc != 0 and "timed out" in attempt.stderr, attempt.stderr
        assert drops(lab)["drop_blocklist"] > before
    finally:
        router.check(f"nft delete element inet nattrail blocklist {{ {scanner} }}")
    assert try_connect(lab, "scanner", ROUTER_OUT, 22).rc == 0, "a source taken off the blocklist is let in"


def test_internal_hosts_reach_any_service_of_the_router(lab, listen):
    # The lab leaves nat_router_router_access_from_internal at its default, "all".
    listen("router", 8081)
    assert try_connect(lab, "client", "10.77.0.2", 8081).rc == 0
    attempt = try_connect(lab, "scanner", ROUTER_OUT, 8081, timeout=2)
    assert attempt.rc != 0 and "timed out" in attempt.stderr, "the outside must not reach it"


def test_a_udp_dnat_entry_lands_on_the_client_with_the_original_source(lab):
    unit, peer = listen_udp(lab, "client", 5353)
    try:
        send_udp(lab, (lab["scanner"].address, 50353), (ROUTER_OUT, 5353))
        assert peer() == f"{lab['scanner'].address}:50353"
    finally:
        lab["client"].run(f"systemctl stop {unit}")


def test_an_all_protocols_dnat_entry_forwards_every_port_of_its_source_only(lab, listen):
    # The lab's ALL entry is for 203.0.113.21, a second address the scanner takes for this test.
    scanner = lab["scanner"]
    device = scanner.check("ip -o -4 addr show to 203.0.113.20").split()[1]
    scanner.check(f"ip addr add 203.0.113.21/24 dev {device}")
    unit = None
    try:
        peer = listen("client", 9911)
        code = (
            "import socket; s = socket.socket(); s.bind(('203.0.113.21', 0)); s.settimeout(3); "
            "s.connect(('203.0.113.2', 9911)); s.close()"
        )
        scanner.check(f'python3 -c "{code}"')
        assert peer().startswith("203.0.113.21:"), "TCP through the ALL entry, original source kept"
        unit, udp_peer = listen_udp(lab, "client", 9912)
        send_udp(lab, ("203.0.113.21", 50912), (ROUTER_OUT, 9912))
        assert udp_peer() == "203.0.113.21:50912", "UDP through the ALL entry, original source kept"
        # The scanner's own address is not the entry's source: the same port stays closed to it.
        listen("client", 9913)
        attempt = try_connect(lab, "scanner", ROUTER_OUT, 9913, timeout=2)
        assert attempt.rc != 0 and "timed out" in attempt.stderr, attempt.stderr
    finally:
        if unit:
            lab["client"].run(f"systemctl stop {unit}")
        scanner.run(f"ip addr del 203.0.113.21/24 dev {device}")
