"""ulogd, seen across hosts: what the scanner and the client do to the router shows up in the router's
packet and flow JSON and as rows in PostgreSQL on the server, through logrotate and a database outage.

Addresses come from the lab topology (NATTRAIL_LAB_TOPOLOGY), so the checks run on any copy of the
lab. NATTRAIL_LAB_INVENTORY and NATTRAIL_LAB_PLAYBOOK name the inventory and playbook the converge
check runs (default: inventory/lab and site.yml).
"""

from __future__ import annotations

import json
import secrets
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from conftest import converge as lab_converge
from conftest import start_converge

PACKETS = "/var/log/ulog/packets.json"
FLOWS = "/var/log/ulog/flows.json"
PSQL = "runuser -u postgres -- psql -X -q -At -F '|' -d ulogd"
PG_UNIT = "postgresql@15-main"

# On the scanner: `count` TCP SYNs to dst:dport at `rate` per second from source ports first,
# first+1, ... with sequence number i and the given window, built by hand (raw socket) so that each
# packet is known exactly. Prints the number sent.
SYN_SENDER = """
import socket, struct, sys, time
dst, dport, first, count, rate, window = sys.argv[1], *map(int, sys.argv[2:4]), int(sys.argv[4]), \\
    float(sys.argv[5]), int(sys.argv[6])
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
probe.connect((dst, 9))
pseudo = socket.inet_aton(probe.getsockname()[0]) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, 20)
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
start = time.monotonic()
for i in range(count):
    header = struct.pack("!HHIIBBHHH", first + i, dport, i, 0, 5 << 4, 0x02, window, 0, 0)
    header = header[:16] + struct.pack("!H", checksum(pseudo + header)) + header[18:]
    s.sendto(header, (dst, 0))
    delay = start + (i + 1) / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
print(count)
"""

# On the client: connect, talk, hold, then reset: an RST close ends the conntrack entry (and so
# the flow) 10 s later, where an orderly close waits out TIME_WAIT's 120 s.
RESET_CLIENT = """
import socket, struct, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(s.getsockname()[1], flush=True)
s.sendall(b"hello from the inside\\n" * 50)
time.sleep(float(sys.argv[3]))
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()
"""


def tag_port() -> int:
    """A destination port no other check uses, so records of this run are told apart."""
    return 41000 + secrets.randbelow(8000)


def json_records(host, path: str, key: str, value: int) -> list[dict]:
    """Records of the JSON file (and its rotated copy) whose key has this value; every line must parse."""
    needle = shlex.quote(f'"{key}": {value}')
    out = host.run(f"grep -h -F {needle} {path} {path}.1 2>/dev/null").stdout
    records = [json.loads(line) for line in out.splitlines()]
    return [r for r in records if r.get(key) == value]


def wait_for(what: str, probe: Callable[[], object], timeout: float = 20.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: nothing after {timeout:.0f} s")
        time.sleep(0.5)


def sql(lab, query: str, *values: int) -> list[list[str]]:
    """Rows of a query on the collector; values (integers only) fill its %d placeholders."""
    out = lab["server"].check(f"{PSQL} -c {shlex.quote(query % values)}")
    return [line.split("|") for line in out.splitlines() if line]


NUDGE_PORT = 40999


def nudge(lab, flows: bool = False) -> None:
    """Give ulogd one more event to log. After the database came back, ulogd retries (and replays its
    backlog) only when it has something new to write: a quiet router keeps its last rows in memory."""
    if flows:
        client, server, router = lab["client"], lab["server"], lab["router"]
        send = f"import socket; socket.socket(2, 2).sendto(b'x', ('{server.address}', {NUDGE_PORT}))"
        client.run(f"python3 -c {shlex.quote(send)}")
        router.run(f"conntrack -D -p udp --orig-port-dst {NUDGE_PORT}")
    else:
        args = f"{lab['router'].address} {NUDGE_PORT} 40999 1 100 1024"
        lab["scanner"].run(f"python3 -c {shlex.quote(SYN_SENDER)} {args}")


def logged_rows(lab, what: str, query: str, *values: int, flows: bool = False) -> list[list[str]]:
    """Rows of a query on the collector, waited for while ulogd gets new events to log."""

    def found() -> list[list[str]]:
        result = sql(lab, query, *values)
        if not result:
            nudge(lab, flows)
        return result

    return wait_for(what, found, 30)  # type: ignore[return-value]


def interfaces(host) -> dict[str, str]:
    """Address -> interface name on a lab host."""
    rows = host.check("ip -o -4 addr show").splitlines()
    return {row.split()[3].split("/")[0]: row.split()[1].split("@")[0] for row in rows}


def send_syns(lab, dport: int, first: int, count: int, rate: float) -> str:
    args = [lab["router"].address, str(dport), str(first), str(count), str(rate), "29200"]
    return lab["scanner"].background(SYN_SENDER, *args)


def unit_done(host, unit: str, timeout: float) -> None:
    wait_for(f"{unit} to finish", lambda: host.run(f"systemctl is-active --quiet {unit}").rc != 0, timeout)


@pytest.fixture
def postgresql_back(lab) -> Iterator[None]:
    """Whatever a check does to PostgreSQL and ulogd, both run again afterwards."""
    yield
    lab["server"].run(f"systemctl start {PG_UNIT}")
    wait_for("PostgreSQL", lambda: lab["server"].run("runuser -u postgres -- pg_isready -q").rc == 0)
    # Restarts ulogd if it came up while the database was down, as the timer would within a minute.
    lab["router"].run("systemctl start nattrail-ulogd-reattach.service")


# ------------------------------------------------------------------------------------ packet stack


def test_scanner_probe_is_a_json_line_and_a_row_with_flags_window_and_prefix(lab):
    router, scanner = lab["router"], lab["scanner"]
    dport, sport = tag_port(), 20000 + secrets.randbelow(20000)
    probe = (
        "from scapy.all import IP, TCP, send; "
        f"send(IP(dst='{router.address}', ttl=51)/TCP(sport={sport}, dport={dport}, flags='S', "
        "window=31337, seq=12345), verbose=0)"
    )
    scanner.check(f'python3 -c "{probe}"')
    record = wait_for("the probe in packets.json", lambda: json_records(router, PACKETS, "dest_port", dport))[
        0
    ]
    outside = interfaces(router)[router.address]
    assert record["src_ip"] == scanner.address and record["dest_ip"] == router.address
    assert record["src_port"] == sport
    assert record["oob.prefix"] == "nattrail-in-drop: "
    assert (record["oob.in"], record["oob.out"]) == (outside, "")
    # The SYN window is what gives a custom scanner away.
    assert record["tcp.window"] == 31337 and record["tcp.seq"] == 12345
    flags = {f: record[f"tcp.{f}"] for f in ("syn", "ack", "fin", "rst", "psh", "urg")}
    assert flags == {"syn": 1, "ack": 0, "fin": 0, "rst": 0, "psh": 0, "urg": 0}
    assert record["ip.protocol"] == 6 and record["ip.totlen"] == 40 and record["ip.ttl"] == 51
    assert record["dvc"] == "router"
    # The timestamp is UTC: the same instant as the kernel's epoch seconds in the record.
    stamp = datetime.fromisoformat(record["timestamp"]).replace(tzinfo=UTC)
    assert stamp.timestamp() == pytest.approx(
        record["oob.time.sec"] + record["oob.time.usec"] / 1e6, abs=1e-3
    )

    query = (
        "SELECT oob_prefix, oob_in, host(ip_saddr_str), host(ip_daddr_str), tcp_sport, tcp_window, tcp_syn, "
        "tcp_ack, ip_ttl FROM ulog WHERE tcp_dport = %d"
    )
    assert logged_rows(lab, "the probe in PostgreSQL", query, dport) == [
        ["nattrail-in-drop: ", outside, scanner.address, router.address, str(sport), "31337", "t", "f", "51"]
    ]


def test_forwarded_ping_is_logged_with_icmp_type_code_and_both_interfaces(lab):
    router, scanner, client = lab["router"], lab["scanner"], lab["client"]
    ident = 1000 + secrets.randbelow(59000)
    probe = (
        "from scapy.all import IP, ICMP, send; "
        f"send(IP(dst='{client.address}')/ICMP(type=8, code=0, id={ident}, seq=7), verbose=0)"
    )
    scanner.check(f'python3 -c "{probe}"')
    record = wait_for(
        "the ping in packets.json", lambda: json_records(router, PACKETS, "icmp.echoid", ident)
    )[0]
    addresses = interfaces(router)
    inside = next(name for addr, name in addresses.items() if name not in ("lo", addresses[router.address]))
    assert record["oob.prefix"] == "nattrail-fwd-drop: "
    assert (record["oob.in"], record["oob.out"]) == (addresses[router.address], inside)
    assert (record["icmp.type"], record["icmp.code"], record["icmp.echoseq"]) == (8, 0, 7)
    assert (record["src_ip"], record["dest_ip"]) == (scanner.address, client.address)
    query = "SELECT icmp_type, icmp_code, oob_out FROM ulog WHERE icmp_echoid = %d"
    assert logged_rows(lab, "the ping in PostgreSQL", query, ident) == [["8", "0", inside]]


def test_every_line_of_both_files_is_a_json_object(lab, listen):
    # This check's own records first: a logged probe and a finished connection, so that neither
    # file can pass by being empty.
    router, dport = lab["router"], tag_port()
    unit = send_syns(lab, dport, 31000, 1, 10)
    unit_done(lab["scanner"], unit, 10)
    peer = listen("server", dport)
    lab["client"].check(
        'python3 -c "import socket, struct; '
        f"s=socket.create_connection(('203.0.113.10', {dport}), timeout=5); "
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0)); s.close()\""
    )
    peer()
    wait_for("the probe's packet line", lambda: json_records(router, PACKETS, "dest_port", dport), 15)
    wait_for("the connection's flow line", lambda: json_records(router, FLOWS, "orig.l4.dport", dport), 40)
    for path in (PACKETS, FLOWS):
        text = lab["router"].check(f"cat {path}")
        lines = text.splitlines()
        assert text == "" or text.endswith("\n"), f"{path}: last line unfinished"
        for number, line in enumerate(lines, 1):
            record = json.loads(line)
            assert isinstance(record, dict) and record["dvc"] == "router", f"{path}:{number}: {line}"


# -------------------------------------------------------------------------------------- flow stack


def test_finished_client_connection_is_a_flow_with_both_tuples_and_counters(lab, listen):
    router, client, server = lab["router"], lab["client"], lab["server"]
    port = tag_port()
    listen("server", port)
    sport = int(client.check(f"python3 -c {shlex.quote(RESET_CLIENT)} {server.address} {port} 0.5").strip())
    # Masqueraded: the reply tuple runs between the server and the router's outside address.
    flow = wait_for("the flow in flows.json", lambda: json_records(router, FLOWS, "orig.l4.dport", port), 30)[
        0
    ]
    assert (flow["src_ip"], flow["dest_ip"], flow["orig.l4.sport"]) == (client.address, server.address, sport)
    assert (flow["reply.ip.saddr.str"], flow["reply.ip.daddr.str"]) == (server.address, router.address)
    assert flow["reply.l4.sport"] == port
    assert flow["ct.event"] == 4, "a DESTROY event: the flow is finished"
    assert flow["orig.raw.pktcount"] >= 4, "SYN, ACK, data, RST at least"
    assert flow["orig.raw.pktlen"] > 50 * 22, "the client's 1100 bytes and headers"
    assert flow["reply.raw.pktcount"] >= 2
    assert flow["flow.end.sec"] >= flow["flow.start.sec"] > 0

    query = (
        "SELECT host(orig_ip_saddr_str), orig_l4_sport, host(reply_ip_daddr_str), orig_raw_pktcount, "
        "orig_raw_pktlen, reply_raw_pktcount, reply_raw_pktlen FROM ulog2_ct WHERE orig_l4_dport = %d"
    )
    found = logged_rows(lab, "the flow in PostgreSQL", query, port, flows=True)
    counters = [
        flow[k] for k in ("orig.raw.pktcount", "orig.raw.pktlen", "reply.raw.pktcount", "reply.raw.pktlen")
    ]
    assert found == [[client.address, str(sport), router.address, *map(str, counters)]]


# ------------------------------------------------------------------------------ daemon and database


def test_ulogd_runs_as_its_own_user_with_net_admin_only(lab):
    router = lab["router"]
    pid = router.check("systemctl show -P MainPID ulogd2").strip()
    status = dict(
        line.split(":\t", 1) for line in router.check(f"cat /proc/{pid}/status").splitlines() if ":\t" in line
    )
    assert status["Uid"].split()[0] == router.check("id -u ulog").strip()
    assert int(status["CapEff"], 16) == 1 << 12 and int(status["CapBnd"], 16) == 1 << 12, "CAP_NET_ADMIN only"
    assert status["NoNewPrivs"].strip() == "1"
    assert "PGPASSFILE" in router.check(f"tr '\\0' '\\n' < /proc/{pid}/environ")
    password = router.check("cut -d: -f5- /etc/ulogd.pgpass").strip()
    assert password and password not in router.check("cat /etc/ulogd.conf")
    assert router.check("stat -c '%U %a' /etc/ulogd.pgpass").split() == ["ulog", "600"]


def test_only_the_router_may_log_in_and_it_may_only_add_rows(lab):
    router, scanner, server = lab["router"], lab["scanner"], lab["server"]
    connect = f"PGPASSFILE=/etc/ulogd.pgpass psql -X -At 'host={server.address} dbname=ulogd user=ulogd' -c"
    assert router.check(f"{connect} 'SELECT current_user'").strip() == "ulogd"
    # It may read the row ids of ulog2 (Debian's packet procedure updates rows by _id), not the logs.
    for statement in (
        "SELECT ip_saddr_str FROM ulog2",
        "SELECT * FROM ulog",
        "SELECT * FROM ulog2_ct",
        "DELETE FROM ulog2",
        "UPDATE ulog2_ct SET ct_mark = 1",
        "CREATE TABLE t (x int)",
    ):
        denied = router.run(f"{connect} {shlex.quote(statement)}")
        assert denied.rc != 0 and "permission denied" in denied.stderr, (statement, denied.stderr)
    password = router.check("cut -d: -f5- /etc/ulogd.pgpass").strip()
    other = scanner.run(f"PGPASSWORD={shlex.quote(password)} {connect.split(' ', 1)[1]} 'SELECT 1'")
    assert other.rc != 0 and "no pg_hba.conf entry" in other.stderr, other.stderr


def test_collector_loaded_the_schema_debian_ships_with_ulogd2(lab):
    shipped = lab["router"].check("zcat /usr/share/doc/ulogd2/pgsql-ulogd2.sql.gz | sha256sum").split()[0]
    loaded = (
        lab["server"].check("sha256sum /usr/local/share/nattrail/log_collector/pgsql-ulogd2.sql").split()[0]
    )
    assert loaded == shipped
    assert sql(lab, "SELECT version FROM _format") == [["6"]]


# ------------------------------------------------------------------------------ rotation and outage


def test_rotation_while_packets_arrive_loses_no_line(lab):
    router = lab["router"]
    dport, count = tag_port(), 300
    unit = send_syns(lab, dport, 10000, count, 50)
    wait_for("the first packets", lambda: json_records(router, PACKETS, "dest_port", dport), 10)
    router.check("logrotate -f /etc/logrotate.d/nattrail-ulogd")
    unit_done(lab["scanner"], unit, 30)

    def both() -> tuple[int, int] | None:
        new = len(json_records(router, PACKETS, "dest_port", dport)) - len(
            json_records(router, PACKETS + ".1", "dest_port", dport)
        )
        old = len(json_records(router, PACKETS + ".1", "dest_port", dport))
        return (old, new) if old + new == count else None

    old, new = wait_for(f"all {count} packets across both files", both, 15)  # type: ignore[misc]
    assert old > 0 and new > 0, "ulogd wrote to the rotated file, then reopened the new one"
    assert router.check(f"stat -c '%U %G %a' {PACKETS}").split() == ["ulog", "adm", "640"]


RING_GROUP, RING_SIZE, RING_PREFIX = 4199, 100, "nt-test-ring: "


@pytest.fixture
def ring_ulogd(lab) -> Iterator[Callable[[int], None]]:
    """A second ulogd on the router in ring-buffer mode, on its own NFLOG group, fed by a test rule
    that copies one destination port's packets there; same database, same connection settings."""
    router = lab["router"]
    unit = "nt-test-ulogd-ring"

    def start(dport: int) -> None:
        conf = router.check("cat /etc/ulogd.conf")
        plugins = [line for line in conf.splitlines() if line.startswith("plugin=")]
        section = conf.split("[pgsql1]\n", 1)[1].split("\n\n", 1)[0].splitlines()
        pgsql = [line for line in section if not line.startswith("backlog_")] + [
            f"ring_buffer_size={RING_SIZE}"
        ]
        g = RING_GROUP
        text = "\n".join(
            [
                "[global]",
                'logfile="stdout"',
                *plugins,
                f"stack=nflog{g}:NFLOG,base{g}:BASE,ifi{g}:IFINDEX,ip2str{g}:IP2STR,hwhdr{g}:HWHDR,pgsql{g}:PGSQL",
                f"[nflog{g}]",
                f"group={g}",
                f"[pgsql{g}]",
                *pgsql,
                "",
            ]
        )
        router.check(f"printf %s {shlex.quote(text)} > /run/{unit}.conf && chmod 644 /run/{unit}.conf")
        rule = (
            "add table inet nt_test_ulogd; "
            "add chain inet nt_test_ulogd input { type filter hook input priority -5; }; "
            f'add rule inet nt_test_ulogd input tcp dport {dport} log prefix "{RING_PREFIX}" group {g}'
        )
        router.check(f"nft {shlex.quote(rule)}")
        router.check(
            f"systemd-run --quiet --unit={unit} -p User=ulog -p AmbientCapabilities=CAP_NET_ADMIN "
            "-p Environment=PGPASSFILE=/etc/ulogd.pgpass -p Environment=TZ=UTC "
            f"/usr/sbin/ulogd -c /run/{unit}.conf"
        )
        wait_for(
            "the ring ulogd to bind its group",
            lambda: f" {g} " in f" {router.check('cat /proc/net/netfilter/nfnetlink_log')}",
        )

    yield start
    router.run(f"systemctl stop {unit}; nft delete table inet nt_test_ulogd; rm -f /run/{unit}.conf")


def sports(lab, dport: int, prefix: str = "nattrail-in-drop: ") -> list[int]:
    """Source ports of the rows one ulogd (told apart by the log prefix) wrote for this port, by row id."""
    rows = sql(lab, "SELECT tcp_sport, oob_prefix FROM ulog WHERE tcp_dport = %d ORDER BY _id", dport)
    return [int(sport) for sport, logged_prefix in rows if logged_prefix == prefix]


def test_database_outage_of_30s_loses_nothing_with_the_backlog(lab, ring_ulogd, postgresql_back):
    """The scanner sends two streams at 20 packets/s for 50 s; PostgreSQL stops for 30 s from the 5th.
    Stream A goes through the role's ulogd (backlog); stream B also through a second ulogd in ring
    mode with room for 100 statements. Backlog: every packet becomes a row, in order. Ring: the first
    100 statements of the outage wait in the ring, later ones are dropped until the database is back;
    the rows kept are in order."""
    router, server, scanner = lab["router"], lab["server"], lab["scanner"]
    backlog_port, ring_port = tag_port(), tag_port() + 1000
    count, rate, first = 1000, 20, 10000
    ring_ulogd(ring_port)
    started = time.monotonic()
    senders = [send_syns(lab, port, first, count, rate) for port in (backlog_port, ring_port)]
    # The outage starts once about 5 s of the ring stream are rows.
    wait_for("rows before the outage", lambda: len(sports(lab, ring_port, RING_PREFIX)) >= 5 * rate, 30)
    before_outage = max(sports(lab, ring_port, RING_PREFIX), default=first - 1)
    server.check(f"systemctl stop {PG_UNIT}")
    # At most this many packets of a stream were sent while the database still answered.
    sent_before_outage = rate * (time.monotonic() - started) + 1
    time.sleep(30)
    server.check(f"systemctl start {PG_UNIT}")
    for unit in senders:
        unit_done(scanner, unit, 40)
    sent = list(range(first, first + count))
    # Nothing was lost before ulogd: the JSON file has every packet of both streams (the kernel hands
    # NFLOG batches over within a second).
    for port in (backlog_port, ring_port):
        wait_for(
            f"{count} JSON lines", lambda p=port: len(json_records(router, PACKETS, "dest_port", p)) >= count
        )
        assert len(json_records(router, PACKETS, "dest_port", port)) == count

    wait_for("every backlogged row", lambda: len(sports(lab, backlog_port)) >= count, 30)
    assert sports(lab, backlog_port) == sent, "backlog: one row per packet sent, in the order sent"

    kept = sports(lab, ring_port, RING_PREFIX)
    assert kept == sorted(kept) and len(set(kept)) == len(kept), "ring: rows in order, none twice"
    missing = sorted(set(sent) - set(kept))
    assert missing, "ring: 600 packets during the outage cannot all fit 100 slots"
    assert missing == list(range(missing[0], missing[-1] + 1)), "ring: one run of newest packets dropped"
    assert missing[0] > before_outage + RING_SIZE - 1, "ring: the first statements of the outage are kept"
    # And no more than the ring holds: the first one dropped comes right after a full ring.
    assert missing[0] <= first + sent_before_outage + RING_SIZE + rate, (
        f"ring: more than {RING_SIZE} statements were kept during the outage ({missing[0]})"
    )
    assert kept[-1] == sent[-1], "ring: everything after the database returned is there"


def test_ulogd_started_while_the_database_is_down_reattaches_when_it_returns(lab, postgresql_back):
    router, server, scanner = lab["router"], lab["server"], lab["scanner"]
    # Nothing here starts the check by hand: the timer the role installs runs it (every 10 s in the
    # lab, inventory/lab/group_vars/routers/ulogd.yml).
    server.check(f"systemctl stop {PG_UNIT}")
    router.check("systemctl restart ulogd2")
    since = router.check("date +%s").strip()

    def check_said() -> str:
        return router.check(f"journalctl -u nattrail-ulogd-reattach -o cat --since @{since}")

    wait_for(
        "the timer's check while the database is down", lambda: "does not answer yet" in check_said(), 30
    )
    assert "ulogd runs without its PostgreSQL output" in check_said()
    assert router.check("systemctl is-active ulogd2").strip() == "active", "the JSON stacks run on"
    before = router.check("systemctl show -P MainPID ulogd2")
    server.check(f"systemctl start {PG_UNIT}")
    wait_for("PostgreSQL", lambda: server.run("runuser -u postgres -- pg_isready -q").rc == 0)
    wait_for(
        "the timer to restart ulogd", lambda: router.check("systemctl show -P MainPID ulogd2") != before, 30
    )
    dport = tag_port()
    unit = send_syns(lab, dport, 30000, 5, 10)
    unit_done(scanner, unit, 10)
    query = "SELECT count(*) FROM ulog WHERE tcp_dport = %d HAVING count(*) = 5"
    logged_rows(lab, "rows once reattached", query, dport)


def test_a_converge_waits_for_a_database_not_ready_yet_instead_of_failing(lab, postgresql_back):
    """site.yml configures a collector and its routers at the same time, so on a fresh site a router
    can start ulogd before the database is ready. The converge's last ulogd check then waits
    (ulogd_pgsql_start_wait), reattaching as the timer does. Here the database stays away for 20 s
    after that check first retries: longer than the 10 looks a check gets for any other failure."""
    router, server, scanner = lab["router"], lab["server"], lab["scanner"]
    server.check(f"systemctl stop {PG_UNIT}")
    router.check("systemctl restart ulogd2")
    run = start_converge("--limit", "routers")
    assert run.stdout is not None
    seen = []
    for line in run.stdout:
        seen.append(line)
        # With strategy free a task's banner is printed with its result, after the retries; each
        # retry is printed as it happens.
        if "FAILED - RETRYING: [router]: Check that ulogd runs" in line:
            break
    else:
        pytest.fail("ulogd's check never waited for the database:\n" + "".join(seen[-40:]))
    time.sleep(20)  # the outage this test is about, not a wait for something to happen
    server.check(f"systemctl start {PG_UNIT}")
    rest, _ = run.communicate(timeout=180)
    output = "".join(seen) + rest
    assert run.returncode == 0, output[-3000:]
    dport = tag_port()
    unit = send_syns(lab, dport, 31000, 5, 10)
    unit_done(scanner, unit, 10)
    query = "SELECT count(*) FROM ulog WHERE tcp_dport = %d HAVING count(*) = 5"
    logged_rows(lab, "rows after the converge waited for the database", query, dport)


# ------------------------------------------------------------------------------------ inventory


def converge(*extra: str) -> subprocess.CompletedProcess[str]:
    return lab_converge("--limit", "routers", *extra)


def test_bad_ulogd_inventory_fails_before_the_router_changes(lab):
    state = "sha256sum /etc/ulogd.conf /etc/nftables.conf; nft list table inet nattrail | sha256sum"
    before = lab["router"].check(state)
    bad = converge(
        "-e",
        json.dumps(
            {
                "ulogd_packet_stacks": [{"group": 1, "nflog": {"netlink_qthreshhold": 1}}, {"group": 1}],
                "ulogd_pgsql_ring_buffer_size": 1000,
                "ulogd_pgsql_backlog_memcap": 1000000,
                "nat_router_icmp_echo_rate": "9/second",
            }
        ),
    )
    assert bad.returncode != 0
    message = " ".join(bad.stdout.split())
    head = "ulogd: host router: variable "
    for expected in [
        "ulogd_packet_stacks, entry 0.nflog.netlink_qthreshhold (1): unknown NFLOG plugin option",
        "ulogd_packet_stacks, entry 1.group (1): NFLOG group 1 is already read by entry 0",
        "ulogd_pgsql_ring_buffer_size, entry value (1000): the ring buffer and the backlog",
    ]:
        assert head + expected in message, bad.stdout[-3000:]
    # nat_router's change (another ping rate) was not applied either: the play stopped first.
    after = lab["router"].check(state)
    if after != before:
        converge()  # put the router back for the checks that follow, then fail
    assert after == before, "the router changed before the ulogd inventory was checked"
