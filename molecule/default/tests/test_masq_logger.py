"""The accountability trail, seen across hosts: users on the client open connections to the server
through the router; the router's masquerade log names them, and `nattrail who` finds them again
from the masquerader's port and a time alone."""

from __future__ import annotations

import json
import secrets
import shlex
import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

LOG = "/var/log/nattrail/masq.log"
SERVER_PORT = 31337

# On the server: accept connections, note each peer (the masquerader's address and port as the
# server sees it), read the greeting, answer, and wait for the client to go.
ACCEPTOR = """
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
def serve(c, peer):
    with open(sys.argv[2], "a") as f:
        f.write("%s:%d\\n" % peer)
    try:
        c.settimeout(30)
        if c.recv(4096):
            c.sendall(b"welcome " * 25)
        while c.recv(4096):
            pass
    except OSError:
        pass
    c.close()
while True:
    c, peer = s.accept()
    threading.Thread(target=serve, args=(c, peer), daemon=True).start()
"""

# On the client, run as a given user: connect, talk, hold, then reset (an RST close ends the
# conntrack entry 10 s later instead of after TIME_WAIT's 120 s); print the local port.
CLIENT = """
import socket, struct, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(s.getsockname()[1], flush=True)
hold = float(sys.argv[3])
if hold > 0:
    s.sendall(b"hello from the inside " * 10)
    s.recv(4096)
    time.sleep(hold)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
"""

# On the client: `count` connections at `rate` per second, each reset at once; writes their local
# ports, one per line, to `out` when all are done.
# Each connection from a source port of its own (first_port + i): they are closed with a reset, which
# leaves no TIME_WAIT, so the kernel may otherwise hand the same port to a later connection of the
# stream, and the test tells connections apart by their client port.
STREAM = """
import socket, struct, sys, time
address, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[5]
count, rate, first_port = int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[6])
ports, start = [], time.monotonic()
for i in range(count):
    time.sleep(max(0.0, start + i / rate - time.monotonic()))
    s = socket.create_connection((address, port), timeout=5, source_address=("", first_port + i))
    ports.append(s.getsockname()[1])
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
with open(out + ".tmp", "w") as f:
    f.write("".join("%d\\n" % p for p in ports))
import os; os.rename(out + ".tmp", out)
"""

# Replaces oidentd on the client: each query gets the next of a set of hostile answers.
HOSTILE_IDENTD = r"""
import socket, threading, time
answers = [
    lambda q: b"A" * 10240,                                           # 10 KB, no line end
    # control characters, an ANSI escape, U+2028 and bad UTF-8 in the user
    lambda q: q + b" : USERID : UNIX : ev\x1b[31mil\x00us\x07er\xe2\x80\xa8x\xff\xfe\r\n",
    lambda q: b"\x00\x01garbage\x7f no colons at all\r\n",             # malformed
    lambda q: None,                                                   # never answers
]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 113))
s.listen(16)
n = 0
def serve(c, answer):
    q = c.recv(100).strip()
    reply = answer(q)
    if reply is None:
        time.sleep(30)
    else:
        c.sendall(reply)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c, answers[n % len(answers)]), daemon=True).start()
    n += 1
"""


def log_records(router) -> list[dict]:
    return [json.loads(line) for line in router.check(f"cat {LOG}").splitlines()]


def wait_records(router, client_port: int, events: set[str], timeout: float = 45.0) -> dict[str, dict]:
    """The router's records for the connection from ``client_port``, once all of ``events`` are in."""
    deadline = time.monotonic() + timeout
    found: dict[str, dict] = {}
    while time.monotonic() < deadline:
        found = {r["event"]: r for r in log_records(router) if r.get("client_port") == client_port}
        if events <= found.keys():
            return found
        time.sleep(0.5)
    raise AssertionError(f"router log for client port {client_port}: wanted {sorted(events)}, got {found}")


@pytest.fixture(scope="module")
def acceptor(lab) -> Iterator[str]:
    server = lab["server"]
    peers = f"/run/nt-test-acceptor-{SERVER_PORT}"
    unit = server.background(ACCEPTOR, str(SERVER_PORT), peers)
    server.wait_output(f"ss -Hltn 'sport = :{SERVER_PORT}'")
    yield peers
    server.run(f"systemctl stop {unit}")


def connect_as(lab, user: str, hold: float = 1.0) -> int:
    command = f"python3 -c {shlex.quote(CLIENT)} 203.0.113.10 {SERVER_PORT} {hold}"
    out = lab["client"].check(f"su {user} -c {shlex.quote(command)}")
    return int(out.split()[0])


def test_alice_is_logged_with_her_connection_and_its_bytes(lab, acceptor):
    port = connect_as(lab, "alice")
    records = wait_records(lab["router"], port, {"open", "ident", "close"})
    opened, ident, closed = records["open"], records["ident"], records["close"]
    assert (opened["client_ip"], opened["server_ip"]) == ("10.77.0.10", "203.0.113.10")
    assert opened["server_port"] == SERVER_PORT
    assert opened["masq_ip"] == "203.0.113.2"
    # The server saw the masquerader's address and port that the router logged.
    assert f"203.0.113.2:{opened['masq_port']}" in lab["server"].check(f"cat {acceptor}").split()
    assert ident["user"] == "alice" and ident["ident_error"] is None
    assert opened["ct_id"] == ident["ct_id"] == closed["ct_id"]
    # 220 bytes of greeting and 200 of answer, plus headers, counted by conntrack.
    assert closed["orig_bytes"] > 220 and closed["reply_bytes"] > 200
    assert closed["orig_packets"] >= 3 and closed["reply_packets"] >= 2
    assert closed["duration"] >= 1.0


def test_bob_is_logged_as_bob(lab, acceptor):
    port = connect_as(lab, "bob", hold=0.5)
    assert wait_records(lab["router"], port, {"ident"})["ident"]["user"] == "bob"


def test_a_connection_closed_at_once_logs_an_ident_error(lab, acceptor):
    router = lab["router"]
    pid = router.check("systemctl show -p MainPID --value nattrail-masqlog").strip()
    port = connect_as(lab, "alice", hold=0)
    ident = wait_records(router, port, {"open", "ident"})["ident"]
    assert ident["user"] is None
    # The client's identd no longer knows the connection and says so (RFC 1413's NO-USER).
    assert ident["ident_error"] == "ERROR:NO-USER"
    assert router.check("systemctl show -p MainPID --value nattrail-masqlog").strip() == pid


def test_udp_is_logged_without_ident(lab):
    out = lab["client"].check(
        'python3 -c "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); '
        "s.sendto(b'q', ('203.0.113.10', 5353)); print(s.getsockname()[1])\""
    )
    records = wait_records(lab["router"], int(out), {"open"})
    assert records["open"]["proto"] == "udp"
    # A TCP connection opened after the datagram got its ident answer: a query for the datagram,
    # had one been made, would have been answered and logged by then.
    later = connect_as(lab, "bob", hold=0.5)
    assert wait_records(lab["router"], later, {"ident"})["ident"]["user"] == "bob"
    records = wait_records(lab["router"], int(out), {"open"})
    assert "ident" not in records


def test_who_names_alice_from_the_masquerader_port_and_time_alone(lab, acceptor):
    port = connect_as(lab, "alice")
    opened = wait_records(lab["router"], port, {"open", "ident"})["open"]
    # The remote admin's report: our address, a source port, a time to the second (in UTC here),
    # a little after the connection opened.
    when = datetime.strptime(opened["opened"], "%Y-%m-%dT%H:%M:%S.%fZ") + timedelta(milliseconds=1500)
    at = when.strftime("%Y-%m-%d %H:%M:%SZ")
    who = f"nattrail who --masq-port {opened['masq_port']} --at '{at}'"
    text = lab["router"].check(who)
    assert "user alice" in text
    assert f"10.77.0.10:{port}" in text
    report = json.loads(lab["router"].check(f"{who} --json"))
    [hit] = [m for m in report["matches"] if m["open_at_time"]]
    assert hit["user"] == "alice"
    nothing = lab["router"].run("nattrail who --masq-port 9 --at '2000-01-01 00:00Z'")
    assert nothing.rc == 1


def test_a_hostile_identd_does_not_corrupt_the_log(lab, acceptor):
    client, router = lab["client"], lab["router"]
    pid = router.check("systemctl show -p MainPID --value nattrail-masqlog").strip()
    client.check("systemctl stop oidentd")
    unit = client.background(HOSTILE_IDENTD)
    try:
        client.wait_output("ss -Hltn 'sport = :113'")
        ports = [connect_as(lab, "alice", hold=0.5) for _ in range(4)]
        idents = [wait_records(router, p, {"ident"})["ident"] for p in ports]
    finally:
        client.run(f"systemctl stop {unit}")
        client.check("systemctl start oidentd")
    errors = [i["ident_error"] for i in idents]
    assert errors[0] == "oversized"
    assert errors[2] == "malformed"
    assert errors[3] == "timeout"
    # The control characters are gone; what is left is printable and on one line.
    user = idents[1]["user"]
    assert user is not None and user.isprintable() and "\x1b" not in user and "evil" in user
    text = router.check(f"cat {LOG}")
    for line in text.splitlines():
        json.loads(line)
    assert router.check("systemctl show -p MainPID --value nattrail-masqlog").strip() == pid


def test_logrotate_makes_the_daemon_reopen_and_nothing_is_lost(lab, acceptor):
    router, client = lab["router"], lab["client"]
    pid = router.check("systemctl show -p MainPID --value nattrail-masqlog").strip()
    # 60 connections at 20 a second, the rotation in the middle of them.
    out = "/run/nt-test-stream-ports"
    client.run(f"rm -f {out}")
    already = len(log_records(router))
    # Below the client's ephemeral range (32768 up), and a run of ports no earlier run left behind.
    first_port = 20000 + 100 * secrets.randbelow(100)
    client.background(STREAM, "203.0.113.10", str(SERVER_PORT), "60", "20", out, str(first_port))
    # Rotate once a third of the stream is logged, so it falls inside it.
    deadline = time.monotonic() + 30
    while sum(r["event"] == "open" for r in log_records(router)[already:]) < 20:
        assert time.monotonic() < deadline, "the stream's connections are not being logged"
        time.sleep(0.05)
    router.check("logrotate -f /etc/logrotate.d/nattrail-masqlog")
    ports = {int(p) for p in client.wait_output(f"cat {out}", timeout=30).split()}
    assert len(ports) == 60
    # Every connection opened and closed exactly once, across the rotated file and the new one.
    deadline = time.monotonic() + 60
    while True:
        both = router.check(f"cat {LOG}.1 {LOG}")
        records = [json.loads(line) for line in both.splitlines()]
        mine = [(r["event"], r["client_port"]) for r in records if r.get("client_port") in ports]
        opened = sorted(p for e, p in mine if e == "open")
        closed = sorted(p for e, p in mine if e == "close")
        if len(closed) >= 60 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert opened == sorted(ports), "an open record was lost or written twice across the rotation"
    assert closed == sorted(ports), "a close record was lost or written twice across the rotation"
    rotated = [json.loads(line) for line in router.check(f"cat {LOG}.1").splitlines()]
    fresh = log_records(router)
    assert any(r.get("client_port") in ports for r in rotated), "the rotation fell before the stream"
    assert any(r.get("client_port") in ports for r in fresh), (
        "nothing of the stream in the new file: the daemon did not reopen it, or the rotation fell after"
    )
    assert any(r["event"] == "reopened" for r in fresh)
    assert router.check("systemctl show -p MainPID --value nattrail-masqlog").strip() == pid


def test_records_are_copied_to_syslog(lab, acceptor):
    port = connect_as(lab, "alice", hold=0.5)
    wait_records(lab["router"], port, {"open"})
    journal = lab["router"].wait_output(
        f"journalctl -q -t nattrail-masqlog --no-pager | grep '\"client_port\":{port},'"
    )
    assert '"event":"open"' in journal


def test_the_daemon_runs_unprivileged_with_only_net_admin(lab):
    router = lab["router"]
    pid = router.check("systemctl show -p MainPID --value nattrail-masqlog").strip()
    status = router.check(f"cat /proc/{pid}/status")
    fields = dict(line.split(":", 1) for line in status.splitlines())
    uid = fields["Uid"].split()[0]
    assert router.check(f"getent passwd {uid}").startswith("nattrail-masqlog:")
    assert int(fields["CapEff"].strip(), 16) == 1 << 12  # CAP_NET_ADMIN and nothing else
