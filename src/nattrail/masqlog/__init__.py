"""`nattrail masqlog`: log every masqueraded connection, with the user behind it.

The daemon follows conntrack's NEW and DESTROY events over netlink and keeps the source-NATed ones. For each
it writes JSON lines to its log (see docs/masq_logger.md for every field):

- ``open``: client, server and masquerader addresses and ports, and the conntrack id that joins the events;
- ``ident`` (TCP): the user the client's identd names for the connection, or why there is none;
- ``close``: start, end, duration, packets and bytes both ways.

Nothing is lost silently. The receive buffer is large, and when the kernel still overruns it (ENOBUFS)
an ``events_lost`` record is written and the conntrack table is dumped, so connections opened during the
gap are logged (``"resync": true``) and those closed during it are closed (``"lost": true``). Ident queries
run concurrently, under a global cap and a per-client rate; a connection past the caps is still logged,
with ``"ident_error": "skipped:<reason>"``, and the skips are counted in periodic ``ident_skips`` records.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import signal
import socket
import sys
import syslog
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from nattrail import __version__, ctnetlink, mmsg
from nattrail.ctnetlink import Conntrack, DecodeError
from nattrail.jsonlog import JsonLog
from nattrail.masqlog.config import Config, ConfigError, load_config
from nattrail.masqlog.tracker import Key, MasqLogger

GC_THRESHOLDS = (10_000, 10, 10)
READ_BUDGET = 512  # datagrams read per wake-up before the loop lets ident tasks and timers run
# Datagrams read at once before a resync reconciles or after a table walk: more than a full receive
# buffer holds, so the drain ends when the queue does, yet a kernel that produces events faster than
# we read cannot hold the loop forever.
DRAIN_BUDGET = 200_000
# A connection found alive is looked up again when conntrack says it expires, and at least this often
# (seconds), since a packet can shorten its timeout: a reset turns five days into ten seconds.
RECHECK_MAX = 30.0
# Looking one connection up costs the kernel about as much as walking 64 buckets of its hash table.
BUCKETS_PER_LOOKUP = 64
SYSCTL = Path("/proc/sys/net/netfilter")

LookupFunc = Callable[[list[Key]], list[int | None]]
TableDump = Callable[[], list[Conntrack]]


@dataclass(frozen=True)
class Reaping:
    """How expired connections are made to go: by looking them up, or by a table walk when more
    than ``walk_above`` are due at once."""

    walk: Callable[[], int] = ctnetlink.reap_expired
    lookup: LookupFunc = ctnetlink.lookup
    walk_above: int = 4096


class Daemon:
    """The netlink socket and the event loop around a MasqLogger."""

    def __init__(
        self,
        logger: MasqLogger,
        sock: socket.socket,
        dump: TableDump,
        reader: mmsg.BatchReader | None = None,
        reaping: Reaping | None = None,
    ) -> None:
        self.logger = logger
        self.sock = sock
        self.dump = dump
        self.reaping = reaping if reaping is not None else Reaping()
        self.reader = reader if reader is not None else mmsg.batch_reader(sock)
        self.resyncing = False
        self.resync_again = False  # events were lost while a dump ran: one more after it
        self.armed = False
        self.stopped = False

    def arm(self) -> None:
        if not self.stopped and not self.armed:
            asyncio.get_running_loop().add_reader(self.sock.fileno(), self.on_readable)
            self.armed = True

    def disarm(self) -> None:
        if self.armed:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.armed = False

    def on_readable(self) -> None:
        """The socket became readable: read what is queued, then let events gather (see poll)."""
        received = self.read_events(READ_BUDGET)
        if received < READ_BUDGET and self.logger.config.read_coalesce > 0 and self.armed:
            # Let events gather in the (large) receive buffer for a moment instead of waking up for
            # each one: every wake-up costs the event loop more than decoding an event does.
            self.disarm()
            asyncio.get_running_loop().call_later(self.logger.config.read_coalesce, self.poll)

    def poll(self) -> None:
        """Read what gathered since the last read. While events keep coming the daemon stays on this
        timer, a wake-up per batch and no change to what the loop watches; a period that brings
        nothing puts it back to watching the socket, so an idle router costs no wake-ups."""
        if self.stopped:
            return
        received = self.read_events(READ_BUDGET)
        loop = asyncio.get_running_loop()
        if received >= READ_BUDGET:
            loop.call_soon(self.poll)  # more queued: read on after the loop's other work
        elif received:
            loop.call_later(self.logger.config.read_coalesce, self.poll)
        else:
            self.arm()  # whatever arrives from now on makes the socket readable again

    def read_events(self, budget: int) -> int:
        """Read and log datagrams until the queue runs empty or ``budget`` were read; return how many
        were read (the queue ran empty if fewer than ``budget``). An overrun is written down and
        starts a resync."""
        overrun = False
        received = 0
        try:
            while received < budget:
                try:
                    views, truncated = self.reader.read()
                except OSError as exc:
                    if not ctnetlink.is_enobufs(exc):
                        raise
                    overrun = True
                    received += 1
                    continue  # keep draining: what is still queued is real
                if not views and not truncated:
                    break
                received += len(views) + truncated
                if truncated:
                    self.logger.stats.decode_errors += truncated
                    error = "datagram cut short: larger than the read buffer"
                    self.logger.emit(
                        "decode_error", "warning", error=error, count=truncated, size=self.reader.size
                    )
                self.handle_batch(views)
        finally:
            self.logger.flush()
        if overrun:
            self.logger.events_lost()
            self.logger.flush()
            self.start_resync()
        return received

    def handle_batch(self, views: list[memoryview]) -> None:
        logger = self.logger
        handle = logger.handle
        decode, decode_event = ctnetlink.decode_datagram, ctnetlink.decode_event
        for view in views:
            try:
                event = decode_event(view)
                if event is not None:
                    handle(event)
                    continue
                for item in decode(view):
                    if type(item) is Conntrack:
                        handle(item)
            except DecodeError as exc:
                logger.stats.decode_errors += 1
                logger.emit("decode_error", "warning", error=str(exc), size=len(view))

    def reopen(self) -> None:
        """SIGHUP, after logrotate moved the log away: continue in a new file, losing nothing."""
        path = self.logger.config.log
        try:
            self.logger.log.reopen()
        except OSError as exc:
            # Logging carries on into the old file; say why on stderr (the journal).
            print(f"nattrail masqlog: cannot reopen {path}: {exc}", file=sys.stderr)
            return
        self.logger.emit("reopened", path=path)
        self.logger.flush()

    def log_stats(self) -> None:
        self.logger.emit("stats", **self.logger.stats_fields())
        self.logger.flush()

    async def reap(self) -> None:
        """Make the kernel drop the expired connections among ours now, so that their DESTROY
        events (and stop timestamps) come when they expire, not when conntrack's garbage collector
        next passes (up to a minute later; and then all at once, which can overrun every listener).
        Each connection due is looked up; when more are due than a table walk costs, the table is
        walked instead."""
        logger = self.logger
        due = logger.due(logger.monotonic())
        if not due:
            return  # nothing of ours can have expired since the last pass: the kernel is spared
        try:
            if len(due) > self.reaping.walk_above:
                logger.stats.walks += 1
                await asyncio.get_running_loop().run_in_executor(None, self.reaping.walk)
                # Read the DESTROYs the walk caused: what is still open after them was alive when
                # the walk passed (it expires soon, or lives long) and comes back at the next pass,
                # with what falls due by then, so that it is not left for a whole first_check.
                self.read_events(DRAIN_BUDGET)
                logger.check_again([key for key in due if key in logger.tracked])
                return
            logger.stats.lookups += len(due)
            # In the loop's own thread: a few microseconds a connection (the kernel answers
            # within send), less than handing the batch to a worker thread costs.
            answers = self.reaping.lookup(due)
        except (OSError, DecodeError) as exc:  # a reply that does not decode fails the pass only
            logger.emit("reap_failed", "warning", error=str(exc))
            logger.flush()
            logger.check_again(due)
            return
        now = logger.monotonic()
        for key, left in zip(due, answers, strict=True):
            if left is not None:  # alive: look again when conntrack says it expires
                logger.recheck(key, now + min(left + 1.0, RECHECK_MAX))

    def start_resync(self) -> None:
        if self.stopped:
            return  # stopping: the events_lost record stands; the next start resyncs from a dump
        if self.resyncing:
            # The running dump may have walked past what was just lost: another one follows it.
            self.resync_again = True
            return
        self.resyncing = True
        self.logger.begin_resync()
        loop = asyncio.get_running_loop()
        # The dump blocks on its own socket: run it in a thread while events keep queueing.
        future = loop.run_in_executor(None, self.dump)
        future.add_done_callback(self._resync_done)

    def _resync_done(self, future: asyncio.Future[list[Conntrack]]) -> None:
        try:
            table = future.result()
        except OSError as exc:
            self.logger.window = None
            self.logger.emit("resync_failed", "error", error=str(exc))
        else:
            # Events the kernel queued before the dump ended are read first: a DESTROY still waiting
            # in the socket must close its connection with its counters, not leave the resync to
            # call it lost and the real close to follow as a second one.
            self.read_events(DRAIN_BUDGET)
            self.logger.resync(table)
        self.resyncing = False
        self.logger.flush()
        if self.resync_again and not self.stopped:
            self.resync_again = False
            self.start_resync()


def shortest_timeout(protocols: tuple[str, ...], sysctl: Path = SYSCTL) -> float:
    """Conntrack's shortest timeout in seconds for the protocols logged (TCP's CLOSE, 10 s, by
    default): none of their connections can expire sooner after its last packet."""
    values = []
    for proto in protocols:
        for path in sysctl.glob(f"nf_conntrack_{proto}_timeout*"):
            with contextlib.suppress(OSError, ValueError):
                values.append(int(path.read_text()))
    return float(max(1, min((v for v in values if v > 0), default=10)))


def walk_threshold(sysctl: Path = SYSCTL) -> int:
    """How many connections may be looked up in one pass before walking the table costs less."""
    try:
        buckets = int((sysctl / "nf_conntrack_buckets").read_text())
    except (OSError, ValueError):
        buckets = 262_144
    return max(1, buckets // BUCKETS_PER_LOOKUP)


def syslog_sink(config: Config) -> Callable[[str], None] | None:
    if not config.syslog:
        return None
    syslog.openlog("nattrail-masqlog", syslog.LOG_PID, syslog.LOG_DAEMON)

    def sink(line: str) -> None:
        syslog.syslog(syslog.LOG_INFO, line)

    return sink


async def every(interval: float, action: Callable[[], Awaitable[None] | None]) -> None:
    while True:
        await asyncio.sleep(interval)
        result = action()
        if result is not None:
            await result


async def run(config: Config, *, log: JsonLog) -> int:
    loop = asyncio.get_running_loop()
    logger = MasqLogger(config, log, sink=syslog_sink(config), first_check=shortest_timeout(config.protocols))
    sock = ctnetlink.event_socket(config.rcvbuf)
    looker = ctnetlink.Lookup()
    daemon = Daemon(
        logger, sock, ctnetlink.dump_table, reaping=Reaping(lookup=looker, walk_above=walk_threshold())
    )
    stop = asyncio.Event()
    handlers: dict[signal.Signals, Callable[[], None]] = {
        signal.SIGTERM: stop.set,
        signal.SIGINT: stop.set,
        signal.SIGHUP: daemon.reopen,
        signal.SIGUSR1: daemon.log_stats,
    }
    for signum, handler in handlers.items():
        loop.add_signal_handler(signum, handler)
    granted = ctnetlink.granted_rcvbuf(sock)
    logger.emit("start", version=__version__, protocols=list(config.protocols), ident=config.ident,
                rcvbuf=granted, reader=daemon.reader.name, first_check=logger.first_check,
                walk_above=daemon.reaping.walk_above)  # fmt: skip
    if granted < config.rcvbuf:
        logger.emit("rcvbuf_capped", "warning", asked=config.rcvbuf, granted=granted)
    logger.flush()
    # Connections that were open before the daemon started (or restarted) are learnt first.
    logger.resync(await loop.run_in_executor(None, daemon.dump))
    logger.flush()
    daemon.arm()
    timers = [
        loop.create_task(every(config.reap_interval, daemon.reap)),
        loop.create_task(every(config.skips_interval, logger.report_skips)),
        loop.create_task(every(config.stats_interval, daemon.log_stats)),
    ]
    try:
        await stop.wait()
    finally:
        daemon.stopped = True
        daemon.disarm()
        daemon.on_readable()  # what is already queued is still logged
        for task in [*timers, *logger.tasks]:
            task.cancel()
        await asyncio.gather(*timers, *logger.tasks, return_exceptions=True)
        logger.report_skips()
        logger.emit("stop", **logger.stats_fields())
        logger.flush()
        sock.close()
        looker.close()
        for signum in handlers:
            loop.remove_signal_handler(signum)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "masqlog",
        help="log masqueraded connections and their users (daemon)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--config", help="JSON settings file (keys as in docs/masq_logger.md)")
    parser.add_argument(
        "--log", help="log file (overrides the config file; default /var/log/nattrail/masq.log)"
    )
    parser.add_argument("--check", action="store_true", help="validate the configuration and exit")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config) if args.config else Config()
    except ConfigError as exc:
        print(f"nattrail masqlog: {exc}", file=sys.stderr)
        return 2
    if args.log:
        config = Config(**{**vars(config), "log": args.log})
    if args.check:
        print(json.dumps(vars(config), sort_keys=True))
        return 0
    try:
        log = JsonLog(config.log, fields={"daemon": "masqlog"})
    except OSError as exc:
        print(f"nattrail masqlog: cannot open {config.log}: {exc.strerror}", file=sys.stderr)
        return 1
    # Each open connection keeps a few small records alive until it closes, and the collector
    # re-walks them all on a busy router. Start-up objects are frozen out of collections, and the
    # young generation is collected per 10,000 allocations rather than 700; cycles, rare here, are
    # still collected. What each part saves is in docs/benchmarks.md.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    with contextlib.closing(log):
        try:
            return asyncio.run(run(config, log=log))
        except PermissionError as exc:
            print(f"nattrail masqlog: conntrack events need CAP_NET_ADMIN: {exc}", file=sys.stderr)
            return 1
