"""RFC 1413 ident client and the abuse limiter used by the masquerade logger (`nattrail masqlog`).

For a masqueraded TCP connection ``client_ip:client_port -> server_ip:server_port`` the router asks the
client's identd (``client_ip:113``) ``"<client_port>, <server_port>\\r\\n"`` and expects
``"<client_port> , <server_port> : USERID : <opsys>[,charset] : <user-id>"`` or
``"<p> , <p> : ERROR : <token>"``, ended by CRLF (a bare LF is accepted too).

The client (``query``)
    Never raises, except ``asyncio.CancelledError``, which always propagates: every failure is an
    ``IdentReply`` whose ``error`` is one of ``timeout``, ``refused``, ``unreachable[: <reason>]`` (any
    other failure to connect, including binding to ``source``), ``closed`` (EOF or reset before a full
    line), ``oversized`` (no line end within ``max_reply`` bytes), ``malformed`` (the line does not parse,
    or the user id is empty once sanitised), ``mismatch`` (the reply names other ports than the query) or
    ``ERROR:<TOKEN>`` (identd's own error, e.g. ``ERROR:NO-USER``). One deadline covers connect, send and
    read together, so a server trickling one byte at a time cannot stretch it. The reply is read with
    ``read(n)`` calls whose sizes never go past ``max_reply`` bytes in total, and the stream's buffer limit
    is ``max_reply`` too, so a hostile identd costs at most a few times ``max_reply`` bytes of memory
    whatever it sends; whatever follows the first line is ignored, and the connection is aborted.

    Replies are hostile input. Bytes are decoded as UTF-8 with ``errors="replace"``; ANSI CSI/OSC escape
    sequences are removed whole (so that the log shows what a terminal would have shown), then every
    character of Unicode category Cc (C0, DEL, C1), Cf (format: bidi overrides, zero-width characters),
    Zl and Zp (line and paragraph separators); surrounding whitespace is stripped and the user id is cut to
    ``USER_MAX`` characters, the operating system and identd's error token to ``TOKEN_MAX``. The resulting
    strings hold no line break and serialise as one JSON line. The user id is everything after the third
    colon, colons included. The charset named after the operating system is not honoured: the daemon logs
    UTF-8, and anything else shows up as replacement characters rather than as a wrong guess.

The limiter (``IdentLimiter``)
    An ident query is a connection the router opens towards an inside host because that host opened one;
    without a limit, one host opening thousands of connections makes the router a connection amplifier
    towards its own clients and fills the daemon with pending queries. In the spirit of scanlogd, every
    structure has a fixed bound and a flood costs counters, not memory:

    * at most ``max_concurrent`` queries are in flight (``try_acquire`` / ``release``);
    * each client IP has a token bucket of ``per_client_burst`` tokens refilled at ``per_client_rate``
      tokens per second; a query takes one token. A refused request takes none, and a request refused for
      concurrency takes no token either (the query did not happen);
    * the bucket table never holds more than ``max_clients`` entries. A bucket that has refilled is exactly
      what a new client would get, so dropping it loses nothing: the table is kept in least-recently-used
      order, and when a new client needs room the oldest buckets are dropped while they have refilled
      (every bucket untouched for ``burst / rate`` seconds has, so this is amortised O(1) per call). If the
      table is still full, the new client is refused with reason ``rate``: many distinct sources at once
      postpone new clients' lookups for at most ``burst / rate`` seconds, but never grow the table;
    * skips are counted per reason (``concurrency``, ``rate``) and handed out by ``take_skips`` for the
      daemon's periodic log line, so a flood produces one line per period, not one per connection.

    The limiter is meant for one asyncio event loop and is not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import os
import re
import socket
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

IDENT_PORT = 113
USER_MAX = 64
TOKEN_MAX = 32  # the operating system field and identd's error token
REASON_MAX = 80  # the "<reason>" in "unreachable: <reason>"
SKIP_REASONS: tuple[str, ...] = ("concurrency", "rate")

# CSI (ESC [ or the C1 byte) with parameters, intermediates and final byte, and OSC up to BEL/ST. Linear
# regular expressions: no nested quantifiers, and the input is at most max_reply characters long anyway.
_ANSI = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]"
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)"
)
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_PORT_PAIR = re.compile(r"[ \t]*([0-9]{1,5})[ \t]*,[ \t]*([0-9]{1,5})[ \t]*")


def sanitise(text: str, limit: int) -> str:
    """``text`` without escape sequences, control or format characters and line breaks, stripped, cut."""
    text = _ANSI.sub("", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) not in _UNSAFE_CATEGORIES)
    # Strip again after cutting: the cut may leave a space at the end.
    return text.strip()[:limit].strip()


@dataclass(frozen=True)
class IdentReply:
    user: str | None  # sanitised user id, None on error
    error: str | None  # None on success, otherwise a short token (see the module docstring)
    opsys: str | None = None

    @classmethod
    def failed(cls, error: str) -> IdentReply:
        return cls(user=None, error=error)

    def as_fields(self) -> dict[str, str | None]:
        """The reply as fields of the daemon's JSON log record."""
        fields: dict[str, str | None] = {"user": self.user, "ident_error": self.error}
        if self.opsys is not None:
            fields["ident_os"] = self.opsys
        return fields


def _userid(opsys_field: str, user_field: str) -> IdentReply:
    # "<opsys>[,<charset>]": the charset is not honoured (see the module docstring).
    opsys = sanitise(opsys_field.split(",", 1)[0], TOKEN_MAX) or None
    user = sanitise(user_field, USER_MAX)
    if not user:
        return IdentReply(user=None, error="malformed", opsys=opsys)
    return IdentReply(user=user, error=None, opsys=opsys)


def parse_reply(line: bytes, client_port: int, server_port: int) -> IdentReply:
    """Parse one reply line (without its line end) to the query ``client_port, server_port``."""
    # maxsplit 3: the user id is everything after the third colon, colons included.
    parts = line.decode("utf-8", errors="replace").split(":", 3)
    ports = _PORT_PAIR.fullmatch(parts[0]) if len(parts) >= 3 else None
    if ports is None:
        return IdentReply.failed("malformed")
    if (int(ports[1]), int(ports[2])) != (client_port, server_port):
        return IdentReply.failed("mismatch")
    kind = parts[1].strip().upper()
    if kind == "ERROR":
        token = sanitise(parts[2], TOKEN_MAX)
        return IdentReply.failed(f"ERROR:{token}" if token else "malformed")
    if kind == "USERID" and len(parts) == 4:
        return _userid(parts[2], parts[3])
    return IdentReply.failed("malformed")


async def read_reply_line(reader: asyncio.StreamReader, max_reply: int) -> bytes | str:
    """The first line (line end removed), or the error token ``"oversized"`` / ``"closed"``.

    Never takes more than ``max_reply`` bytes from ``reader``, line end included.
    """
    buffer = bytearray()
    while True:
        room = max_reply - len(buffer)
        if room <= 0:
            return "oversized"
        chunk = await reader.read(room)
        if not chunk:
            return "closed"
        end = chunk.find(b"\n")
        if end >= 0:
            buffer += chunk[:end]
            return bytes(buffer[:-1] if buffer.endswith(b"\r") else buffer)
        buffer += chunk


def _connect_error(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return "refused"
    # asyncio's "Connect call failed ('10.1.2.3', 113)" hides the useful part: the errno's meaning.
    code = getattr(exc, "errno", None)
    if isinstance(exc, socket.gaierror):  # a negative EAI code, which os.strerror does not know
        reason = sanitise(exc.strerror or str(exc), REASON_MAX)
    else:
        reason = sanitise(os.strerror(code) if isinstance(code, int) and code else str(exc), REASON_MAX)
    return f"unreachable: {reason}" if reason else "unreachable"


async def query(  # noqa: PLR0913 - the tuning knobs are keyword-only and all have defaults
    host: str,
    client_port: int,
    server_port: int,
    *,
    timeout: float = 5.0,
    port: int = IDENT_PORT,
    max_reply: int = 1000,
    source: str | None = None,
) -> IdentReply:
    """Ask the identd at ``host:port`` who owns ``client_port`` (host side) -> ``server_port`` (remote side).

    Never raises, except ``asyncio.CancelledError``; see the module docstring for the error tokens.
    """
    writer: asyncio.StreamWriter | None = None
    connected = False
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host,
                port,
                limit=max(1, max_reply),
                local_addr=None if source is None else (source, 0),
            )
            connected = True
            writer.write(f"{client_port}, {server_port}\r\n".encode("ascii"))
            await writer.drain()
            line = await read_reply_line(reader, max_reply)
    except TimeoutError:
        return IdentReply.failed("timeout")
    except Exception as exc:  # hostile peers and odd kernels: every failure must become a reply
        if connected:
            return IdentReply.failed("closed")
        return IdentReply.failed(_connect_error(exc))
    finally:
        if writer is not None:
            # Abort, not close: nothing of ours is left to send, and unread data must not keep us waiting.
            writer.transport.abort()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    if isinstance(line, str):
        return IdentReply.failed(line)
    return parse_reply(line, client_port, server_port)


# --- the limiter -----------------------------------------------------------------------------------------


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class IdentLimiter:
    """Bounds ident queries: in flight overall, per client IP over time, and the memory used to know that."""

    def __init__(
        self,
        *,
        max_concurrent: int = 64,
        per_client_rate: float = 5.0,
        per_client_burst: int = 10,
        max_clients: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent!r}")
        if not (math.isfinite(per_client_rate) and per_client_rate > 0):
            raise ValueError(f"per_client_rate must be a finite number > 0, got {per_client_rate!r}")
        if per_client_burst < 1:
            raise ValueError(f"per_client_burst must be >= 1, got {per_client_burst!r}")
        if max_clients < 1:
            raise ValueError(f"max_clients must be >= 1, got {max_clients!r}")
        self._max_concurrent = max_concurrent
        self._rate = float(per_client_rate)
        self._burst = float(per_client_burst)
        self._max_clients = max_clients
        self._clock = clock
        self._in_flight = 0
        # Least recently used first: the eviction scan starts where refilled buckets are.
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._skips = dict.fromkeys(SKIP_REASONS, 0)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def clients(self) -> int:
        """How many per-client buckets are held (never more than ``max_clients``)."""
        return len(self._buckets)

    def _tokens(self, bucket: _Bucket, now: float) -> float:
        # max(0, ...): a clock that steps back must not drain buckets.
        return min(self._burst, bucket.tokens + max(0.0, now - bucket.stamp) * self._rate)

    def _skip(self, reason: str) -> str:
        self._skips[reason] += 1
        return reason

    def _make_room(self, now: float) -> bool:
        while len(self._buckets) >= self._max_clients:
            oldest = next(iter(self._buckets.values()))
            if self._tokens(oldest, now) < self._burst:
                return False
            self._buckets.popitem(last=False)
        return True

    def try_acquire(self, client_ip: str) -> str | None:
        """None: go ahead, and call ``release()`` when the query is over. Otherwise the skip reason."""
        now = self._clock()
        bucket = self._buckets.get(client_ip)
        tokens = self._burst if bucket is None else self._tokens(bucket, now)
        if tokens < 1:
            return self._skip("rate")
        if self._in_flight >= self._max_concurrent:
            return self._skip("concurrency")
        if bucket is None:
            if not self._make_room(now):
                return self._skip("rate")
            self._buckets[client_ip] = _Bucket(tokens - 1, now)
        else:
            bucket.tokens, bucket.stamp = tokens - 1, now
            self._buckets.move_to_end(client_ip)
        self._in_flight += 1
        return None

    def release(self) -> None:
        if self._in_flight <= 0:
            raise RuntimeError("IdentLimiter.release() without a matching successful try_acquire()")
        self._in_flight -= 1

    def take_skips(self) -> dict[str, int]:
        """Skips per reason (every reason present, zeros included) since the last call; resets them."""
        skips, self._skips = self._skips, dict.fromkeys(SKIP_REASONS, 0)
        return skips
