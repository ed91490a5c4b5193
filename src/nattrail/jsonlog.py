"""Structured logging shared by the nattrail daemons: one JSON object per line.

Every record starts with ``ts`` (UTC, ISO-8601 with microseconds and a trailing ``Z``), ``level`` and
``event``; the remaining fields are the caller's keyword arguments, followed by the logger's fixed fields
(for example ``daemon``). Files are opened with O_APPEND and every record goes out in one ``write``, so
lines from concurrent writers never interleave and a reader never sees half a record.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any, TextIO

LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
RESERVED: frozenset[str] = frozenset({"ts", "level", "event"})


class EpochStamp:
    """Formats nanoseconds since the epoch like :func:`utc_timestamp`, reusing the date-and-second
    part of recent seconds: a busy daemon stamps thousands of records a second, and one record may
    carry several instants (a connection's start and end, and now)."""

    KEEP = 64  # seconds remembered; the cache is emptied when it is full, so it stays small

    def __init__(self) -> None:
        # Second -> that second's stamp as a %-format of its microseconds: one operation a stamp.
        self._formats: dict[int, str] = {}

    def __call__(self, ns: int) -> str:
        fmt = self._formats.get(ns // 1_000_000_000)
        if fmt is None:
            fmt = self._remember(ns // 1_000_000_000)
        return fmt % (ns // 1000 % 1_000_000)

    def _remember(self, second: int) -> str:
        if len(self._formats) >= self.KEEP:
            self._formats.clear()
        fmt = self._formats[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + ".%06dZ"
        return fmt


def _encode_value(value: object) -> str | None:
    # encode_basestring is the escaper json.dumps(ensure_ascii=False) itself uses (C when available).
    """JSON for a scalar, or None when the general encoder must handle it."""
    kind = type(value)
    if kind is str:
        return encode_basestring(value)
    if kind is int:
        return str(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is float and math.isfinite(value):  # type: ignore[arg-type]
        return repr(value)
    return None


def dumps_flat(record: Mapping[str, Any]) -> str:
    """``json.dumps(record, ensure_ascii=False, separators=(",", ":"))`` for flat records of strings,
    numbers, booleans and None, several times faster; anything else goes to json.dumps."""
    parts = []
    append = parts.append
    for key, value in record.items():
        kind = type(value)
        # The common types inline (this runs for every record a busy daemon writes).
        if kind is str:
            encoded = encode_basestring(value)
        elif kind is int:
            encoded = str(value)
        elif value is None:
            encoded = "null"
        else:
            encoded = _encode_value(value)
        if encoded is None or type(key) is not str:
            return json.dumps(record, default=str, ensure_ascii=False, separators=(",", ":"))
        append(f"{encode_basestring(key)}:{encoded}")
    return "{" + ",".join(parts) + "}"


def utc_timestamp(moment: datetime | None = None) -> str:
    """Format ``moment`` (default: now) as ``2024-05-01T03:12:00.123456Z``."""
    moment = datetime.now(UTC) if moment is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class JsonLog:
    """A JSON-lines logger writing to a file path, or to a text stream (default: stdout)."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        stream: TextIO | None = None,
        fields: Mapping[str, Any] | None = None,
        min_level: str = "debug",
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if path is not None and stream is not None:
            raise ValueError("give a path or a stream, not both")
        if min_level not in LEVELS:
            raise ValueError(f"unknown level {min_level!r}; expected one of {', '.join(LEVELS)}")
        clash = RESERVED.intersection(fields or {})
        if clash:
            raise ValueError(f"fixed fields may not use reserved names: {', '.join(sorted(clash))}")
        self._path = None if path is None else os.fspath(path)
        self._stream = stream
        self._fields = dict(fields or {})
        self._min_rank = LEVELS.index(min_level)
        self._clock = clock
        self._stamp = EpochStamp()
        # Signal handlers (SIGHUP) may reopen while another thread logs; the lock keeps the fd valid.
        self._lock = threading.Lock()
        self._fd: int | None = self._open() if self._path is not None else None

    @property
    def path(self) -> str | None:
        return self._path

    def _open(self) -> int:
        assert self._path is not None
        return os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def format(self, event: str, level: str = "info", **fields: Any) -> str:  # noqa: ANN401
        """Return the record for ``event`` as one line of JSON (with the trailing newline)."""
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; expected one of {', '.join(LEVELS)}")
        clash = RESERVED.intersection(fields)
        if clash:
            raise ValueError(f"field names reserved for the record header: {', '.join(sorted(clash))}")
        ts = self._stamp(time.time_ns()) if self._clock is None else utc_timestamp(self._clock())
        record: dict[str, Any] = {"ts": ts, "level": level, "event": event}
        record.update(fields)
        for key, value in self._fields.items():
            record.setdefault(key, value)
        # dumps_flat falls back to json.dumps(default=str): an unexpected value (an exception, a
        # Path) must never cost us the record.
        return dumps_flat(record) + "\n"

    def line_format(self, event: str, level: str = "info", body: str = "%s") -> str:
        """A ``%``-format for records of ``event`` whose fields the caller encodes itself, for hot
        paths: ``fmt % (ts, body)`` is the line :meth:`format` would give, where ``ts`` is a
        timestamp as :class:`EpochStamp` makes it and ``body`` the caller's fields as JSON members
        (``"key":value,...``, not empty, no reserved key and no key of the fixed fields).

        ``body`` may instead be a ``%``-format of those members, put in as it is: then ``fmt %
        (ts, *values)`` fills it in the same operation, saving the intermediate string."""
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r}; expected one of {', '.join(LEVELS)}")
        head = dumps_flat({"level": level, "event": event})[1:-1]
        fixed = dumps_flat(self._fields)[1:-1]
        tail = f",{fixed}" if fixed else ""
        return '{"ts":"%s",' + head.replace("%", "%%") + "," + body + tail.replace("%", "%%") + "}\n"

    def log(self, event: str, level: str = "info", **fields: Any) -> None:  # noqa: ANN401
        line = self.format(event, level, **fields)
        if LEVELS.index(level) < self._min_rank:
            return
        with self._lock:
            if self._path is not None:
                if self._fd is None:
                    raise ValueError(f"log {self._path} is closed")
                os.write(self._fd, line.encode("utf-8"))
                return
            stream = self._stream if self._stream is not None else sys.stdout
            stream.write(line)
            stream.flush()

    def write_lines(self, lines: list[str]) -> None:
        """Write records made by :meth:`format` in one ``write``: a busy daemon pays one system call
        per batch instead of one per record, and a reader still never sees half a line."""
        if not lines:
            return
        data = "".join(lines).encode("utf-8")
        with self._lock:
            if self._path is not None:
                if self._fd is None:
                    raise ValueError(f"log {self._path} is closed")
                view = memoryview(data)
                # A regular file takes the whole write unless the disk is full; loop rather than
                # silently drop the tail if it ever does not.
                while view:
                    view = view[os.write(self._fd, view) :]
                return
            stream = self._stream if self._stream is not None else sys.stdout
            stream.write(data.decode("utf-8"))
            stream.flush()

    def debug(self, event: str, **fields: Any) -> None:  # noqa: ANN401
        self.log(event, "debug", **fields)

    def info(self, event: str, **fields: Any) -> None:  # noqa: ANN401
        self.log(event, "info", **fields)

    def warning(self, event: str, **fields: Any) -> None:  # noqa: ANN401
        self.log(event, "warning", **fields)

    def error(self, event: str, **fields: Any) -> None:  # noqa: ANN401
        self.log(event, "error", **fields)

    def reopen(self) -> None:
        """Reopen the log file by path (after logrotate moved it away); no-op for streams.

        The new file is opened before the old descriptor is closed, so no record is lost; if the new
        open fails, logging carries on into the old file and the error propagates to the caller.
        """
        if self._path is None:
            return
        new_fd = self._open()
        with self._lock:
            if self._fd is None:
                os.close(new_fd)
                raise ValueError(f"log {self._path} is closed")
            old_fd, self._fd = self._fd, new_fd
        os.close(old_fd)

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> JsonLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
