#!/usr/bin/env python3
"""Benchmark: `nattrail masqlog` against natlog and ulogd2 under a rising rate of new connections.

The client opens masqueraded TCP connections to the server through the router at each rate in turn;
each connection is held open --hold seconds (the server closes its end at once), then reset by the
client (SO_LINGER 0), so its conntrack entry dies --close-timeout (10 s) later and a DESTROY event
follows. All three loggers run on the router at the same time, on the same load:

  masqlog - the appliance's daemon (systemd unit nattrail-masqlog, as the masq_logger role set it up);
  natlog  - Debian's natlog in conntrack mode (`natlog --no-daemon --log FILE --time utc conntrack`,
            which spawns `conntrack -E -n -o timestamp -e NEW,DESTROY -p tcp`), logging to a file;
  ulogd   - `ulogd -c CONF` with only NFCT -> IP2STR -> JSON (event_mask=5: NEW and DESTROY,
            hash_enable=0, the inside network and TCP only, an 8 MiB receive buffer like masqlog's).

Per rate it reports, from one window that starts before the load and ends when every connection has
been destroyed and no log grows any more:
  - connections made: the kernel's count of new connections from the client to the benchmark ports,
    from a counter in a nat postrouting chain of a table of its own (nat chains see only the first
    packet of a connection, so it counts conntrack entries that were NATed), next to the client's
    TcpActiveOpens and what the load generator itself saw complete;
  - per logger: open/close records for those connections, records of lost events, the kernel's drop
    counter of its netlink socket(s) (/proc/net/netlink "Drops"), CPU (utime+stime from
    /proc/PID/stat: during the load, and in total over the window) and CPU per logged event;
  - masqlog's ident records: answered (a user), skipped (rate, concurrency), other errors.

Run on the lab host, lab up and converged (routers: nat_router + masq_logger; clients: identd):
  python3 bench/masqlog_rate.py --prefix nattrail- --rates 200,500,1000,2000 --seconds 10

The script copies itself into the lab containers and runs its `agent` subcommands there (stdlib only).
It starts and stops the server, natlog and ulogd itself and removes its nft table at the end.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import ipaddress
import json
import os
import platform
import re
import resource
import selectors
import shlex
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = "/run/masqlog-bench"  # scripts and pid files in each container (a tmpfs)
LOGS = "/var/log/masqlog-bench"  # the peers' logs, on the same file system as masqlog's
NFT_TABLE = "masqlog_bench"
ULOGD_PLUGINS = "/usr/lib/x86_64-linux-gnu/ulogd"
NETLINK_NETFILTER = 12
LOGGERS = ("masqlog", "natlog", "ulogd")


# --- agent: runs inside the lab containers ---------------------------------------------------------


def agent_serve(ports: list[int]) -> None:
    """Accept on every port and close at once: the server's half of each connection."""
    sel = selectors.DefaultSelector()
    for port in ports:
        lsock = socket.socket()
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("0.0.0.0", port))  # noqa: S104 - the lab server's outside address, in its own netns
        lsock.listen(4096)
        lsock.setblocking(False)
        sel.register(lsock, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            lsock = key.fileobj
            assert isinstance(lsock, socket.socket)
            while True:
                try:
                    conn, _ = lsock.accept()
                except BlockingIOError:
                    break
                except OSError:
                    break  # EMFILE and the like: the backlog keeps the rest
                conn.close()


LINGER0 = struct.pack("ii", 1, 0)


@dataclass
class Outcomes:
    """What became of the generator's connections when they were reset."""

    completed: int = 0
    refused: int = 0
    unfinished: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)

    def reset(self, sock: socket.socket) -> None:
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        try:
            sock.getpeername()
            self.completed += 1
        except OSError:
            if err == errno.ECONNREFUSED:
                self.refused += 1
            else:
                self.unfinished += 1
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        sock.close()


def agent_generate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Open connections at cfg["rate"] per second for cfg["seconds"], each reset after cfg["hold"] s.

    Non-blocking connect() lets the kernel finish the handshake while the loop goes on; a connection
    counts as completed when it has a peer at the time it is reset. A generator that falls behind the
    schedule does not catch up after the window: what it made is reported.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server, ports = cfg["server"], cfg["ports"]
    rate, seconds, hold = float(cfg["rate"]), float(cfg["seconds"]), float(cfg["hold"])
    total = int(rate * seconds)
    pending: collections.deque[tuple[float, socket.socket]] = collections.deque()
    out = Outcomes()
    made = max_behind = 0
    start = time.monotonic()
    end = last_open = start
    end += seconds
    while True:
        now = time.monotonic()
        if now < end:
            due = min(total, int((now - start) * rate) + 1)
            max_behind = max(max_behind, due - made)
            # Open at most 10 ms' worth per pass so that resets stay on time when behind.
            due = min(due, made + max(1, int(rate / 100)))
            while made < due:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                made += 1
                try:
                    sock.connect((server, ports[made % len(ports)]))
                except BlockingIOError:
                    pass
                except OSError as exc:
                    out.errors[errno.errorcode.get(exc.errno or 0, str(exc.errno))] += 1
                    sock.close()
                    continue
                pending.append((now + hold, sock))
            last_open = now
        while pending and pending[0][0] <= now:
            out.reset(pending.popleft()[1])
        if now >= end and not pending:
            break
        time.sleep(0.001)
    return {
        "target": total,
        "made": made,
        "completed": out.completed,
        "refused": out.refused,
        "unfinished": out.unfinished,
        "connect_errors": dict(out.errors),
        "open_seconds": round(last_open - start, 3),
        "max_behind": max_behind,
        "fd_limit": [soft, hard],
    }


def _ticks(pid: int) -> list[int] | None:
    """[utime, stime] of a process and all its threads, in clock ticks (fields 14 and 15 of stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return [int(fields[11]), int(fields[12])]


def _netlink_sockets() -> dict[int, tuple[int, int]]:
    """inode -> (drops, rmem) of every ctnetlink socket in this network namespace."""
    out: dict[int, tuple[int, int]] = {}
    lines = Path("/proc/net/netlink").read_text().splitlines()[1:]
    for line in lines:
        cols = line.split()
        if int(cols[1]) == NETLINK_NETFILTER:
            out[int(cols[9])] = (int(cols[8]), int(cols[4]))
    return out


def _socket_inodes(pid: int) -> list[int]:
    inodes = []
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.append(int(target[8:-1]))
    return inodes


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            kids += [int(k) for k in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return kids


def _read_pid(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def agent_sample(spec: dict[str, Any]) -> dict[str, Any]:
    """CPU ticks, netlink drops and log sizes of the loggers; the kernel's connection counter."""
    pids: dict[str, list[int]] = {}
    main = subprocess.run(
        ["systemctl", "show", "-p", "MainPID", "--value", "nattrail-masqlog"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    pids["masqlog"] = [int(main)] if main.isdigit() and int(main) > 0 else []
    for name in ("natlog", "ulogd"):
        pid = _read_pid(f"{WORK}/{name}.pid")
        pids[name] = [pid, *_children(pid)] if pid else []
    sockets = _netlink_sockets()
    procs: dict[str, Any] = {}
    for name, plist in pids.items():
        ticks = {str(p): _ticks(p) for p in plist}
        inodes = [i for p in plist for i in _socket_inodes(p) if i in sockets]
        procs[name] = {
            "pids": plist,
            "ticks": ticks,
            "drops": sum(sockets[i][0] for i in inodes),
            "rmem": sum(sockets[i][1] for i in inodes),
        }
    sizes = {}
    for name, path in spec["logs"].items():
        try:
            sizes[name] = os.stat(path).st_size
        except OSError:
            sizes[name] = 0
    nft = subprocess.run(
        ["nft", "list", "table", "ip", NFT_TABLE], capture_output=True, text=True, check=False
    ).stdout
    match = re.search(r"counter packets (\d+)", nft)
    left = 0
    if spec.get("left_in_table"):
        listing = subprocess.run(
            ["conntrack", "-L", "-p", "tcp", "-s", spec["client"]],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        left = sum(1 for line in listing.splitlines() if f"dst={spec['server']} " in line)
    return {
        "time": time.time(),
        "clk_tck": os.sysconf("SC_CLK_TCK"),
        "procs": procs,
        "sizes": sizes,
        "nat_new": int(match.group(1)) if match else None,
        "left_in_table": left,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def _lines(path: str, start: int, stop: int) -> list[bytes]:
    try:
        with open(path, "rb") as handle:
            handle.seek(start)
            data = handle.read(max(0, stop - start))
    except OSError:
        return []
    return data.splitlines()


def _count_masqlog(lines: list[bytes], client: str, ports: set[int]) -> dict[str, Any]:
    c: collections.Counter[str] = collections.Counter()
    for raw in lines:
        try:
            rec = json.loads(raw)
        except ValueError:
            c["unparsed"] += 1
            continue
        event = rec.get("event")
        load = rec.get("client_ip") == client and rec.get("server_port") in ports
        if event == "open":
            c["open_resync" if rec.get("resync") else "open"] += load
            skipped = rec.get("ident_error")  # a skipped query is said in the open record itself
            if skipped and str(skipped).startswith("skipped:"):
                c[f"ident_{skipped.replace(':', '_')}"] += 1
        elif event == "close":
            c["close_lost" if rec.get("lost") else "close"] += load
        elif event == "ident":
            err = rec.get("ident_error")
            if rec.get("user"):
                c["ident_answered"] += 1
            elif err and str(err).startswith("skipped:"):
                c[f"ident_{err.replace(':', '_')}"] += 1
            else:
                c["ident_error"] += 1
                c[f"ident_error:{err}"] += 1
        elif event in ("events_lost", "resync", "resync_failed", "decode_error", "reap_failed"):
            c[event] += 1
        else:
            c[f"other:{event}"] += 1
        if event in ("open", "close") and not load:
            c["not_load"] += 1
    return dict(c)


def _count_ulogd(lines: list[bytes], client: str, ports: set[int]) -> dict[str, Any]:
    c: collections.Counter[str] = collections.Counter()
    for raw in lines:
        try:
            rec = json.loads(raw)
        except ValueError:
            c["unparsed"] += 1
            continue
        load = rec.get("src_ip") == client and rec.get("orig.l4.dport") in ports
        kind = {1: "new", 4: "destroy"}.get(rec.get("ct.event"), f"event{rec.get('ct.event')}")
        c[kind if load else f"{kind}_other"] += 1
    return dict(c)


def _padded(ip: str) -> str:
    return ".".join(f"{int(p):03d}" for p in ip.split("."))


def _count_natlog(lines: list[bytes], client: str, ports: set[int]) -> dict[str, Any]:
    c: collections.Counter[str] = collections.Counter()
    pattern = re.compile(rb" tcp " + re.escape(_padded(client).encode()) + rb",\d+ .* to [\d.]+,(\d+);")
    for raw in lines:
        match = pattern.search(raw)
        if match and int(match.group(1)) in ports:
            c["connections"] += 1
        else:
            c["other"] += 1
    return dict(c)


def agent_count(spec: dict[str, Any]) -> dict[str, Any]:
    """Count the records each logger wrote between two offsets of its log."""
    client, ports = spec["client"], set(spec["ports"])
    counters = {"masqlog": _count_masqlog, "ulogd": _count_ulogd, "natlog": _count_natlog}
    out: dict[str, Any] = {}
    for name, (path, start, stop) in spec["logs"].items():
        lines = _lines(path, start, stop)
        if name in counters:
            out[name] = counters[name](lines, client, ports)
        else:  # the peers' own diagnostics: count the lines that say events were lost
            text = b"\n".join(lines).decode(errors="replace")
            out[name] = {
                "lines": len(lines),
                "lost_lines": sum(
                    1 for line in text.splitlines() if re.search(r"ENOBUFS|losing events", line)
                ),
            }
    return out


def agent_main(argv: list[str]) -> None:
    command, arg = argv[0], json.loads(argv[1])
    if command == "serve":
        agent_serve(arg)
        return
    actions = {"generate": agent_generate, "sample": agent_sample, "count": agent_count}
    print(json.dumps(actions[command](arg)))


# --- controller: runs on the lab host ----------------------------------------------------------------


def run(argv: list[str], *, check: bool = True, stdin: str | None = None) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, input=stdin)
    if check and result.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


@dataclass
class Lab:
    prefix: str
    user: str
    ports: list[int]
    router: str = field(init=False)
    client: str = field(init=False)
    server: str = field(init=False)

    def __post_init__(self) -> None:
        self.router, self.client, self.server = (f"{self.prefix}{h}" for h in ("router", "client", "server"))

    def sh(self, container: str, command: str, *, check: bool = True, user: str | None = None) -> str:
        argv = ["docker", "exec", *(["-u", user] if user else []), container, "sh", "-c", command]
        return run(argv, check=check)

    def agent(self, container: str, command: str, arg: object, *, user: str | None = None) -> Any:
        script = f"{WORK}/agent.py"
        out = self.sh(
            container, f"python3 {script} agent {command} {shlex.quote(json.dumps(arg))}", user=user
        )
        return json.loads(out)

    def address(self, container: str) -> ipaddress.IPv4Interface:
        addrs = json.loads(self.sh(container, "ip -j -4 addr show scope global"))
        info = addrs[0]["addr_info"][0]
        return ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}")

    def install_agent(self) -> None:
        source = Path(__file__).read_text()
        for container in (self.router, self.client, self.server):
            self.sh(container, f"mkdir -p -m 0755 {WORK}")
            run(
                [
                    "docker",
                    "exec",
                    "-i",
                    container,
                    "sh",
                    "-c",
                    f"cat > {WORK}/agent.py && chmod 0644 {WORK}/agent.py",
                ],
                stdin=source,
            )

    def install_src(self) -> None:
        """Copy this checkout's modules (src/nattrail, its subpackages but intent/, as the Debian package
        holds them) into the router and restart the daemon."""
        target = self.sh(
            self.router, "python3 -c 'import nattrail, os; print(os.path.dirname(nattrail.__file__))'"
        ).strip()
        src = ROOT / "src/nattrail"
        for module in sorted(src.rglob("*.py")):
            relative = module.relative_to(src)
            if relative.parts[0] == "intent":
                continue
            folder, path = f"{target}/{relative.parent.as_posix()}", f"{target}/{relative.as_posix()}"
            run(
                ["docker", "exec", "-i", self.router, "sh", "-c", f"mkdir -p {folder} && cat > {path}"],
                stdin=module.read_text(),
            )
        self.sh(self.router, "systemctl restart nattrail-masqlog")


def host_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of every CPU on this host (the containers share its kernel)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


def ulogd_config(inside: str) -> str:
    return f"""[global]
logfile="{LOGS}/ulogd.log"
loglevel=3
plugin="{ULOGD_PLUGINS}/ulogd_inpflow_NFCT.so"
plugin="{ULOGD_PLUGINS}/ulogd_filter_IP2STR.so"
plugin="{ULOGD_PLUGINS}/ulogd_output_JSON.so"
stack=ct1:NFCT,ip2str1:IP2STR,json1:JSON

[ct1]
# NF_NETLINK_CONNTRACK_NEW (1) | NF_NETLINK_CONNTRACK_DESTROY (4), as masqlog subscribes to
event_mask=5
hash_enable=0
# The same 8 MiB masqlog asks for; ulogd applies a size only below the maximum (and doubles on ENOBUFS)
netlink_socket_buffer_size=8388608
netlink_socket_buffer_maxsize=16777216
accept_src_filter={inside}
accept_proto_filter=tcp

[json1]
file="{LOGS}/ulogd.json"
sync=1
"""


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.lab = Lab(args.prefix, args.user, list(range(args.port, args.port + args.ports)))
        self.logs: dict[str, str] = {}
        self.masqlog_config_saved: str | None = None
        self.natlog_running = False

    # set-up and tear-down

    def setup(self) -> None:
        lab = self.lab
        lab.install_agent()
        if self.args.install_src:
            lab.install_src()
        self.client_ip = str(lab.address(lab.client).ip)
        self.server_ip = str(lab.address(lab.server).ip)
        self.inside = str(lab.address(lab.client).network)
        masq_conf = json.loads(lab.sh(lab.router, "cat /etc/nattrail/masqlog.json"))
        if self.args.ident_rate or self.args.ident_burst or self.args.reap_interval:
            self.masqlog_config_saved = json.dumps(masq_conf, indent=4) + "\n"
            if self.args.ident_rate:
                masq_conf["ident_rate"] = float(self.args.ident_rate)
            if self.args.ident_burst:
                masq_conf["ident_burst"] = int(self.args.ident_burst)
            if self.args.reap_interval:
                masq_conf["reap_interval"] = float(self.args.reap_interval)
            self.write_masqlog_config(json.dumps(masq_conf, indent=4) + "\n")
        self.masqlog_conf = masq_conf
        self.logs = {
            "masqlog": masq_conf.get("log", "/var/log/nattrail/masq.log"),
            "natlog": f"{LOGS}/natlog.log",
            "ulogd": f"{LOGS}/ulogd.json",
            "natlog_stderr": f"{LOGS}/natlog.err",
            "ulogd_log": f"{LOGS}/ulogd.log",
        }
        self.close_timeout = int(lab.sh(lab.router, "sysctl -n net.netfilter.nf_conntrack_tcp_timeout_close"))
        ports = f"{lab.ports[0]}-{lab.ports[-1]}"
        nft = (
            f"table ip {NFT_TABLE} {{\n  chain count {{\n"
            "    type nat hook postrouting priority srcnat - 10; policy accept;\n"
            f"    ip saddr {self.client_ip} ip daddr {self.server_ip} tcp dport {ports} counter\n  }}\n}}\n"
        )
        lab.sh(lab.router, f"nft delete table ip {NFT_TABLE} 2>/dev/null; true")
        run(["docker", "exec", "-i", lab.router, "nft", "-f", "-"], stdin=nft)
        lab.sh(lab.router, f"rm -rf {LOGS}; mkdir -p {LOGS}")
        run(
            ["docker", "exec", "-i", lab.router, "sh", "-c", f"cat > {WORK}/ulogd.conf"],
            stdin=ulogd_config(self.inside),
        )
        lab.sh(lab.server, f"[ -f {WORK}/serve.pid ] && kill $(cat {WORK}/serve.pid) 2>/dev/null; true")
        port_list = json.dumps(lab.ports)
        run(
            [
                "docker",
                "exec",
                "-d",
                lab.server,
                "sh",
                "-c",
                f"echo $$ > {WORK}/serve.pid; exec python3 {WORK}/agent.py agent serve '{port_list}'",
            ]
        )
        self.start_natlog()
        self.natlog_running = True
        run(
            [
                "docker",
                "exec",
                "-d",
                lab.router,
                "sh",
                "-c",
                f"echo $$ > {WORK}/ulogd.pid; exec ulogd -c {WORK}/ulogd.conf > /dev/null 2>&1",
            ]
        )
        time.sleep(2)
        check = self.sample()
        missing = [n for n in LOGGERS if not check["procs"][n]["pids"]]
        if missing:
            raise SystemExit(f"not running on {lab.router}: {', '.join(missing)}")
        listening = lab.sh(lab.server, "ss -Hltn")
        if f":{lab.ports[-1]} " not in listening:
            raise SystemExit(f"the benchmark server is not listening on {lab.server}")

    def start_natlog(self) -> None:
        run(
            [
                "docker",
                "exec",
                "-d",
                self.lab.router,
                "sh",
                "-c",
                f"echo $$ > {WORK}/natlog.pid; exec natlog --no-daemon --log {LOGS}/natlog.log --time utc "
                f"conntrack 2>> {LOGS}/natlog.err > /dev/null",
            ]
        )

    def stop_natlog(self) -> int:
        """Stop natlog (it writes its log through a buffer that only its exit flushes); its log's size."""
        out = self.lab.sh(
            self.lab.router,
            f"pid=$(cat {WORK}/natlog.pid); kill $pid; "
            f"while [ -e /proc/$pid ]; do sleep 0.1; done; rm {WORK}/natlog.pid; "
            f"stat -c %s {LOGS}/natlog.log",
        )
        return int(out)

    def write_masqlog_config(self, text: str) -> None:
        run(
            ["docker", "exec", "-i", self.lab.router, "sh", "-c", "cat > /etc/nattrail/masqlog.json"],
            stdin=text,
        )
        self.lab.sh(self.lab.router, "systemctl restart nattrail-masqlog")

    def teardown(self) -> None:
        lab = self.lab
        for name in ("natlog", "ulogd"):
            lab.sh(
                lab.router,
                f"[ -f {WORK}/{name}.pid ] && kill $(cat {WORK}/{name}.pid) 2>/dev/null; true",
                check=False,
            )
        lab.sh(
            lab.server,
            f"[ -f {WORK}/serve.pid ] && kill $(cat {WORK}/serve.pid) 2>/dev/null; true",
            check=False,
        )
        lab.sh(lab.router, f"nft delete table ip {NFT_TABLE} 2>/dev/null; true", check=False)
        if self.masqlog_config_saved is not None:
            self.write_masqlog_config(self.masqlog_config_saved)

    # measuring

    def sample(self, left_in_table: bool = False) -> dict[str, Any]:
        spec = {
            "logs": self.logs,
            "client": self.client_ip,
            "server": self.server_ip,
            "left_in_table": left_in_table,
        }
        out = self.lab.agent(self.lab.router, "sample", spec)
        out["host_cpu"] = host_cpu()
        out["host_loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
        out["active_opens"] = self.active_opens()
        return out

    def active_opens(self) -> int:
        text = self.lab.sh(self.lab.client, "nstat -az TcpActiveOpens")
        return int(text.split("TcpActiveOpens")[1].split()[0])

    def drain(self) -> dict[str, Any]:
        """Wait until every connection's entry is gone and the logs have stopped growing."""
        # Without reaping (a huge reap_interval) expired entries wait for conntrack's garbage
        # collector, up to a minute: the polling below (up to --max-drain) covers that.
        reap = min(float(self.masqlog_conf.get("reap_interval", 2.0)), 5.0)
        time.sleep(self.args.hold + self.close_timeout + 2 * reap + 1)
        deadline = time.monotonic() + self.args.max_drain
        last: dict[str, int] | None = None
        stable = 0
        while True:
            current = self.sample(left_in_table=True)
            sizes = current["sizes"]
            quiet = all(p["rmem"] == 0 for p in current["procs"].values())
            stable = stable + 1 if sizes == last and quiet and current["left_in_table"] == 0 else 0
            if stable >= 2 or time.monotonic() > deadline:
                return current
            last = sizes
            time.sleep(1)

    def generate(self, rate: int) -> dict[str, Any]:
        """Run --workers generator processes on the client at once, each at its share of the rate."""
        workers = self.args.workers
        spec = {
            "server": self.server_ip,
            "ports": self.lab.ports,
            "rate": rate / workers,
            "seconds": self.args.seconds,
            "hold": self.args.hold,
        }
        argv = [
            "docker",
            "exec",
            "-u",
            self.lab.user,
            self.lab.client,
            "python3",
            f"{WORK}/agent.py",
            "agent",
            "generate",
            json.dumps(spec),
        ]
        procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(workers)]
        outs = [json.loads(p.communicate()[0]) for p in procs]
        total: dict[str, Any] = {"workers": workers, "connect_errors": collections.Counter()}
        for out in outs:
            for key in ("target", "made", "completed", "refused", "unfinished", "max_behind"):
                total[key] = total.get(key, 0) + out[key]
            total["connect_errors"].update(out["connect_errors"])
            total["open_seconds"] = max(total.get("open_seconds", 0), out["open_seconds"])
        total["connect_errors"] = dict(total["connect_errors"])
        return total

    def step(self, rate: int) -> dict[str, Any]:
        lab = self.lab
        if not self.natlog_running:
            self.start_natlog()
            time.sleep(1)
        before = self.sample()
        gen = self.generate(rate)
        loaded = self.sample()
        after = self.drain()
        natlog_end = self.stop_natlog()
        self.natlog_running = False
        spans = {
            name: [path, before["sizes"][name], after["sizes"][name]] for name, path in self.logs.items()
        }
        spans["natlog"][2] = natlog_end
        counts = lab.agent(lab.router, "count", {"logs": spans, "client": self.client_ip, "ports": lab.ports})
        return summarise(rate, gen, {"before": before, "loaded": loaded, "after": after}, counts)


def _cpu(a: dict[str, Any], b: dict[str, Any], name: str, kinds: tuple[int, ...] = (0, 1)) -> float:
    """CPU seconds (user + system, or those of ``kinds``) a logger used between two samples, summed
    over its processes present in both."""
    ta, tb = a["procs"][name]["ticks"], b["procs"][name]["ticks"]
    ticks = sum(tb[p][k] - ta[p][k] for p in tb if ta.get(p) and tb[p] for k in kinds)
    return ticks / a["clk_tck"]


def summarise(
    rate: int, gen: dict[str, Any], samples: dict[str, dict[str, Any]], counts: dict[str, Any]
) -> dict[str, Any]:
    """One rate's result from the generator's report, the samples before the load, at its end and after
    the drain, and the records counted in the logs."""
    before, loaded, after = samples["before"], samples["loaded"], samples["after"]
    load_wall = loaded["time"] - before["time"]
    window = after["time"] - before["time"]
    busy = [b - a for a, b in zip(before["host_cpu"], loaded["host_cpu"], strict=True)]
    out: dict[str, Any] = {
        "rate": rate,
        "kernel_new": after["nat_new"] - before["nat_new"],
        "client_active_opens": after["active_opens"] - before["active_opens"],
        "generator": gen,
        "load_wall_s": round(load_wall, 2),
        "window_s": round(window, 2),
        "left_in_table": after["left_in_table"],
        "host_busy_pct_during_load": round(100 * busy[0] / busy[1], 1) if busy[1] else None,
        "loadavg_start": before["host_loadavg"],
        "loadavg_end": after["host_loadavg"],
        "loggers": {},
    }
    m, n, u = counts["masqlog"], counts["natlog"], counts["ulogd"]
    logged = {
        "masqlog": (m.get("open", 0) + m.get("open_resync", 0), m.get("close", 0) + m.get("close_lost", 0)),
        # natlog writes one line per connection, when it ends: it stands for both events
        "natlog": (n.get("connections", 0), n.get("connections", 0)),
        "ulogd": (u.get("new", 0), u.get("destroy", 0)),
    }
    lost_records = {
        "masqlog": m.get("events_lost", 0),
        "natlog": counts["natlog_stderr"]["lost_lines"],
        "ulogd": counts["ulogd_log"]["lost_lines"],
    }
    for name in LOGGERS:
        cpu_load = _cpu(before, loaded, name)
        cpu_total = _cpu(before, after, name)
        opens, closes = logged[name]
        events = opens + closes
        out["loggers"][name] = {
            "opens": opens,
            "closes": closes,
            "lost_records": lost_records[name],
            "netlink_drops": after["procs"][name]["drops"] - before["procs"][name]["drops"],
            "cpu_pct_during_load": round(100 * cpu_load / load_wall, 1),
            "cpu_s_window": round(cpu_total, 2),
            "cpu_sys_s_window": round(_cpu(before, after, name, (1,)), 2),
            "cpu_us_per_event": round(1e6 * cpu_total / events, 1) if events else None,
            "pids": after["procs"][name]["pids"],
        }
    out["loggers"]["masqlog"]["records"] = m
    # A restart (Restart=always) would show as a new PID: its CPU before the restart is not counted.
    out["loggers"]["masqlog"]["restarted"] = (
        before["procs"]["masqlog"]["pids"] != after["procs"]["masqlog"]["pids"]
    )
    out["loggers"]["natlog"]["records"] = n
    out["loggers"]["ulogd"]["records"] = u
    out["peer_diagnostics"] = {"natlog_stderr": counts["natlog_stderr"], "ulogd_log": counts["ulogd_log"]}
    return out


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| rate/s | made (kernel) | generator made/completed | logger | opens | closes | lost records "
        "| netlink drops | CPU % in load | CPU s | µs CPU/event |"
    )
    rows = [head, "|" + " --- |" * 11]
    for r in results:
        g = r["generator"]
        for i, name in enumerate(LOGGERS):
            lg = r["loggers"][name]
            first = (
                f"| {r['rate']} | {r['kernel_new']} | {g['made']}/{g['completed']} " if i == 0 else "| | | "
            )
            rows.append(
                first + f"| {name} | {lg['opens']} | {lg['closes']} | {lg['lost_records']} | "
                f"{lg['netlink_drops']} | {lg['cpu_pct_during_load']} | {lg['cpu_s_window']} | "
                f"{lg['cpu_us_per_event']} |"
            )
    ident = [
        "",
        "| rate/s | ident answered | skipped:rate | skipped:concurrency | other errors | resyncs | "
        "load avg start → end | host CPU busy in load |",
        "|" + " --- |" * 8,
    ]
    for r in results:
        rec = r["loggers"]["masqlog"]["records"]
        ident.append(
            f"| {r['rate']} | {rec.get('ident_answered', 0)} | {rec.get('ident_skipped_rate', 0)} | "
            f"{rec.get('ident_skipped_concurrency', 0)} | {rec.get('ident_error', 0)} | "
            f"{rec.get('resync', 0)} | {' '.join(r['loadavg_start'])} → {' '.join(r['loadavg_end'])} | "
            f"{r['host_busy_pct_during_load']} % |"
        )
    return "\n".join(rows + ident)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "agent":
        agent_main(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default="nattrail-", help="lab container name prefix (default nattrail-)")
    parser.add_argument(
        "--rates", default="200,500,1000,2000", help="connections per second, comma-separated"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of load per rate")
    parser.add_argument("--hold", type=float, default=1.0, help="seconds each connection stays open")
    parser.add_argument("--workers", type=int, default=1, help="generator processes on the client")
    parser.add_argument("--user", default="alice", help="client user that opens the connections")
    parser.add_argument("--port", type=int, default=9000, help="first server port")
    parser.add_argument(
        "--ports", type=int, default=16, help="server ports (more 4-tuples, fewer port reuses)"
    )
    parser.add_argument("--max-drain", type=float, default=60.0, help="seconds to wait beyond the expiry")
    parser.add_argument(
        "--ident-rate", type=float, help="set masqlog's ident_rate for the run (restored after)"
    )
    parser.add_argument(
        "--ident-burst", type=int, help="set masqlog's ident_burst for the run (restored after)"
    )
    parser.add_argument(
        "--reap-interval",
        type=float,
        help="set masqlog's reap_interval for the run (restored after); 100000: no reaping "
        "(then give --max-drain 90: closes wait for conntrack's garbage collector)",
    )
    parser.add_argument(
        "--install-src",
        action="store_true",
        help="copy src/nattrail (but intent/) into the router and restart masqlog first",
    )
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    bench = Bench(args)
    machine = {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python_host": platform.python_version(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }
    results = []
    try:
        bench.setup()
        machine["masqlog_config"] = bench.masqlog_conf
        for rate in rates:
            result = bench.step(rate)
            results.append(result)
            lg = result["loggers"]
            print(
                f"rate {rate}/s: kernel {result['kernel_new']}, generator {result['generator']['made']}, "
                + ", ".join(
                    f"{n} {lg[n]['opens']}/{lg[n]['closes']} drops {lg[n]['netlink_drops']} "
                    f"cpu {lg[n]['cpu_pct_during_load']}%"
                    for n in LOGGERS
                ),
                file=sys.stderr,
                flush=True,
            )
    finally:
        bench.teardown()
    machine["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    report = {"machine": machine, "args": vars(args), "results": results}
    print(table(results))
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
