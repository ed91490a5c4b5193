"""Reading the masquerade logs: the current file and its rotated siblings, plain or compressed, streamed
as bytes; only the lines that can concern the queried port (plus the few lifecycle and ``events_lost``
lines) are parsed, so memory follows the answer, not the size of the logs."""

from __future__ import annotations

import bz2
import gzip
import ipaddress
import json
import lzma
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from nattrail.who.query import Query
from nattrail.who.times import _record_time
from nattrail.who.tunables import ROTATED_SUFFIX

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

# The masquerade logger writes through JsonLog: compact separators, "ts" first.
COMPACT_START = b'{"ts":"'

RECORD_START = b'{"ts":'

MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


class WhoError(Exception):
    """The logs cannot be read at all (exit status 2)."""


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
