"""Joining the ``open``/``ident``/``close`` records of the logs into connections, and bounding the ones
whose close was never logged by what proves them gone (a reused address pair, a restart's table dump)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nattrail.who.logs import CONNECTION_EVENTS, EVENT_ORDER, Record
from nattrail.who.times import _record_time, format_time
from nattrail.who.tunables import SAME_START

Key = tuple[Any, ...]


@dataclass
class Connection:
    key: Key
    data: dict[str, Any]  # the key fields, as logged
    first_seen: datetime
    opened: datetime | None = None
    closed: datetime | None = None
    duration: float | None = None
    counters: dict[str, int | None] = field(default_factory=dict)
    resync: bool = False
    open_logged: bool = False  # a live open, not only a table dump's
    close_logged: bool = False
    ident_logged: bool = False
    user: str | None = None
    ident_error: str | None = None
    ident_os: str | None = None
    close_lost: bool = False  # closed by a table dump after lost events: the real close was earlier
    relearnt: list[datetime] = field(default_factory=list)  # times of table dumps that listed it
    ended_by: datetime | None = None  # known to be gone by then, although no close was logged
    ended_why: str = ""
    records: list[str] = field(default_factory=list)

    def reply_tuple(self) -> Key:
        """What conntrack keeps unique at any moment for masqueraded traffic (proto, masq, server)."""
        d = self.data
        return (
            d.get("proto"),
            d.get("masq_ip"),
            d.get("masq_port"),
            d.get("server_ip"),
            d.get("server_port"),
        )


KEY_FIELDS: tuple[str, ...] = (
    "ct_id",
    "proto",
    "client_ip",
    "client_port",
    "server_ip",
    "server_port",
    "masq_ip",
    "masq_port",
)

COUNTER_FIELDS: tuple[str, ...] = ("orig_packets", "orig_bytes", "reply_packets", "reply_bytes")


def _same_start(a: datetime | None, b: datetime | None) -> bool:
    return a is None or b is None or abs(a - b) <= SAME_START


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def join(records: Iterable[Record]) -> list[Connection]:
    """Turn open/ident/close records into connections, in the order they were first seen."""
    by_key: dict[Key, list[Connection]] = {}
    connections: list[Connection] = []

    def new(record: Record, key: Key) -> Connection:
        conn = Connection(key=key, data={f: record.data.get(f) for f in KEY_FIELDS}, first_seen=record.ts)
        by_key.setdefault(key, []).append(conn)
        connections.append(conn)
        return conn

    ordered = sorted(
        (r for r in records if r.event in CONNECTION_EVENTS),
        key=lambda r: (r.ts, EVENT_ORDER[r.event], r.seq),
    )
    for record in ordered:
        data = record.data
        key = tuple(data.get(f) for f in KEY_FIELDS)
        same_key = by_key.get(key, [])
        if record.event == "open":
            opened = _record_time(data.get("opened"))
            resync = data.get("resync") is True
            conn = None
            if resync:
                # A table dump re-learns connections we may already know: the same one, not a reuse.
                conn = next((c for c in reversed(same_key) if c.closed is None), None)
                if conn is not None and not _same_start(conn.opened, opened):
                    conn = None
            if conn is None:
                conn = new(record, key)
            conn.open_logged = conn.open_logged or not resync
            conn.resync = conn.resync or resync
            if resync:
                conn.relearnt.append(record.ts)
            conn.opened = conn.opened or opened
            conn.records.append(f"{record.where} {'resync' if resync else 'open'}")
            if "ident_error" in data:
                # The logger says in the open record itself when it did not ask (skipped:<reason>).
                _ident(conn, record)
        elif record.event == "ident":
            # The answer may come after the close (timeouts), so the latest connection of the key it is.
            _ident(same_key[-1] if same_key else new(record, key), record)
        else:
            opened = _record_time(data.get("opened"))
            closed = _record_time(data.get("closed")) or record.ts
            conn = next(
                (
                    c
                    for c in reversed(same_key)
                    if c.closed is None
                    and _same_start(c.opened, opened)
                    and (c.opened is None or c.opened <= closed + SAME_START)
                ),
                None,
            )
            _close(conn or new(record, key), record, opened, closed)
    _bound_by_reuse(connections)
    _bound_by_restarts(connections, records)
    return connections


def _ident(conn: Connection, record: Record) -> None:
    data = record.data
    conn.ident_logged = True
    user, error, ident_os = data.get("user"), data.get("ident_error"), data.get("ident_os")
    conn.user = user if isinstance(user, str) else None
    conn.ident_error = error if isinstance(error, str) else None
    conn.ident_os = ident_os if isinstance(ident_os, str) else None
    conn.records.append(f"{record.where} ident")


def _close(conn: Connection, record: Record, opened: datetime | None, closed: datetime) -> None:
    data = record.data
    conn.close_logged = True
    conn.opened = conn.opened or opened
    conn.closed = closed
    duration = data.get("duration")
    if isinstance(duration, int | float) and not isinstance(duration, bool):
        conn.duration = float(duration)
    elif conn.opened is not None and not data.get("lost"):
        conn.duration = (closed - conn.opened).total_seconds()
    conn.counters = {name: _int_or_none(data.get(name)) for name in COUNTER_FIELDS}
    conn.close_lost = data.get("lost") is True
    conn.records.append(f"{record.where} {'close (lost)' if conn.close_lost else 'close'}")


def _ended_by(conn: Connection, moment: datetime, why: str) -> None:
    if conn.ended_by is None or moment < conn.ended_by:
        conn.ended_by, conn.ended_why = moment, why


def _bound_by_reuse(connections: Sequence[Connection]) -> None:
    """A connection without a close ended before another one took its address pair.

    Conntrack never holds two entries with the same reply tuple, so the later open proves the earlier
    connection was gone by then (its close event was lost, or it was never seen to close).
    """
    starts: dict[Key, list[datetime]] = {}
    for conn in connections:
        if conn.opened is not None:
            starts.setdefault(conn.reply_tuple(), []).append(conn.opened)
    for conn in connections:
        if conn.closed is not None:
            continue
        later = [t for t in starts.get(conn.reply_tuple(), []) if t > conn.first_seen]
        if later:
            _ended_by(conn, min(later), "when another connection took the same address pair")


def restart_dumps(records: Iterable[Record]) -> list[tuple[datetime, datetime]]:
    """(start, dump) for each logger start followed by its table dump (a "resync" record)."""
    pairs = []
    started: datetime | None = None
    for record in sorted(records, key=lambda r: (r.ts, EVENT_ORDER.get(r.event, 9), r.seq)):
        if record.event == "start":
            started = record.ts
        elif record.event == "stop":
            started = None
        elif record.event == "resync" and started is not None:
            pairs.append((started, record.ts))
            started = None
    return pairs


def _bound_by_restarts(connections: Sequence[Connection], records: Iterable[Record]) -> None:
    """A connection open before the logger (re)started, and missing from the dump of the table it logs
    right after starting, was gone by that dump: the reboot or the downtime ended it unseen."""
    dumps = restart_dumps(records)
    for conn in connections:
        if conn.closed is not None:
            continue
        for started, dumped in dumps:
            if conn.first_seen < started and not any(t >= started for t in conn.relearnt):
                why = f"as the table dump after the logger started at {format_time(started)} did not list it"
                _ended_by(conn, dumped, why)
                break
