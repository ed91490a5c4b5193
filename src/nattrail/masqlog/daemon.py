"""The netlink socket and the event loop around a :class:`~nattrail.masqlog.tracker.MasqLogger`:
reading events in batches and letting them gather between reads, the resync after lost events, and
reaping (making the kernel drop expired connections, so that their DESTROY events come on time).
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

from nattrail import ctnetlink, mmsg
from nattrail.ctnetlink import Conntrack, DecodeError
from nattrail.masqlog.tracker import Key, MasqLogger
from nattrail.masqlog.tunables import DRAIN_BUDGET, READ_BUDGET, RECHECK_MAX, WALK_ABOVE

LookupFunc = Callable[[list[Key]], list[int | None]]
TableDump = Callable[[], list[Conntrack]]


@dataclass(frozen=True)
class Reaping:
    """How expired connections are made to go: by looking them up, or by a table walk when more
    than ``walk_above`` are due at once."""

    walk: Callable[[], int] = ctnetlink.reap_expired
    lookup: LookupFunc = ctnetlink.lookup
    walk_above: int = WALK_ABOVE


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
