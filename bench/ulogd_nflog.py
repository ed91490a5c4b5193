#!/usr/bin/env python3
"""Benchmark: logged packets per second ulogd's packet stack keeps up with before NFLOG drops.

On the lab (make lab-up; ansible-playbook site.yml, with ulogd's PostgreSQL output on), for each
output and each rate, the scanner sends TCP SYNs to a closed port of the router for N seconds;
nat_router's input policy logs each one to its NFLOG group and drops it. Per round this reports:
  sent      packets the scanner's raw socket sent, and the rate it reached;
  arrived   packets that reached the router's input hook (a counter in a bench-only nft table);
  written   JSON lines, or rows in PostgreSQL, for that round's destination port;
  drops     the kernel's NFLOG drop counter for ulogd's socket: the Drops column of
            /proc/net/netlink for the netlink port that /proc/net/netfilter/nfnetlink_log shows
            bound to the group (messages the kernel could not queue because ulogd did not read
            them fast enough);
  lost      arrived - written;
  ulogd cpu ulogd's user+system CPU time over the round, in % of one CPU;
  buffer    the NFLOG socket's receive buffer at the end (ulogd doubles it after each overrun).
The router's ulogd2.service is stopped for the run and replaced by a ulogd with the role's own
configuration reduced to one stack (json1, or pgsql1 with its buffer settings), started afresh for
each round so that every round begins with the configured socket buffer; ulogd2.service is started
again at the end, and the benchmark's JSON file, rows and nft table are removed.

Outputs: json (the role's JSON stack), pgsql (its PostgreSQL stack, with its buffer settings: the
backlog by default) and pgsql-ring (the same stack with a ring buffer of --ring-size statements).

Run: .venv/bin/python bench/ulogd_nflog.py [--topology lab/topology.yml] [--output json pgsql pgsql-ring]
         [--json-rates 10000,20000,...] [--pgsql-rates 500,1000,...] [--seconds 10] [--ring-size 10000]
"""

from __future__ import annotations

import argparse
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
UNIT = "nt-bench-ulogd"
CONF = f"/run/{UNIT}.conf"
BENCH_JSON = "/var/log/ulog/nt-bench.json"
PORTS = (50000, 50999)  # destination ports of the benchmark's packets, one per round
TICKS = 100  # USER_HZ: /proc/<pid>/stat counts CPU time in 1/100 s

# On the scanner: SYNs to dst:dport at a target rate for a duration, in paced bursts; prints the
# number sent and the seconds it took.
SENDER = """
import socket, struct, sys, time
dst, dport, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
probe.connect((dst, 9))
pseudo = socket.inet_aton(probe.getsockname()[0]) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, 20)
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
packets = []
for sport in range(20000, 21024):
    header = struct.pack("!HHIIBBHHH", sport, dport, sport, 0, 5 << 4, 0x02, 1024, 0, 0)
    packets.append(header[:16] + struct.pack("!H", checksum(pseudo + header)) + header[18:])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
burst = max(1, int(rate / 1000))
total = int(rate * seconds)
sent = errors = 0
start = time.monotonic()
while sent + errors < total:
    for _ in range(min(burst, total - sent - errors)):
        try:
            s.sendto(packets[(sent + errors) % 1024], (dst, 0))
            sent += 1
        except OSError:
            errors += 1
    delay = start + (sent + errors) / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
print(sent, errors, time.monotonic() - start)
"""


@dataclass
class Lab:
    router: str
    server: str
    scanner: str
    router_address: str


@dataclass
class Round:
    rate: int
    sent: int
    seconds: float
    arrived: int
    written: int
    drops: int
    cpu: float
    buffer: int


def sh(container: str, command: str, check: bool = True, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["docker", "exec", "-i", container, "sh", "-c", command],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and result.returncode != 0:
        raise SystemExit(f"{container}: {command!r} failed: {result.stderr.strip()}")
    return result.stdout


def load_lab(topology: Path) -> Lab:
    spec = yaml.safe_load(topology.read_text())
    prefix = spec["lab_container_prefix"]
    hosts = {h["name"]: h for h in spec["lab_hosts"]}
    return Lab(
        router=prefix + "router",
        server=prefix + "server",
        scanner=prefix + "scanner",
        router_address=hosts["router"]["networks"][0]["ipv4_address"],
    )


def bench_config(role_conf: str, output: str, ring_size: int) -> str:
    """The role's ulogd.conf with one stack left: the JSON one (to the bench file) or the PostgreSQL one,
    for pgsql-ring with a ring buffer of ring_size statements instead of the backlog."""
    wanted = "json1:JSON" if output == "json" else "pgsql1:PGSQL"
    lines = []
    for original in role_conf.splitlines():
        line = original
        if line.startswith("stack=") and not line.endswith(wanted):
            line = "# " + line
        if line.startswith("file=") and line.endswith('packets.json"'):
            line = f'file="{BENCH_JSON}"'
        if output == "pgsql-ring" and line.startswith(("backlog_", "ring_buffer_size")):
            continue
        lines.append(line)
        if output == "pgsql-ring" and line == 'procedure="INSERT_PACKET_FULL"':
            lines.append(f"ring_buffer_size={ring_size}")
    if not any(line.startswith("stack=") for line in lines):
        raise SystemExit(f"the router's ulogd.conf has no {wanted} stack (is ulogd's PostgreSQL output on?)")
    return "\n".join(lines) + "\n"


def nflog_socket(lab: Lab, group: int, pid: str) -> str:
    """The netlink port of ulogd's socket bound to the group (checked to be ulogd's)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = sh(lab.router, "cat /proc/net/netfilter/nfnetlink_log").split()
        table = [rows[i : i + 7] for i in range(0, len(rows), 7)]
        port = next((r[1] for r in table if r[0] == str(group)), None)
        if port and sh(lab.router, f"ls -l /proc/{pid}/fd", check=False).count("socket:") > 0:
            inode = netlink_row(lab, port)[9]
            if f"socket:[{inode}]" in sh(lab.router, f"ls -l /proc/{pid}/fd"):
                return port
        time.sleep(0.2)
    raise SystemExit(f"ulogd did not bind NFLOG group {group}")


def netlink_row(lab: Lab, port: str) -> list[str]:
    for line in sh(lab.router, "cat /proc/net/netlink").splitlines()[1:]:
        fields = line.split()
        if fields[1] == "12" and fields[2] == port:
            return fields
    raise SystemExit(f"no netlink socket with port {port}")


def cpu_ticks(lab: Lab, pid: str) -> int:
    fields = sh(lab.router, f"cat /proc/{pid}/stat").rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def written(lab: Lab, output: str, port: int) -> int:
    if output == "json":
        return int(sh(lab.router, f"grep -c -F '\"dest_port\": {port},' {BENCH_JSON} || true").strip() or 0)
    query = f"SELECT count(*) FROM tcp WHERE tcp_dport = {port:d}"  # noqa: S608 - an integer
    return int(sh(lab.server, f"runuser -u postgres -- psql -X -At -d ulogd -c {shlex.quote(query)}").strip())


def settle(lab: Lab, output: str, port: int) -> int:
    """The count once it has not grown for 3 s (the kernel flushes NFLOG within 1 s)."""
    last, since = -1, time.monotonic()
    while time.monotonic() - since < 3:
        now = written(lab, output, port)
        if now != last:
            last, since = now, time.monotonic()
        time.sleep(0.5)
    return last


@dataclass
class Daemon:
    """The benchmark's ulogd: which output it has, the NFLOG group it reads, its process."""

    output: str
    group: int
    pid: str


def run_round(lab: Lab, ulogd: Daemon, rate: int, seconds: float, port: int) -> Round:
    output, pid = ulogd.output, ulogd.pid
    nl_port = nflog_socket(lab, ulogd.group, pid)
    drops0 = int(netlink_row(lab, nl_port)[8])
    cpu0 = cpu_ticks(lab, pid)
    arrived0 = arrived_count(lab)
    args = " ".join(shlex.quote(a) for a in (lab.router_address, str(port), str(rate), str(seconds)))
    sent, errors, took = sh(lab.scanner, f"python3 - {args}", stdin=SENDER).split()
    count = settle(lab, output, port)
    arrived = arrived_count(lab) - arrived0
    if int(errors):
        print(f"  note: {errors} sends failed on the scanner", file=sys.stderr)
    return Round(
        rate=rate,
        sent=int(sent),
        seconds=float(took),
        arrived=arrived,
        written=count,
        drops=int(netlink_row(lab, nl_port)[8]) - drops0,
        cpu=(cpu_ticks(lab, pid) - cpu0) / TICKS / float(took) * 100,
        buffer=receive_buffer(lab),
    )


def arrived_count(lab: Lab) -> int:
    counter = sh(lab.router, "nft list counter inet nt_bench arrived")
    return int(re.search(r"packets (\d+)", counter).group(1))  # type: ignore[union-attr]


def receive_buffer(lab: Lab) -> int:
    """The NFLOG socket's receive buffer as ulogd last set it (it doubles it after an overrun, up to
    netlink_socket_buffer_maxsize)."""
    sizes = re.findall(
        r"(?:has been set to|increasing buffer size to) (\d+)", sh(lab.router, f"journalctl -u {UNIT} -o cat")
    )
    return int(sizes[-1]) if sizes else 0


def start_bench_ulogd(lab: Lab, output: str, ring_size: int) -> Daemon:
    role_conf = sh(lab.router, "cat /etc/ulogd.conf")
    group = int(re.search(r"\[nflog(\d+)\]", role_conf).group(1))  # type: ignore[union-attr]
    sh(lab.router, f"cat > {CONF} && chmod 644 {CONF}", stdin=bench_config(role_conf, output, ring_size))
    sh(lab.router, f"systemctl stop ulogd2 {UNIT} 2>/dev/null; rm -f {BENCH_JSON}", check=False)
    sh(
        lab.router,
        f"systemd-run --quiet --unit={UNIT} -p User=ulog -p AmbientCapabilities=CAP_NET_ADMIN "
        f"-p Environment=PGPASSFILE=/etc/ulogd.pgpass -p Environment=TZ=UTC /usr/sbin/ulogd -c {CONF}",
    )
    time.sleep(1)
    pid = sh(lab.router, f"systemctl show -P MainPID {UNIT}").strip()
    if pid in ("", "0"):
        raise SystemExit(sh(lab.router, f"journalctl -u {UNIT} -n 20 -o cat", check=False))
    return Daemon(output, group, pid)


def cleanup(lab: Lab) -> None:
    sh(
        lab.router,
        f"systemctl stop {UNIT}; rm -f {CONF} {BENCH_JSON}; nft delete table inet nt_bench",
        check=False,
    )
    sh(lab.router, "systemctl start ulogd2", check=False)
    sql = (
        f"WITH t AS (DELETE FROM tcp WHERE tcp_dport BETWEEN {PORTS[0]} AND {PORTS[1]} RETURNING _tcp_id), "  # noqa: S608
        "h AS (DELETE FROM hwhdr WHERE _hw_id IN (SELECT _tcp_id FROM t)) "
        "DELETE FROM ulog2 WHERE _id IN (SELECT _tcp_id FROM t)"
    )
    sh(lab.server, f"runuser -u postgres -- psql -X -q -d ulogd -c {shlex.quote(sql)}", check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", type=Path, default=ROOT / "lab" / "topology.yml")
    parser.add_argument(
        "--output",
        nargs="+",
        choices=["json", "pgsql", "pgsql-ring"],
        default=["json", "pgsql", "pgsql-ring"],
    )
    parser.add_argument("--ring-size", type=int, default=10000, help="statements in the pgsql-ring buffer")
    parser.add_argument("--json-rates", default="10000,20000,30000,35000,40000,60000")
    parser.add_argument("--pgsql-rates", default="500,1000,2000,2500,3000,4000")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    lab = load_lab(args.topology)
    kernel = sh(lab.router, "uname -r").strip()
    print(f"# ulogd NFLOG benchmark: kernel {kernel}, {platform.node()}, {args.seconds:g} s per round")
    sh(
        lab.router,
        "nft 'add table inet nt_bench; add counter inet nt_bench arrived; "
        "add chain inet nt_bench input { type filter hook input priority -5; }; "
        f"add rule inet nt_bench input tcp dport {PORTS[0]}-{PORTS[1]} counter name arrived'",
    )
    port = PORTS[0]
    try:
        for output in args.output:
            rates = args.json_rates if output == "json" else args.pgsql_rates
            ring = f" (ring buffer of {args.ring_size} statements)" if output == "pgsql-ring" else ""
            print(f"\n## {output}{ring}")
            columns = (
                "target/s",
                "sent",
                "reached/s",
                "arrived",
                "written",
                "lost",
                "NFLOG drops",
                "ulogd CPU",
            )
            print("| " + " | ".join((*columns, "buffer")) + " |")
            print("|" + " ---: |" * (len(columns) + 1))
            for rate in (int(r) for r in rates.split(",")):
                ulogd = start_bench_ulogd(lab, output, args.ring_size)
                result = run_round(lab, ulogd, rate, args.seconds, port)
                port += 1
                cells = (
                    rate,
                    result.sent,
                    f"{result.sent / result.seconds:.0f}",
                    result.arrived,
                    result.written,
                    result.arrived - result.written,
                    result.drops,
                    f"{result.cpu:.0f} %",
                    f"{result.buffer // 1024} KiB",
                )
                print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)
                sh(lab.router, f"systemctl stop {UNIT}", check=False)
    finally:
        cleanup(lab)


if __name__ == "__main__":
    main()
