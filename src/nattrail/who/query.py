"""The question `nattrail who` answers: the masquerade port, the moment (``--at``) and how far around it to
look (``--window``), with the optional filters; parsing each from the command line's text."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nattrail.who.times import format_time
from nattrail.who.tunables import AT_PATTERN, MAX_WINDOW, UNITS, WINDOW_PATTERN


@dataclass(frozen=True)
class At:
    """The moment asked about, in UTC, with how it was given."""

    moment: datetime
    given: str
    zone: str | None = None  # "local time, UTC-05:00" when the input had no offset
    warning: str | None = None  # set when a naive local time is ambiguous (daylight saving)


# Keyword-only: seven fields, four of them optional, are too many to pass by position without a mix-up.
@dataclass(frozen=True, kw_only=True)
class Query:
    """What is asked: the masquerade port, ``at`` ± ``window``, and the filters given (None: any)."""

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
