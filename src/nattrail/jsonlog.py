"""Structured logging shared by the nattrail daemons: one JSON object per line.

Every record starts with ``ts`` (UTC, ISO-8601 with microseconds and a trailing ``Z``), ``level`` and
``event``; the remaining fields are the caller's keyword arguments, followed by the logger's fixed fields
(for example ``daemon``). Files are opened with O_APPEND and every record goes out in one ``write``, so
lines from concurrent writers never interleave and a reader never sees half a record.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")
RESERVED: frozenset[str] = frozenset({"ts", "level", "event"})


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
        self._clock = clock or (lambda: datetime.now(UTC))
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
        record: dict[str, Any] = {"ts": utc_timestamp(self._clock()), "level": level, "event": event}
        record.update(fields)
        for key, value in self._fields.items():
            record.setdefault(key, value)
        # default=str: an unexpected value (an exception, a Path) must never cost us the record.
        return json.dumps(record, default=str, ensure_ascii=False, separators=(",", ":")) + "\n"

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
