"""`nattrail who`: which inside host (and user) used a masquerade port at a given time.

Reads the masquerade logger's JSON lines (``/var/log/nattrail/masq.log`` and every rotated file next to
it, plain or compressed), joins the ``open``/``ident``/``close`` records of each connection, and lists
the connections through the masquerade port whose lifetime touches ``--at`` ± ``--window``, newest
first, marking the one(s) open at ``--at``.

Logs can be hundreds of megabytes: lines are streamed as bytes and only those that can concern the
port (plus the few lifecycle and ``events_lost`` lines) are parsed.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import ipaddress
import json
import lzma
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from nattrail import names
from nattrail.accounting import human_bytes

DEFAULT_LOG = names.MASQ_LOG


def default_log(settings: Path = Path(names.MASQLOG_CONFIG)) -> str:
    """Where the masquerade logger writes, as its settings file says (a router whose nattrail_log_dir
    is elsewhere); the daemon's default when the file is missing or says nothing usable."""
    try:
        log = json.loads(settings.read_text(encoding="utf-8")).get("log")
    except (OSError, ValueError, AttributeError):
        return DEFAULT_LOG
    return log if isinstance(log, str) and log else DEFAULT_LOG


PROTOS: tuple[str, ...] = ("tcp", "udp", "icmp", "any")
CONNECTION_EVENTS: frozenset[str] = frozenset({"open", "ident", "close"})
# Known events this command has no use for; anything else is counted as unknown.
OTHER_EVENTS: frozenset[str] = frozenset({"ident_skips"})
# "resync" (without "open") summarises a table dump; after a start it tells which connections survived.
LIFECYCLE_EVENTS: frozenset[str] = frozenset({"start", "stop", "resync"})
KEPT_EVENTS: frozenset[str] = CONNECTION_EVENTS | LIFECYCLE_EVENTS | {"events_lost"}
EVENT_ORDER: dict[str, int] = {
    "start": 0,
    "open": 1,
    "ident": 2,
    "close": 3,
    "resync": 4,
    "events_lost": 5,
    "stop": 6,
}
# Records whose event is one of these are parsed even though they carry no port (compact files: the
# event name is within the first bytes of the line, right after "ts" and "level").
SPECIAL_EVENTS: tuple[bytes, ...] = tuple(
    f'{name}"'.encode() for name in ("events_lost", "start", "stop", "resync")
)
EVENT_FIELD = b'"event":"'
# An open's "opened" is the logger's clock when the event arrived, a close's or a table dump's is the
# kernel's start time: the same connection may differ by the event delay. A real reuse of the same
# conntrack id and tuple needs a reboot, i.e. far more than this.
SAME_START = timedelta(seconds=30)
UNITS: dict[str, int] = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_WINDOW = timedelta(days=3660)
AT_PATTERN = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<time>\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)"
    r"\s*(?P<zone>[Zz]|[+-]\d{2}:?\d{2})?$"
)
WINDOW_PATTERN = re.compile(r"^(?P<count>\d+)\s*(?P<unit>[smhd]?)$", re.IGNORECASE)
# Rotated names: masq.log.1, masq.log.2.gz, masq.log-20261121, masq.log-20261121.gz (dateext).
ROTATED_SUFFIX = r"(?:\.\d+|-\d[\d_-]*)?(?:\.(?:gz|bz2|xz|zst))?"
# The masquerade logger writes through JsonLog: compact separators, "ts" first.
COMPACT_START = b'{"ts":"'
RECORD_START = b'{"ts":'
MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)

Key = tuple[Any, ...]


class WhoError(Exception):
    """The logs cannot be read at all (exit status 2)."""


# --- query --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class At:
    """The moment asked about, in UTC, with how it was given."""

    moment: datetime
    given: str
    zone: str | None = None  # "local time, UTC-05:00" when the input had no offset
    warning: str | None = None  # set when a naive local time is ambiguous (daylight saving)


@dataclass(frozen=True)
class Query:
    masq_port: int
    at: At
    window: timedelta
    masq_ip: str | None = None
    remote_ip: str | None = None
    remote_port: int | None = None
    proto: str | None = None  # None: any

    @property
    def start(self) -> datetime:
        return _shift(self.at.moment, -self.window)

    @property
    def end(self) -> datetime:
        return _shift(self.at.moment, self.window)


def _shift(moment: datetime, delta: timedelta) -> datetime:
    try:
        return moment + delta
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC) if delta > timedelta(0) else datetime.min.replace(tzinfo=UTC)


def _utc_offset(offset: timedelta | None) -> str:
    seconds = int((offset or timedelta(0)).total_seconds())
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    return f"UTC{sign}{hours:02d}:{rest // 60:02d}"


def parse_at(text: str, now: datetime | None = None) -> At:
    """``now``, or ``YYYY-MM-DD HH:MM[:SS[.ffffff]]`` (``T`` allowed) with an optional ``Z``/``+HH:MM``.

    A time without an offset is the machine's local time (the ``TZ`` environment variable, else
    /etc/localtime); where daylight saving makes it ambiguous or skipped, the first reading is used and
    ``warning`` says so.
    """
    stripped = text.strip()
    if stripped.lower() == "now":
        moment = (now or datetime.now(UTC)).astimezone(UTC)
        return At(moment=moment, given=text)
    match = AT_PATTERN.match(stripped)
    if not match:
        raise ValueError(f"not a time: {text!r}; use 'YYYY-MM-DD HH:MM[:SS]' (optionally with Z or +HH:MM)")
    zone = match["zone"]
    try:
        naive = datetime.fromisoformat(f"{match['date']}T{match['time']}")
        if zone:
            offset = "+00:00" if zone in "Zz" else f"{zone[:3]}:{zone[-2:]}"
            return At(
                moment=datetime.fromisoformat(f"{naive.isoformat()}{offset}").astimezone(UTC), given=text
            )
        first = naive.replace(fold=0).astimezone(UTC)
        second = naive.replace(fold=1).astimezone(UTC)
        local = naive.replace(fold=0).astimezone()
    except (ValueError, OverflowError, OSError) as exc:
        raise ValueError(f"not a valid time: {text!r} ({exc})") from None
    zone_text = f"local time, {_utc_offset(local.utcoffset())}"
    if local.tzname():
        zone_text += f" ({local.tzname()})"
    warning = None
    if first != second:
        warning = (
            f"--at {text!r} is ambiguous or skipped in the local time zone (daylight saving change); "
            f"used {format_time(first)}, the other reading is {format_time(second)}; give an offset to choose"
        )
    return At(moment=first, given=text, zone=zone_text, warning=warning)


def parse_window(text: str) -> timedelta:
    """``90``, ``90s``, ``5m``, ``2h`` or ``1d``."""
    match = WINDOW_PATTERN.match(text.strip())
    if not match:
        raise ValueError(f"not a window: {text!r}; use seconds (90) or 90s, 5m, 2h, 1d")
    try:
        window = timedelta(seconds=int(match["count"]) * UNITS[match["unit"].lower()])
    except OverflowError:
        window = MAX_WINDOW + timedelta(days=1)
    if window > MAX_WINDOW:
        raise ValueError(f"window {text!r} is too large (at most {MAX_WINDOW.days}d)")
    return window


def parse_port(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"not a port: {text!r}; expected 1-65535")
    return int(text)


def canonical_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise ValueError(f"not an IP address: {text!r}") from None


def parse_remote(text: str) -> tuple[str, int | None]:
    """``IP``, ``IPv4:PORT`` or ``[IPv6]:PORT``."""
    stripped = text.strip()
    port = None
    if stripped.startswith("["):
        host, closed, rest = stripped[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"not IP[:PORT]: {text!r}; write IPv6 with a port as [2001:db8::1]:443")
        if rest:
            port = parse_port(rest[1:])
    elif stripped.count(":") == 1:
        host, _, port_text = stripped.partition(":")
        port = parse_port(port_text)
    else:
        host = stripped
    return canonical_ip(host), port


def _argtype(parse: Any, what: str) -> Any:  # noqa: ANN401 - wraps parsers of different result types
    """An argparse type whose error names the value (argparse adds the option)."""

    def convert(text: str) -> Any:  # noqa: ANN401
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = what
    return convert


# --- reading the logs ---------------------------------------------------------------------------------


def find_logs(path: Path) -> list[Path]:
    """``path`` itself (if present) and its rotated siblings, sorted by name."""
    pattern = re.compile(re.escape(path.name) + ROTATED_SUFFIX)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return [path]
    found = [path.parent / name for name in names if pattern.fullmatch(name) and name != path.name]
    return [path, *sorted(found)]


@dataclass(frozen=True)
class Record:
    ts: datetime
    event: str
    data: dict[str, Any]
    where: str  # "masq.log.1:17"
    seq: int  # reading order: a stable tie-break between records of the same instant


@dataclass(frozen=True)
class Gap:
    """A stretch where the logger may have missed connections."""

    start: datetime | None  # None: unknown (the record before it is in another file)
    end: datetime
    why: str


@dataclass
class Scan:
    files: list[str] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    first: datetime | None = None
    last: datetime | None = None
    last_event: str | None = None
    file_ends: list[datetime] = field(default_factory=list)  # the last record's time, per file
    malformed: int = 0
    unknown: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def see(self, ts: datetime, event: str) -> None:
        if self.first is None or ts < self.first:
            self.first = ts
        if self.last is None or ts > self.last or (ts == self.last and event == "stop"):
            self.last = ts
            self.last_event = event


def _record_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _decode(line: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    return obj if isinstance(obj, dict) else None


def _open_log(path: Path) -> tuple[IO[bytes], IO[bytes], tuple[int, int]]:
    """Open plain or compressed (sniffed by content, not name): (stream, raw file, (dev, inode))."""
    raw = path.open("rb")
    try:
        status = os.fstat(raw.fileno())
        head = raw.read(6)
        raw.seek(0)
        kind = next((name for magic, name in MAGIC if head.startswith(magic)), None)
        stream: IO[bytes]
        if kind == "gzip":
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        elif kind == "bzip2":
            stream = bz2.BZ2File(raw)
        elif kind == "xz":
            stream = lzma.LZMAFile(raw)  # noqa: SIM115 - the caller closes it
        elif kind == "zstd":
            raise OSError(f"{path} is zstd-compressed, which Python cannot read; decompress it (zstd -d)")
        else:
            stream = raw
    except BaseException:
        raw.close()
        raise
    return stream, raw, (status.st_dev, status.st_ino)


class Scanner:
    """Collects what one query needs from any number of log files."""

    def __init__(self, query: Query) -> None:
        self.query = query
        self.scan = Scan()
        digits = str(query.masq_port).encode()
        self._needles = (b'"masq_port":' + digits + b",", b'"masq_port":' + digits + b"}")
        self._seen_lines: set[bytes] = set()
        self._bad_lines: set[bytes] = set()
        self._seen_files: set[tuple[int, int]] = set()
        self._ips: dict[str, str] = {}
        self._seq = 0

    def read(self, paths: Iterable[Path]) -> Scan:
        for path in paths:
            self._read_file(path)
        return self.scan

    def _read_file(self, path: Path) -> None:
        try:
            stream, raw, identity = _open_log(path)
        except FileNotFoundError:
            self.scan.problems.append(f"{path} does not exist")
            return
        except OSError as exc:
            self.scan.problems.append(f"cannot read {path}: {exc.strerror or exc}")
            return
        # A decompressor does not close the file object it was given: close both.
        with raw, stream:
            if identity in self._seen_files:  # a hard link, or renamed by logrotate while we listed
                return
            self._seen_files.add(identity)
            self.scan.files.append(str(path))
            try:
                self._lines(stream, path.name)
            except EOFError:
                self.scan.problems.append(f"{path} ends early (still being compressed?); used what was there")
            except (OSError, lzma.LZMAError) as exc:
                self.scan.problems.append(f"error reading {path}: {exc}; used what was there")

    def _lines(self, stream: Iterable[bytes], label: str) -> None:
        compact: bool | None = None
        handled = False  # whether the current line went through _take (parsed, counted if bad)
        prev: bytes | None = None
        before: bytes | None = None
        lineno = 0
        needle_a, needle_b = self._needles
        for lineno, line in enumerate(stream, 1):
            if compact is None:
                if not line.strip():
                    continue
                compact = line.startswith(COMPACT_START)
                probe = self._probe(line)
                if probe is not None:
                    self.scan.see(*probe)
            if not compact or needle_a in line or needle_b in line:
                handled = True
            else:
                event_at = line.find(EVENT_FIELD, 0, 96)
                handled = event_at > 0 and line.startswith(SPECIAL_EVENTS, event_at + len(EVENT_FIELD))
            if handled:
                self._take(line, label, lineno, prev)
            before, prev = prev, line
        if prev is None:
            return
        # The last line is what a crash or a full disk tears; if it is, the one before it tells where
        # the file ends.
        probe = self._probe(prev)
        if probe is None:
            if not handled and prev.strip():
                self.scan.malformed += 1
            probe = self._probe(before) if before is not None else None
        if probe is not None:
            self.scan.see(*probe)
            self.scan.file_ends.append(probe[0])

    @staticmethod
    def _probe(line: bytes) -> tuple[datetime, str] | None:
        """The time and event of any record (for the logs' span), without using its content."""
        obj = _decode(line) if line.strip() else None
        ts = _record_time(obj.get("ts")) if obj is not None else None
        return None if obj is None or ts is None else (ts, str(obj.get("event")))

    def _parse(self, line: bytes) -> tuple[datetime, str, dict[str, Any]] | None:
        """The record on ``line``; None (counted once) when there is none."""
        obj = _decode(line)
        if obj is None:
            if line in self._bad_lines:
                return None
            self._bad_lines.add(line)
            self.scan.malformed += 1
            # A torn line followed by the next record written after a restart: keep that record.
            start = line.rfind(RECORD_START, 1)
            obj = _decode(line[start:]) if start > 0 else None
            if obj is None:
                return None
        ts = _record_time(obj.get("ts"))
        event = obj.get("event")
        if ts is None or not isinstance(event, str):
            self.scan.malformed += 1
            return None
        return ts, event, obj

    def _take(self, line: bytes, label: str, lineno: int, prev: bytes | None) -> None:
        parsed = self._parse(line) if line.strip() else None
        if parsed is None:
            return
        ts, event, obj = parsed
        self.scan.see(ts, event)
        if event in CONNECTION_EVENTS and not self._wanted(obj):
            return
        # The same record in two files (copytruncate, a copied log) counts once; only kept lines are
        # remembered, so memory follows the answer, not the size of the logs.
        if event in KEPT_EVENTS:
            if line in self._seen_lines:
                return
            self._seen_lines.add(line)
        self._seq += 1
        where = f"{label}:{lineno}"
        if event in CONNECTION_EVENTS:
            self.scan.records.append(Record(ts, event, obj, where, self._seq))
        elif event == "events_lost":
            lost = obj.get("lost")
            count = f"{lost} " if isinstance(lost, int) and not isinstance(lost, bool) else ""
            self.scan.gaps.append(
                Gap(self._time_of(prev), ts, f"the kernel dropped {count}connection events ({where})")
            )
        elif event in LIFECYCLE_EVENTS:
            self.scan.records.append(Record(ts, event, {"prev": self._time_of(prev)}, where, self._seq))
        elif event not in OTHER_EVENTS:
            self.scan.unknown[event] += 1

    def _time_of(self, line: bytes | None) -> datetime | None:
        obj = _decode(line) if line else None
        return _record_time(obj.get("ts")) if obj else None

    def _ip(self, value: object) -> object:
        if not isinstance(value, str):
            return value
        known = self._ips.get(value)
        if known is None:
            try:
                known = str(ipaddress.ip_address(value))
            except ValueError:
                known = value
            self._ips[value] = known
        return known

    def _wanted(self, obj: dict[str, Any]) -> bool:
        query = self.query
        port = obj.get("masq_port")
        if isinstance(port, bool) or port != query.masq_port:
            return False
        for name in ("client_ip", "server_ip", "masq_ip"):
            obj[name] = self._ip(obj.get(name))
        if query.proto is not None and obj.get("proto") != query.proto:
            return False
        if query.masq_ip is not None and obj.get("masq_ip") != query.masq_ip:
            return False
        if query.remote_ip is not None and obj.get("server_ip") != query.remote_ip:
            return False
        return query.remote_port is None or obj.get("server_port") == query.remote_port


def read_logs(path: Path, query: Query) -> Scan:
    """Scan ``path`` and its rotated files; WhoError when none of them can be read."""
    scanner = Scanner(query)
    scan = scanner.read(find_logs(path))
    if not scan.files:
        detail = "; ".join(scan.problems) or f"{path} does not exist"
        raise WhoError(f"no log file could be read: {detail}")
    return scan


# --- joining records into connections -----------------------------------------------------------------


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


# --- selecting ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    conn: Connection
    start: datetime  # the interval used for matching: opened / closed, or the assumptions below
    end: datetime
    open_at_time: bool
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Result:
    query: Query
    matches: list[Match]
    files: list[str]
    first: datetime | None
    end: datetime | None
    warnings: list[str]  # about the answer: lost events, logger down, logs not covering the window
    problems: list[str]  # about reading: files, skipped lines


def select(
    connections: Iterable[Connection], query: Query, first: datetime, end: datetime, end_note: str
) -> list[Match]:
    """Connections whose [opened, closed] meets the window, newest first."""
    matches = []
    for conn in connections:
        notes = []
        start = conn.opened
        if start is None:
            start = first
            why = "learnt from a table dump (resync)" if conn.resync else "its open was not logged"
            notes.append(f"start unknown ({why}); taken as the start of the logs, {format_time(first)}")
        elif conn.resync and not conn.open_logged:
            notes.append("re-learnt from a table dump (resync); opened is the kernel's start time")
        if conn.close_lost:
            notes.append(
                "its close event was lost: closed is when a table dump no longer listed it, it ended earlier"
            )
        stop = conn.closed
        if stop is None:
            if conn.ended_by is not None and conn.ended_by < end:
                stop = conn.ended_by
                notes.append(f"no close logged; ended by {format_time(stop)}, {conn.ended_why}")
            else:
                stop = end
                notes.append(f"no close logged; {end_note}")
        stop = max(stop, start)
        if start <= query.end and stop >= query.start:
            at = query.at.moment
            matches.append(Match(conn, start, stop, start <= at <= stop, tuple(notes)))
    matches.sort(key=lambda m: (m.start, m.end, m.conn.first_seen), reverse=True)
    return matches


def _coverage(scan: Scan, query: Query, now: datetime) -> tuple[datetime, str, list[str]]:
    """The end of what the logs know, how to describe it, and warnings about the window's coverage."""
    assert scan.first is not None and scan.last is not None
    warnings = []
    if scan.last_event == "stop":
        end, end_note = scan.last, f"open when the logger stopped at {format_time(scan.last)}"
        if query.end > end:
            warnings.append(f"the logger stopped at {format_time(end)} and has logged nothing since")
    else:
        # A running logger that logged no close means there was none: the connection is still open.
        end = max(scan.last, now)
        end_note = f"still open at the end of the logs ({format_time(scan.last)}) as far as they show"
    if query.start < scan.first:
        warnings.append(
            f"the logs start at {format_time(scan.first)}, after the window starts: "
            "older connections are not in them (rotated away?)"
        )
    lifecycle = sorted(
        (r for r in scan.records if r.event in ("start", "stop")), key=lambda r: (r.ts, EVENT_ORDER[r.event])
    )
    gaps = list(scan.gaps)
    stopped: datetime | None = None
    for record in lifecycle:
        if record.event == "stop":
            stopped = record.ts
        elif stopped is not None:
            gaps.append(Gap(stopped, record.ts, "the logger was not running"))
            stopped = None
        elif record.ts > scan.first:  # the very first start in the logs follows nothing we know of
            gaps.append(
                Gap(record.data.get("prev"), record.ts, "the logger restarted without logging a stop")
            )
    # A gap on the first line of its file began where an older file ends.
    gaps = [
        g
        if g.start is not None
        else replace(g, start=max((t for t in scan.file_ends if t < g.end), default=None))
        for g in gaps
    ]
    for gap in sorted(gaps, key=lambda g: g.end):
        gap_start = gap.start or gap.end
        if gap_start <= query.end and gap.end >= query.start:
            span = (
                f"between {format_time(gap.start)} and {format_time(gap.end)}"
                if gap.start is not None and gap.start != gap.end
                else f"at {format_time(gap.end)}"
            )
            warnings.append(f"{gap.why} {span}: connections in that time may be missing or incomplete")
    return end, end_note, warnings


def who(query: Query, log: Path, now: datetime | None = None) -> Result:
    scan = read_logs(log, query)
    problems = list(scan.problems)
    skipped = []
    if scan.malformed:
        skipped.append(f"{scan.malformed} unparseable")
    if scan.unknown:
        names = ", ".join(sorted(scan.unknown))
        skipped.append(f"{sum(scan.unknown.values())} with unknown events ({names})")
    if skipped:
        total = scan.malformed + sum(scan.unknown.values())
        problems.append(f"skipped {' and '.join(skipped)} log line{'s' if total != 1 else ''}")
    warnings = [query.at.warning] if query.at.warning else []
    if scan.first is None or scan.last is None:
        warnings.append("the logs hold no records")
        return Result(query, [], scan.files, None, None, warnings, problems)
    end, end_note, coverage = _coverage(scan, query, now or datetime.now(UTC))
    warnings.extend(coverage)
    matches = select(join(scan.records), query, scan.first, end, end_note)
    return Result(query, matches, scan.files, scan.first, scan.last, warnings, problems)


# --- presentation -------------------------------------------------------------------------------------


def format_time(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    moment = moment.astimezone(UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def endpoint(ip: object, port: object) -> str:
    host = "*" if ip is None else str(ip)
    if ":" in host:
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


def _masq(query: Query) -> str:
    return endpoint(query.masq_ip, query.masq_port)


def _who_text(conn: Connection) -> str:
    if conn.user:
        return f"user {conn.user}"
    if conn.ident_error:
        return f"ident {conn.ident_error}"
    return "ident: no answer" if conn.ident_logged else "ident: not logged"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    return str(value) if value < 1024 else f"{value} ({human_bytes(value)})"


def _summary(conn: Connection) -> str:
    d = conn.data
    return (
        f"{endpoint(d['client_ip'], d['client_port'])} ({_who_text(conn)}) -> "
        f"{endpoint(d['server_ip'], d['server_port'])}"
    )


def _filters(query: Query) -> str:
    parts = [query.proto or "any protocol"]
    if query.remote_ip is not None:
        parts.append(f"remote {endpoint(query.remote_ip, query.remote_port)}")
    return ", ".join(parts)


def format_human(result: Result) -> str:
    query = result.query
    at = format_time(query.at.moment)
    count = len(result.matches)
    given = f"; --at {query.at.given!r} read as {query.at.zone}" if query.at.zone else ""
    lines = [
        f"{count} connection{'s' if count != 1 else ''} through {_masq(query)} ({_filters(query)}) "
        f"between {format_time(query.start)} and {format_time(query.end)}{given}"
    ]
    open_now = [m for m in result.matches if m.open_at_time]
    if not open_now:
        lines.append(f"none was open at {at}")
    else:
        which = "; ".join(_summary(m.conn) for m in open_now)
        lines.append(f"open at {at}: {which}")
    lines.extend(f"warning: {warning}" for warning in result.warnings)
    for match in result.matches:
        conn, d = match.conn, match.conn.data
        mark = f"   <- open at {at}" if match.open_at_time else ""
        c = conn.counters
        lines.extend(
            [
                "",
                f"{endpoint(d['client_ip'], d['client_port'])}  {_who_text(conn)}  -> "
                f"{endpoint(d['server_ip'], d['server_port'])}  via {endpoint(d['masq_ip'], d['masq_port'])}"
                f"  {d['proto']}{mark}",
                f"    opened {format_time(conn.opened)}  closed {format_time(conn.closed)}  "
                f"duration {format_duration(conn.duration)}  "
                f"bytes out {_bytes(c.get('orig_bytes'))} / in {_bytes(c.get('reply_bytes'))}",
            ]
        )
        lines.extend(f"    note: {note}" for note in match.notes)
        lines.append(f"    log: {', '.join(conn.records)}")
    return "\n".join(lines) + "\n"


def report_json(result: Result) -> dict[str, Any]:
    query = result.query
    matches = []
    for match in result.matches:
        conn = match.conn
        entry: dict[str, Any] = dict(conn.data)
        entry.update(
            {
                "user": conn.user,
                "ident_error": conn.ident_error,
                "ident_os": conn.ident_os,
                "ident_logged": conn.ident_logged,
                "opened": format_time(conn.opened) if conn.opened else None,
                "closed": format_time(conn.closed) if conn.closed else None,
                "duration": conn.duration,
                **{name: conn.counters.get(name) for name in COUNTER_FIELDS},
                "resync": conn.resync,
                "assumed_start": format_time(match.start),
                "assumed_end": format_time(match.end),
                "open_at_time": match.open_at_time,
                "notes": list(match.notes),
                "records": list(conn.records),
            }
        )
        matches.append(entry)
    return {
        "query": {
            "masq_port": query.masq_port,
            "masq_ip": query.masq_ip,
            "remote_ip": query.remote_ip,
            "remote_port": query.remote_port,
            "proto": query.proto or "any",
            "at": format_time(query.at.moment),
            "at_given": query.at.given,
            "at_zone": query.at.zone,
            "window_seconds": int(query.window.total_seconds()),
            "from": format_time(query.start),
            "to": format_time(query.end),
            "logs": result.files,
            "logs_start": format_time(result.first) if result.first else None,
            "logs_end": format_time(result.end) if result.end else None,
        },
        "matches": matches,
        "warnings": result.warnings + result.problems,
    }


# --- command line -------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "who",
        help="who used a masquerade port at a given time",
        description="Find the inside host (and ident user) behind a masqueraded connection, from the "
        "masquerade logger's logs (the current file and every rotated one).",
        epilog="A time without an offset is this machine's local time zone; give a remote report's time "
        "with its offset (e.g. '2026-11-21 04:12+01:00') or in UTC with Z.",
    )
    parser.add_argument(
        "--masq-port",
        required=True,
        type=_argtype(parse_port, "port"),
        metavar="PORT",
        help="the router's translated source port, as the remote side saw it",
    )
    parser.add_argument(
        "--masq-ip",
        type=_argtype(canonical_ip, "IP address"),
        metavar="IP",
        help="the router's translated source address (default: any)",
    )
    parser.add_argument(
        "--remote",
        type=_argtype(parse_remote, "remote"),
        metavar="IP[:PORT]",
        help="the remote host (and port) that was contacted",
    )
    parser.add_argument("--proto", choices=PROTOS, default="any", help="protocol (default: any)")
    parser.add_argument(
        "--at",
        required=True,
        type=_argtype(parse_at, "time"),
        metavar="TIME",
        help="'YYYY-MM-DD HH:MM[:SS]', optionally with Z or +HH:MM (default zone: local), or 'now'",
    )
    parser.add_argument(
        "--window",
        type=_argtype(parse_window, "window"),
        default="5m",
        metavar="SPAN",
        help="how far around --at to look: 90, 90s, 5m, 2h, 1d (default: 5m)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--log",
        default=None,
        metavar="FILE",
        help=f"current log; rotated files next to it are read too (default: the log {names.MASQLOG_CONFIG} "
        f"names, else {DEFAULT_LOG})",
    )
    parser.set_defaults(func=run)


def _query(args: argparse.Namespace) -> Query:
    remote_ip, remote_port = args.remote if args.remote else (None, None)
    return Query(
        masq_port=args.masq_port,
        at=args.at,
        window=args.window,
        masq_ip=args.masq_ip,
        remote_ip=remote_ip,
        remote_port=remote_port,
        proto=None if args.proto == "any" else args.proto,
    )


def _say(message: str) -> None:
    print(f"nattrail who: {message}", file=sys.stderr)


def run(args: argparse.Namespace, now: datetime | None = None) -> int:
    query = _query(args)
    try:
        result = who(query, Path(args.log or default_log()), now)
    except WhoError as exc:
        _say(f"error: {exc}")
        return 2
    for problem in result.problems:
        _say(f"warning: {problem}")
    if args.json:
        print(json.dumps(report_json(result), indent=2))
    elif result.matches:
        sys.stdout.write(format_human(result))
    if not result.matches:
        if not args.json:
            for warning in result.warnings:
                _say(f"warning: {warning}")
        _say(
            f"no connection through {_masq(query)} ({_filters(query)}) between "
            f"{format_time(query.start)} and {format_time(query.end)}"
        )
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``nattrail who`` on its own: ``argv`` holds the options that follow ``who``."""
    parser = argparse.ArgumentParser(prog="nattrail")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["who", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
