"""What the user reads: the human report (the connection(s) open at the time first, then every match
with its evidence) and the JSON one."""

from __future__ import annotations

from typing import Any

from nattrail.accounting import human_bytes
from nattrail.who.answer import Result
from nattrail.who.join import COUNTER_FIELDS, Connection
from nattrail.who.query import Query
from nattrail.who.times import format_time


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
