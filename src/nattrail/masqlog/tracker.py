"""What the daemon knows and writes: which conntrack events are ours, their records, the connections
open, when each is next looked up, and how a table dump is reconciled after lost events.

:class:`MasqLogger` has no socket (the daemon's loop, in daemon.py, feeds it), so that tests feed it
decoded messages; its only use of the event loop is the ident queries it starts.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from nattrail import ctnetlink, ident
from nattrail.ctnetlink import Conntrack
from nattrail.ctnetlink.constants import IPS_SRC_NAT, PROTO_NAMES
from nattrail.jsonlog import EpochStamp, JsonLog
from nattrail.masqlog.config import Config
from nattrail.masqlog.records import (
    _CLOSE_FULL,
    _SKIPPED,
    _json,
    _seconds,
    connection_fields,
    connection_json,
)
from nattrail.masqlog.tunables import FALLBACK_TIMEOUT

# A tracked connection: conntrack's id and its original tuple, as events and table dumps give them.
Key = tuple[int | None, ctnetlink.Tuple]
IdentQuery = Callable[..., Awaitable[ident.IdentReply]]

_new = tuple.__new__


class Tracked(NamedTuple):
    opened: str | None
    opened_mono: float
    ct: Conntrack  # kept so that a close lost in an overrun can still be written in full
    conn: str  # connection_json(ct), made at the open and written again by the close


@dataclass
class DumpWindow:
    """Connections opened and closed while a resync's table dump ran: the dump cannot say whether
    they were in the table before or after it walked past them, so the resync leaves them alone."""

    opened: set[Key] = field(default_factory=set)
    closed: set[Key] = field(default_factory=set)


@dataclass
class Stats:
    # The counts in the stats and stop records, which list them in this order. Conntrack events read,
    # and what became of them:
    events: int = 0
    opens: int = 0
    closes: int = 0
    ignored: int = 0  # not source-NATed, or a protocol not logged
    decode_errors: int = 0
    # Events the kernel dropped, and the table dumps that made up for them.
    overruns: int = 0
    resyncs: int = 0
    # Ident queries: answered, failed, or not asked (over the concurrency cap or the client's rate).
    idents_answered: int = 0
    ident_errors: int = 0
    ident_skipped: int = 0
    # Memory and expiry.
    untracked: int = 0  # opened past max_tracked: logged, not kept (no lookups, closed by its event alone)
    lookups: int = 0  # connections looked up to make the kernel drop them if expired
    walks: int = 0  # table walks, instead of lookups, when many connections were due at once


@dataclass
class MasqLogger:
    """The event logic, separate from the socket so that tests feed it decoded messages."""

    config: Config
    log: JsonLog
    query: IdentQuery = ident.query
    clock_ns: Callable[[], int] = time.time_ns
    monotonic: Callable[[], float] = time.monotonic
    sink: Callable[[str], None] | None = None  # the optional syslog copy
    stats: Stats = field(default_factory=Stats)
    # Seconds after its open that a connection could first have expired: conntrack's shortest
    # timeout (run() reads it from the kernel's settings).
    first_check: float = FALLBACK_TIMEOUT

    def __post_init__(self) -> None:
        self.tracked: dict[Key, Tracked] = {}
        self.window: DumpWindow | None = None
        # When each tracked connection is next looked up. First lookups come a fixed time after the
        # open, and those left by a walk or a failed pass come back the next pass: each kind queues
        # in order. Later lookups (at the time conntrack gives) go to a heap of (monotonic time,
        # tie-breaker, key).
        self.first_checks: deque[tuple[float, Key]] = deque()
        self.next_pass: deque[tuple[float, Key]] = deque()
        self.checks: list[tuple[float, int, Key]] = []
        self.check_order = itertools.count()
        self.pending: list[str] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.limiter = ident.IdentLimiter(
            max_concurrent=self.config.ident_max_concurrent,
            per_client_rate=self.config.ident_rate,
            per_client_burst=self.config.ident_burst,
            max_clients=self.config.ident_max_clients,
        )
        self.protocols = frozenset(self.config.protocols)
        self.proto_numbers = frozenset(n for n, name in PROTO_NAMES.items() if name in self.protocols)
        # The bound method: called three times a close, and faster than calling the instance.
        self.stamp: Callable[[int], str] = EpochStamp().__call__
        self.open_format = self.log.line_format("open")
        self.close_format = self.log.line_format("close")
        # A close with both timestamps and both counters, as the kernel sends it with accounting and
        # timestamps on, written in one format operation: closes are half of all records.
        self.close_full = self.log.line_format("close", body=_CLOSE_FULL)

    # --- output ------------------------------------------------------------------------------------

    def emit(self, event: str, level: str = "info", **fields: Any) -> None:  # noqa: ANN401
        self.pending.append(self.log.format(event, level, **fields))

    def flush(self) -> None:
        lines, self.pending = self.pending, []
        self.log.write_lines(lines)
        if self.sink is not None:
            for line in lines:
                self.sink(line.rstrip("\n"))

    # --- events ------------------------------------------------------------------------------------

    def wanted(self, ct: Conntrack) -> bool:
        return bool(ct.status & IPS_SRC_NAT) and ct.orig.proto in self.proto_numbers

    def handle(self, ct: Conntrack) -> None:
        """Log one conntrack event (new, destroy or dump) if it is a masqueraded connection."""
        self.stats.events += 1
        if not self.wanted(ct):
            self.stats.ignored += 1
            return
        key: Key = (ct.ct_id, ct.orig)
        if ct.event == "destroy":
            self._close(key, ct)
        elif ct.event in ("new", "dump"):
            self._open(key, ct, resync=ct.event == "dump")

    def _open(self, key: Key, ct: Conntrack, *, resync: bool) -> None:
        if key in self.tracked:
            return  # already known (a dump racing with its own NEW event)
        if self.window is not None:
            self.window.opened.add(key)
        now_ns = self.clock_ns()
        ts = self.stamp(now_ns)
        # A dump entry may be old: its start is the kernel's timestamp, if the kernel keeps them.
        opened = ts if not resync else self.stamp(ct.start_ns) if ct.start_ns else None
        conn = connection_json(ct)  # the same at the close: the tuples and the id never change
        if len(self.tracked) < self.config.max_tracked:
            mono = self.monotonic()
            # tuple.__new__: a NamedTuple's own constructor costs three times as much.
            self.tracked[key] = _new(Tracked, (opened, mono, ct, conn))
            self.first_checks.append((mono + self.first_check, key))
        else:
            self.stats.untracked += 1
        self.stats.opens += 1
        extra = ',"resync":true' if resync else ""
        asked = False
        if ct.orig.proto == socket.IPPROTO_TCP and self.config.ident and not resync:
            reason = self.limiter.try_acquire(ct.orig.src)
            if reason is None:
                asked = True
            else:
                # Not asked: said in the open record itself, so a flood costs one record per
                # connection, not two.
                self.stats.ident_skipped += 1
                extra = _SKIPPED[reason]
        body = f'{conn},"opened":{_json(opened)}{extra}'
        self.pending.append(self.open_format % (ts, body))
        if asked:
            self._start_ident(connection_fields(ct), ct)

    def _close(self, key: Key, ct: Conntrack) -> None:
        tracked = self.tracked.pop(key, None)
        if self.window is not None:
            self.window.closed.add(key)
        now_ns = self.clock_ns()
        ts = self.stamp(now_ns)
        start_ns, stop_ns, c_orig, c_reply = ct[7], ct[8], ct[5], ct[6]  # by index: the hot path
        if start_ns and stop_ns and c_orig is not None and c_reply is not None and tracked is not None:
            self.stats.closes += 1
            stamp = self.stamp
            self.pending.append(
                self.close_full
                % (ts, tracked.conn, stamp(start_ns), stamp(stop_ns), _seconds(stop_ns - start_ns),
                   c_orig[0], c_orig[1], c_reply[0], c_reply[1])
            )  # fmt: skip
            return
        closed = self.stamp(ct.stop_ns) if ct.stop_ns else ts
        if ct.start_ns:
            opened: str | None = self.stamp(ct.start_ns)
        else:
            opened = tracked.opened if tracked else None
        if ct.start_ns and ct.stop_ns:
            duration: float | None = _seconds(ct.stop_ns - ct.start_ns)
        elif tracked is not None:
            duration = round(self.monotonic() - tracked.opened_mono, 6)
        else:
            duration = None
        self.stats.closes += 1
        c_orig, c_reply = ct.counters_orig, ct.counters_reply
        if c_orig is None:
            orig_counts = '"orig_packets":null,"orig_bytes":null'
        else:
            orig_counts = f'"orig_packets":{c_orig.packets},"orig_bytes":{c_orig.bytes}'
        if c_reply is None:
            reply_counts = '"reply_packets":null,"reply_bytes":null'
        else:
            reply_counts = f'"reply_packets":{c_reply.packets},"reply_bytes":{c_reply.bytes}'
        conn = tracked.conn if tracked is not None else connection_json(ct)
        body = (f'{conn},"opened":{_json(opened)},"closed":"{closed}",'
                f'"duration":{_json(duration)},{orig_counts},{reply_counts}')  # fmt: skip
        self.pending.append(self.close_format % (ts, body))

    # --- ident ----------------------------------------------------------------------------------------

    def _start_ident(self, conn: dict[str, Any], ct: Conntrack) -> None:
        """Ask the client's identd; the limiter slot taken in _open is released when it is done."""
        task = asyncio.get_running_loop().create_task(self._ident(conn, ct))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _ident(self, conn: dict[str, Any], ct: Conntrack) -> None:
        try:
            reply = await self.query(
                ct.orig.src,
                ct.orig.sport,
                ct.orig.dport,
                timeout=self.config.ident_timeout,
                port=self.config.ident_port,
            )
        finally:
            self.limiter.release()
        if reply.error is None:
            self.stats.idents_answered += 1
        else:
            self.stats.ident_errors += 1
        self.emit("ident", **conn, **reply.as_fields())
        self.flush()

    def report_skips(self) -> None:
        skips = self.limiter.take_skips()
        if any(skips.values()):
            self.emit("ident_skips", "warning", **skips)
            self.flush()

    # --- lost events ----------------------------------------------------------------------------------

    def events_lost(self) -> None:
        self.stats.overruns += 1
        self.emit(
            "events_lost",
            "warning",
            overruns=self.stats.overruns,
            note="the kernel dropped conntrack events (receive buffer full); resyncing from a table dump",
        )

    # --- expiry -------------------------------------------------------------------------------------

    def due(self, now: float) -> list[Key]:
        """The tracked connections whose lookup time has come (closed ones are dropped on the way)."""
        checks, tracked = self.checks, self.tracked
        keys = []
        for queue in (self.first_checks, self.next_pass):
            while queue and queue[0][0] <= now:
                key = queue.popleft()[1]
                if key in tracked:
                    keys.append(key)
        while checks and checks[0][0] <= now:
            key = heapq.heappop(checks)[2]
            if key in tracked:
                keys.append(key)
        return keys

    def check_again(self, keys: list[Key]) -> None:
        """Make keys due again at the next pass (``reap_interval`` from now). They queue on their
        own, in the order they come, since the delay is always the same."""
        at = self.monotonic() + self.config.reap_interval
        append = self.next_pass.append
        for key in keys:
            append((at, key))

    def recheck(self, key: Key, at: float) -> None:
        if key in self.tracked:
            heapq.heappush(self.checks, (at, next(self.check_order), key))

    def begin_resync(self) -> None:
        """A table dump starts: note what opens and closes until :meth:`resync` reconciles it."""
        self.window = DumpWindow()

    def resync(self, table: list[Conntrack]) -> None:
        """Reconcile what we believe is open with a table dump.

        After :meth:`begin_resync`, the caller has handled every event queued before the dump ended,
        so a connection missing from the dump closed in the gap, unless it opened while the dump ran
        (after the walk passed its place); and one closed while the dump ran is not learnt again.
        """
        window, self.window = self.window, None
        opened, closed = (window.opened, window.closed) if window is not None else (set(), set())
        self.stats.resyncs += 1
        seen: set[Key] = set()
        learnt = 0
        for ct in table:
            if not self.wanted(ct):
                continue
            key: Key = (ct.ct_id, ct.orig)
            seen.add(key)
            if key not in self.tracked and key not in closed:
                learnt += 1
                self._open(key, ct, resync=True)
        gone = [key for key in self.tracked if key not in seen and key not in opened]
        now = self.stamp(self.clock_ns())
        for key in gone:
            tracked = self.tracked.pop(key)
            self.stats.closes += 1
            unknown = dict.fromkeys(
                ("duration", "orig_packets", "orig_bytes", "reply_packets", "reply_bytes")
            )
            self.emit("close", **connection_fields(tracked.ct), opened=tracked.opened, closed=now, **unknown,
                      lost=True)  # fmt: skip
        self.emit("resync", open=len(seen), learnt=learnt, closed_in_gap=len(gone))

    def stats_fields(self) -> dict[str, int]:
        return {**vars(self.stats), "tracked": len(self.tracked), "ident_in_flight": self.limiter.in_flight}
