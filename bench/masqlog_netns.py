#!/usr/bin/env python3
"""Benchmark: `nattrail masqlog`'s CPU per logged event, on this machine, without the lab.

Inside a private network namespace (``unshare --net``; nothing leaves it): connections to 127.0.0.3
are source-NATed to 127.0.0.2 by an nft rule, so conntrack marks them exactly as a masquerade on a
router does. The daemon runs from this checkout's ``src/`` with its defaults (ident on, 5/s per
client; expired connections reaped every 2 s), the client opens connections at a fixed rate and
resets them (SO_LINGER 0), so each entry dies --close-timeout seconds later and a DESTROY follows.
Reported per run: opens and closes logged, and the daemon's user and system CPU (/proc/PID/stat)
over the whole window divided by the events logged.

This is the quick loop for working on the daemon's hot path; bench/masqlog_rate.py is the benchmark
against ulogd2 and natlog on the lab. ``--gc-thresholds 700,10,10`` runs the daemon with Python's
default collector thresholds, to measure what its own setting saves; ``--set KEY=JSON`` changes one of
its settings (``--set reap_interval=1000``: no reaping at all).

Run as root on the host (``unshare`` needs it):
  python3 bench/masqlog_netns.py --rate 3000 --seconds 10 --close-timeout 10 --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER = ("127.0.0.3", 8080)
NAT_RULES = (
    "table ip masqlog_bench {\n  chain post {\n    type nat hook postrouting priority 100;\n"
    "    ip daddr 127.0.0.3 snat to 127.0.0.2\n  }\n}\n"
)


def cpu_ticks(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])  # utime, stime


def load(rate: int, seconds: float) -> int:
    """Open rate connections a second for seconds, accepting and closing each at the server; the
    client resets its end. Returns the number opened."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(SERVER)
    server.listen(4096)
    server.setblocking(False)
    total = int(rate * seconds)
    opened: list[socket.socket] = []
    sent = 0
    start = time.monotonic()
    while sent < total:
        due = min(total, int((time.monotonic() - start) * rate))
        while sent < due:
            client = socket.socket()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                client.connect(SERVER)
            opened.append(client)
            sent += 1
        try:
            while True:
                server.accept()[0].close()
        except BlockingIOError:
            pass
        if len(opened) > 500:  # hold each about 500/rate seconds, then reset it
            for client in opened[:-500]:
                client.close()
            del opened[:-500]
        time.sleep(0.001)
    for client in opened:
        client.close()
    server.close()
    return sent


def one_run(args: argparse.Namespace, work: Path) -> dict[str, object]:
    log = work / "masq.log"
    log.unlink(missing_ok=True)
    config = work / "masqlog.json"
    settings = {"log": str(log), "ident_port": 1113, **dict(args.set)}  # nothing answers ident
    config.write_text(json.dumps(settings))
    code = "import sys\nfrom nattrail import cli\nfrom nattrail.masqlog import command\n"
    if args.gc_thresholds:
        # The name main() reads: the command imported it from masqlog.tunables by name.
        code += f"command.GC_THRESHOLDS = {tuple(args.gc_thresholds)!r}\n"
    code += "sys.exit(cli.main(['masqlog', '--config', sys.argv[1]]))\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    daemon = subprocess.Popen([args.python, "-c", code, str(config)], env=env)
    try:
        deadline = time.monotonic() + 10
        while not (log.exists() and '"event":"resync"' in log.read_text()):
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit("the daemon did not start; see its stderr above")
            time.sleep(0.1)
        before = cpu_ticks(daemon.pid)
        made = load(args.rate, args.seconds)
        deadline = time.monotonic() + args.close_timeout + 90
        while log.read_text().count('"event":"close"') < made and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1)
        after = cpu_ticks(daemon.pid)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    events = Counter(json.loads(line)["event"] for line in log.read_text().splitlines())
    hz = os.sysconf("SC_CLK_TCK")
    user, system = (after[0] - before[0]) / hz, (after[1] - before[1]) / hz
    logged = events["open"] + events["close"]
    return {
        "made": made,
        "open": events["open"],
        "close": events["close"],
        "events_lost": events["events_lost"],
        "user_s": user,
        "sys_s": system,
        "us_per_event": round(1e6 * (user + system) / logged, 1) if logged else None,
        "user_us_per_event": round(1e6 * user / logged, 1) if logged else None,
        "sys_us_per_event": round(1e6 * system / logged, 1) if logged else None,
    }


def inside(args: argparse.Namespace) -> None:
    if os.readlink("/proc/self/ns/net") == os.environ.get("MASQLOG_BENCH_PARENT_NETNS"):
        raise SystemExit("refusing to add nft rules: not inside a private network namespace")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for name, value in (("nf_conntrack_acct", 1), ("nf_conntrack_timestamp", 1),
                        ("nf_conntrack_tcp_timeout_close", args.close_timeout)):  # fmt: skip
        Path(f"/proc/sys/net/netfilter/{name}").write_text(f"{value}\n")
    subprocess.run(["nft", "-f", "-"], input=NAT_RULES, text=True, check=True)
    with tempfile.TemporaryDirectory(prefix="masqlog-bench-") as work:
        for _ in range(args.runs):
            print(json.dumps(one_run(args, Path(work))), flush=True)


def setting(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    return key, json.loads(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=3000, help="new connections per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--close-timeout", type=int, default=10, help="conntrack's CLOSE timeout, s")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--python", default="/usr/bin/python3", help="the Python the daemon runs on")
    parser.add_argument("--gc-thresholds", type=lambda v: [int(x) for x in v.split(",")])
    parser.add_argument("--set", action="append", default=[], type=setting, metavar="KEY=JSON",
                        help="a daemon setting for the runs, e.g. reap_interval=1000")  # fmt: skip
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(args)
        return
    print(json.dumps({"machine": platform.node(), "kernel": platform.release(), "nproc": os.cpu_count(),
                      "python": subprocess.check_output([args.python, "-V"], text=True).strip(),
                      "loadavg": os.getloadavg(), "args": sys.argv[1:]}))  # fmt: skip
    env = {**os.environ, "MASQLOG_BENCH_PARENT_NETNS": os.readlink("/proc/self/ns/net")}
    subprocess.run(
        ["unshare", "--net", sys.executable, __file__, "--inside", *sys.argv[1:]], env=env, check=True
    )


if __name__ == "__main__":
    main()
