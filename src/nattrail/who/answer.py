"""The answer to a query: the connections whose lifetime meets the window, newest first, with the
assumptions made where the logs do not say, and warnings where the logs do not cover the window."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from nattrail.who.join import Connection, join
from nattrail.who.logs import EVENT_ORDER, Gap, Scan, read_logs
from nattrail.who.query import Query
from nattrail.who.times import format_time


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
