"""`nattrail who`: joining open/ident/close records into connections, bounding the ones without a close,
and choosing and describing the ones that touch the window."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from who_data import KEY

from nattrail.who.answer import Match, Result, who
from nattrail.who.join import restart_dumps
from nattrail.who.logs import Record
from nattrail.who.query import At, Query

OTHER = {**KEY, "ct_id": 1002, "client_ip": "10.77.0.11", "client_port": 40002}
ELSEWHERE = {**OTHER, "server_port": 23}  # another address pair


def pair(port: int) -> dict[str, Any]:
    """A connection of its own address pair, to server port ``port`` (also its ct_id)."""
    return {**OTHER, "ct_id": port, "server_port": port}


def t(clock: str) -> datetime:
    return datetime.fromisoformat(f"2026-11-21T{clock}+00:00")


def z(clock: str | None) -> str | None:
    return None if clock is None else f"2026-11-21T{clock}Z"


def rec(clock: str, event: str, **fields: Any) -> str:
    return json.dumps({"ts": z(clock), "level": "info", "event": event, **fields}, separators=(",", ":"))


def opened(clock: str, key: dict[str, Any] = KEY, at: str | None = None, **extra: Any) -> str:
    return rec(at or clock, "open", **key, opened=z(clock), **extra)


def resync(clock: str, start: str | None, key: dict[str, Any] = KEY) -> str:
    return rec(clock, "open", **key, opened=z(start), resync=True)


def closed(
    start: str | None, end: str, key: dict[str, Any] = KEY, at: str | None = None, **extra: Any
) -> str:
    return rec(at or end, "close", **key, opened=z(start), closed=z(end), **extra)


def ident(clock: str, key: dict[str, Any] = KEY, **answer: Any) -> str:
    return rec(clock, "ident", **key, **({"user": "alice", "ident_os": "UNIX"} | answer))


def started(*lines: str) -> list[str]:
    """A log that begins as most of these do: the logger starts at 03:00, alice connects at 03:01."""
    return [rec("03:00", "start"), opened("03:01"), *lines]


def ask(tmp_path: Path, lines: list[str], at: str = "03:12", window: int = 300, now: str = "04:00") -> Result:
    log = tmp_path / "masq.log"
    log.write_text("".join(line + "\n" for line in lines))
    query = Query(masq_port=666, at=At(t(at), at), window=timedelta(seconds=window))
    return who(query, log, now=t(now))


def summary(match: Match) -> tuple[Any, ...]:
    c = match.conn
    return (c.data["ct_id"], c.opened, c.closed, match.start, match.end, match.open_at_time)


# --- joining ------------------------------------------------------------------------------------------


def test_table_dump_of_a_known_connection_is_the_same_connection(tmp_path: Path) -> None:
    result = ask(
        tmp_path,
        [
            rec("03:00", "start"),
            opened("03:10"),
            resync("03:11", "03:10:30"),  # the kernel's start time, 30 s from the logger's: the same
            resync("03:11:30", None),
            closed("03:10", "03:20"),
        ],
    )
    (match,) = result.matches
    assert match.conn.records == [
        "masq.log:2 open",
        "masq.log:3 resync",
        "masq.log:4 resync",
        "masq.log:5 close",
    ]
    assert match.conn.opened == t("03:10")
    assert match.conn.relearnt == [t("03:11"), t("03:11:30")]
    assert match.conn.resync and match.conn.open_logged
    assert match.notes == ()


def test_table_dump_with_another_start_is_another_connection(tmp_path: Path) -> None:
    result = ask(
        tmp_path,
        [rec("03:00", "start"), opened("03:10"), resync("03:11", "03:10:31"), closed("03:10:31", "03:20")],
    )
    newer, older = result.matches
    assert newer.conn.records == ["masq.log:3 resync", "masq.log:4 close"]
    assert newer.conn.opened == t("03:10:31") and newer.conn.closed == t("03:20")
    assert newer.notes == ("re-learnt from a table dump (resync); opened is the kernel's start time",)
    assert not newer.conn.open_logged
    assert older.conn.records == ["masq.log:2 open"]
    # The newer entry with the same addresses proves the older one was gone by its start.
    assert older.end == t("03:10:31")
    assert older.notes == (
        "no close logged; ended by 2026-11-21T03:10:31Z, when another connection took the same address pair",
    )


def test_table_dump_after_a_close_is_another_connection(tmp_path: Path) -> None:
    result = ask(tmp_path, [opened("03:10"), closed("03:10", "03:11"), resync("03:11:05", "03:10")])
    assert [m.conn.records for m in result.matches] == [
        ["masq.log:3 resync"],
        ["masq.log:1 open", "masq.log:2 close"],
    ]


def test_table_dump_without_start_time(tmp_path: Path) -> None:
    result = ask(tmp_path, [rec("03:00", "start"), resync("03:11", None)])
    (match,) = result.matches
    assert match.start == t("03:00")
    assert match.notes == (
        "start unknown (learnt from a table dump (resync)); taken as the start of the logs, "
        "2026-11-21T03:00:00Z",
        "no close logged; still open at the end of the logs (2026-11-21T03:11:00Z) as far as they show",
    )
    assert match.end == t("04:00")


def test_ident_before_any_open_is_its_own_connection(tmp_path: Path) -> None:
    result = ask(
        tmp_path, [rec("03:00", "start"), ident("03:10", user=None, ident_error="ERROR:X", ident_os=7)]
    )
    (match,) = result.matches
    c = match.conn
    assert (c.ident_logged, c.user, c.ident_error, c.ident_os, c.opened) == (
        True,
        None,
        "ERROR:X",
        None,
        None,
    )
    assert c.first_seen == t("03:10")
    assert c.records == ["masq.log:2 ident"]
    assert match.notes[0].startswith("start unknown (its open was not logged)")


def test_close_after_an_ident_without_open_is_the_same_connection(tmp_path: Path) -> None:
    result = ask(tmp_path, [rec("03:00", "start"), ident("03:10"), closed("03:09:59", "03:11")])
    (match,) = result.matches
    assert match.conn.records == ["masq.log:2 ident", "masq.log:3 close"]
    assert (match.conn.user, match.conn.opened, match.conn.closed) == ("alice", t("03:09:59"), t("03:11"))


def test_ident_goes_to_the_latest_connection_of_the_key(tmp_path: Path) -> None:
    result = ask(
        tmp_path,
        [
            opened("03:00"),
            closed("03:00", "03:01"),
            opened("03:10"),
            ident("03:10:01", user=7),
            ident("03:10:02", OTHER),
        ],
        window=1200,
    )
    newer, other, older = result.matches
    assert newer.conn.records == ["masq.log:3 open", "masq.log:4 ident"]
    assert (newer.conn.ident_logged, newer.conn.user) == (True, None)
    assert older.conn.ident_logged is False
    assert other.conn.data["ct_id"] == 1002


def test_open_record_that_says_ident_was_skipped(tmp_path: Path) -> None:
    result = ask(tmp_path, [opened("03:10", user=None, ident_error="skipped:rate", ident_os=None)])
    (match,) = result.matches
    assert (match.conn.ident_logged, match.conn.ident_error) == (True, "skipped:rate")
    assert match.conn.records == ["masq.log:1 open", "masq.log:1 ident"]


def test_close_joins_the_open_it_belongs_to(tmp_path: Path) -> None:
    result = ask(
        tmp_path,
        started(
            closed("03:01", "03:02"),
            opened("03:03"),
            # No start time in the close: the open connection of the key it is.
            closed(None, "03:05", duration="300"),
            opened("03:06"),
            # Its start is 31 s from the open's: another connection, whose open was not logged.
            closed("03:06:31", "03:07"),
        ),
        window=600,
    )
    assert [m.notes for m in result.matches if m.conn.closed] == [(), (), ()]
    assert [(m.conn.opened, m.conn.closed, m.conn.duration, m.conn.records) for m in result.matches] == [
        (t("03:06:31"), t("03:07"), 29.0, ["masq.log:7 close"]),
        (t("03:06"), None, None, ["masq.log:6 open"]),
        (t("03:03"), t("03:05"), 120.0, ["masq.log:4 open", "masq.log:5 close"]),
        (t("03:01"), t("03:02"), 60.0, ["masq.log:2 open", "masq.log:3 close"]),
    ]


def test_close_that_ended_before_the_open_began_is_another_connection(tmp_path: Path) -> None:
    # A close written late (ts) for a connection that closed at 03:09:30, 30 s before the open at 03:10.
    result = ask(tmp_path, [rec("03:00", "start"), opened("03:10"), closed(None, "03:09:30", at="03:10:05")])
    assert [m.conn.records for m in result.matches] == [["masq.log:2 open", "masq.log:3 close"]]
    result = ask(tmp_path, [rec("03:00", "start"), opened("03:10"), closed(None, "03:09:29", at="03:10:05")])
    assert [m.conn.records for m in result.matches] == [["masq.log:2 open"], ["masq.log:3 close"]]


def test_ident_after_a_close_without_open(tmp_path: Path) -> None:
    result = ask(tmp_path, [rec("03:00", "start"), closed("03:05", "03:10"), ident("03:10:05")])
    (match,) = result.matches
    assert match.conn.records == ["masq.log:2 close", "masq.log:3 ident"]
    assert match.conn.user == "alice"


def test_close_time_defaults_to_the_record_time(tmp_path: Path) -> None:
    result = ask(tmp_path, [opened("03:10"), rec("03:20", "close", **KEY, opened=z("03:10"))])
    (match,) = result.matches
    assert (match.conn.closed, match.conn.duration) == (t("03:20"), 600.0)


def test_duration_and_counters_of_the_close(tmp_path: Path) -> None:
    lines = [
        opened("03:10"),
        closed("03:10", "03:20", duration=True, orig_bytes=5, reply_bytes=False, lost=False),
        opened("03:10", OTHER),
        closed("03:10", "03:20", OTHER, duration=12, lost=True),
    ]
    first, second = sorted(ask(tmp_path, lines).matches, key=lambda m: m.conn.data["ct_id"])
    assert (first.conn.duration, first.conn.close_lost) == (600.0, False)
    assert first.conn.counters == {
        "orig_packets": None,
        "orig_bytes": 5,
        "reply_packets": None,
        "reply_bytes": None,
    }
    assert first.conn.records[-1] == "masq.log:2 close"
    assert (second.conn.duration, second.conn.close_lost) == (12.0, True)
    assert isinstance(second.conn.duration, float)
    assert second.conn.records[-1] == "masq.log:4 close (lost)"
    # A lost close without a duration does not pretend to know it.
    (lost,) = ask(tmp_path, [opened("03:10"), closed("03:10", "03:20", lost=True)]).matches
    assert lost.conn.duration is None
    (odd,) = ask(tmp_path, [opened("03:10"), closed("03:10", "03:20", lost=1)]).matches
    assert odd.conn.records == ["masq.log:1 open", "masq.log:2 close"]


def test_records_of_one_instant_are_joined_in_lifecycle_order(tmp_path: Path) -> None:
    # Written out of order (a close before its open at the same instant), joined as open, ident, close.
    result = ask(tmp_path, [closed("03:10", "03:10"), ident("03:10"), opened("03:10")])
    (match,) = result.matches
    assert match.conn.records == ["masq.log:3 open", "masq.log:2 ident", "masq.log:1 close"]
    assert match.conn.user == "alice"


# --- bounding connections without a close ------------------------------------------------------------


def test_reuse_bounds_by_the_earliest_later_start(tmp_path: Path) -> None:
    result = ask(
        tmp_path,
        [
            opened("03:00"),
            opened("03:00", OTHER),  # another connection opened at the same moment: no proof
            opened("03:30", {**OTHER, "ct_id": 1003}),
            opened("03:20", {**OTHER, "ct_id": 1004}, at="03:21"),
            opened("03:40", {**KEY, "server_port": 23}),  # another reply tuple
        ],
        at="03:10",
        window=3600,
    )
    by_id = {m.conn.data["ct_id"]: m for m in result.matches}
    assert by_id[1001].conn.ended_by == t("03:20")
    assert by_id[1002].conn.ended_by == t("03:20")
    assert by_id[1003].conn.ended_by is None
    assert by_id[1004].conn.ended_by == t("03:30")


def test_reuse_needs_the_same_address_pair(tmp_path: Path) -> None:
    # Each of these differs from the first connection's reply tuple in one part: none proves it ended.
    others = [
        {**OTHER, "ct_id": 2001, "proto": "udp"},
        {**OTHER, "ct_id": 2002, "masq_ip": "203.0.113.3"},
        {**OTHER, "ct_id": 2003, "server_ip": "203.0.113.11"},
        {**OTHER, "ct_id": 2004, "server_port": 23},
    ]
    result = ask(tmp_path, [opened("03:00"), *(opened("03:05", key) for key in others)], at="03:10")
    (first,) = [m for m in result.matches if m.conn.data["ct_id"] == 1001]
    assert first.conn.ended_by is None
    assert first.open_at_time
    # The client side is not part of it: another inside host on the same pair does prove it.
    result = ask(tmp_path, [opened("03:00"), opened("03:05", OTHER)], at="03:10")
    (first,) = [m for m in result.matches if m.conn.data["ct_id"] == 1001]
    assert first.conn.ended_by == t("03:05")
    assert not first.open_at_time


def test_restart_bounds_what_its_dump_does_not_list(tmp_path: Path) -> None:
    result = ask(
        tmp_path,
        [
            rec("03:00", "start"),
            opened("03:00:10", pair(24)),
            closed("03:00:10", "03:00:20", pair(24)),
            opened("03:01"),
            opened("03:02", ELSEWHERE),
            rec("03:05", "start"),
            resync("03:05:01", "03:02", ELSEWHERE),
            rec("03:05:02", "resync"),
            opened("03:06", pair(25)),
            rec("03:07", "start"),
            opened("03:07", pair(26)),  # opened as the logger started: after it, in the dump or not
            resync("03:07", "03:06", pair(25)),  # listed at the very moment of the start
            rec("03:07:01", "resync"),
        ],
        at="03:04",
        window=600,
    )
    by_id = {m.conn.data["ct_id"]: m for m in result.matches}
    assert by_id[24].conn.closed == t("03:00:20") and by_id[24].conn.ended_by is None
    assert by_id[25].conn.ended_by is None
    assert by_id[26].conn.ended_by is None
    assert by_id[1001].conn.ended_by == t("03:05:02")
    assert by_id[1001].conn.ended_why == (
        "as the table dump after the logger started at 2026-11-21T03:05:00Z did not list it"
    )
    assert by_id[1002].conn.ended_by == t("03:07:01")
    assert by_id[1002].conn.ended_why.endswith("started at 2026-11-21T03:07:00Z did not list it")


def test_first_reason_found_for_the_same_end_is_kept(tmp_path: Path) -> None:
    # The same address pair is taken again at the very moment of the restart's table dump.
    result = ask(
        tmp_path,
        started(rec("03:05", "start"), opened("03:05:02", OTHER), rec("03:05:02", "resync")),
        at="03:04",
    )
    (match,) = [m for m in result.matches if m.conn.data["ct_id"] == 1001]
    assert match.notes == (
        "no close logged; ended by 2026-11-21T03:05:02Z, when another connection took the same address pair",
    )


def test_restart_without_its_dump_proves_nothing(tmp_path: Path) -> None:
    result = ask(
        tmp_path,
        started(
            rec("03:05", "start"),
            rec("03:06", "stop"),
            rec("03:06:01", "resync"),  # after the stop: not the start's dump
            rec("03:07", "resync"),
        ),
        at="03:04",
        window=600,
    )
    (match,) = result.matches
    assert match.conn.ended_by is None
    assert match.end == t("04:00")


def test_restart_dumps_pairs() -> None:
    def r(clock: str, event: str) -> Record:
        return Record(t(clock), event, {}, "masq.log:1", 0)

    records = [
        r("03:00", "resync"),
        r("03:01", "start"),
        r("03:01", "open"),
        r("03:02", "resync"),
        r("03:03", "resync"),
    ]
    assert restart_dumps(records) == [(t("03:01"), t("03:02"))]
    # A stop and a resync of the same instant: the resync comes first.
    assert restart_dumps([r("03:01", "start"), r("03:02", "stop"), r("03:02", "resync")]) == [
        (t("03:01"), t("03:02"))
    ]


def test_ended_by_after_the_end_of_the_logs_is_not_used(tmp_path: Path) -> None:
    result = ask(
        tmp_path, [opened("03:00"), rec("03:05", "stop"), opened("03:30", OTHER)], at="03:01", window=60
    )
    (match,) = result.matches
    assert match.conn.ended_by == t("03:30")
    assert match.end == t("03:30")
    result = ask(
        tmp_path,
        [opened("03:00"), rec("03:05", "stop"), opened("03:30", OTHER), rec("03:10", "stop")],
        at="03:01",
    )
    (match,) = [m for m in result.matches if m.conn.data["ct_id"] == 1001]
    assert match.end == t("03:30")
    # Ended exactly where the logs end: the end of the logs it is.
    result = ask(tmp_path, [opened("03:00"), opened("03:30", OTHER)], at="03:01", window=60, now="03:00")
    (match,) = [m for m in result.matches if m.conn.data["ct_id"] == 1001]
    assert match.end == t("03:30")
    assert match.notes == (
        "no close logged; still open at the end of the logs (2026-11-21T03:30:00Z) as far as they show",
    )


# --- selecting ----------------------------------------------------------------------------------------


def test_close_before_its_own_start_touches_only_its_start(tmp_path: Path) -> None:
    result = ask(tmp_path, [rec("03:00", "start"), closed("03:10", "03:09:45")], at="03:09:50", window=0)
    assert result.matches == []
    result = ask(tmp_path, [rec("03:00", "start"), closed("03:10", "03:09:45")], at="03:10", window=0)
    (match,) = result.matches
    assert (match.start, match.end, match.open_at_time) == (t("03:10"), t("03:10"), True)


def test_window_edges_and_open_at_time(tmp_path: Path) -> None:
    lines = [rec("03:00", "start"), opened("03:10"), closed("03:10", "03:20")]
    assert [m.open_at_time for m in ask(tmp_path, lines, at="03:10", window=0).matches] == [True]
    assert [m.open_at_time for m in ask(tmp_path, lines, at="03:20", window=0).matches] == [True]
    assert [m.open_at_time for m in ask(tmp_path, lines, at="03:09:59", window=1).matches] == [False]
    assert [m.open_at_time for m in ask(tmp_path, lines, at="03:20:01", window=1).matches] == [False]
    assert ask(tmp_path, lines, at="03:09:58", window=1).matches == []
    assert ask(tmp_path, lines, at="03:20:02", window=1).matches == []


def test_newest_first_then_longest(tmp_path: Path) -> None:
    third = {**OTHER, "ct_id": 1003, "client_port": 40003}
    lines = [
        opened("03:10"),
        opened("03:10", OTHER),
        opened("03:10", third, at="03:10:05"),
        closed("03:10", "03:11"),
        closed("03:10", "03:12", OTHER),
        closed("03:10", "03:12", third),
    ]
    result = ask(tmp_path, lines)
    assert [m.conn.data["ct_id"] for m in result.matches] == [1003, 1002, 1001]


# --- coverage warnings --------------------------------------------------------------------------------


def test_stopped_logger_warns_only_when_the_window_goes_past_the_stop(tmp_path: Path) -> None:
    lines = started(rec("03:10", "stop"))
    assert ask(tmp_path, lines, at="03:06", window=240).warnings == []
    (warning,) = ask(tmp_path, lines, at="03:06", window=241).warnings
    assert warning == "the logger stopped at 2026-11-21T03:10:00Z and has logged nothing since"


def test_logs_starting_after_the_window_warn(tmp_path: Path) -> None:
    lines = started()
    assert ask(tmp_path, lines, at="03:05", window=300).warnings == []
    assert ask(tmp_path, lines, at="03:05", window=301).warnings == [
        "the logs start at 2026-11-21T03:00:00Z, after the window starts: older connections are not in them "
        "(rotated away?)"
    ]


def test_restart_without_stop_gap_starts_at_the_line_before(tmp_path: Path) -> None:
    lines = started(opened("03:02", {**KEY, "masq_port": 1}), rec("03:05", "start"))
    assert ask(tmp_path, lines, at="03:04", window=0).warnings == [
        "the logger restarted without logging a stop between 2026-11-21T03:02:00Z and 2026-11-21T03:05:00Z: "
        "connections in that time may be missing or incomplete"
    ]
    # The gap touches the window at either end, not beyond.
    assert ask(tmp_path, lines, at="03:05", window=0).warnings != []
    assert ask(tmp_path, lines, at="03:02", window=0).warnings != []
    assert ask(tmp_path, lines, at="03:01:59", window=0).warnings == []
    assert ask(tmp_path, lines, at="03:05:01", window=0).warnings == []


def test_restart_on_the_first_line_of_a_file_starts_where_an_older_file_ends(tmp_path: Path) -> None:
    lines = [rec("03:05", "start"), rec("03:06", "start"), opened("03:07")]
    tail = ": connections in that time may be missing or incomplete"

    def warnings(at: str) -> list[str]:
        return ask(tmp_path, lines, at=at, window=0).warnings

    (tmp_path / "masq.log.2").write_text(rec("02:00", "start") + "\n" + rec("02:30", "x", masq_port=1) + "\n")
    (tmp_path / "masq.log.1").write_text(rec("03:01", "x") + "\n" + rec("03:02", "y") + "\n")
    # masq.log.1 ends at 03:02 and masq.log.2 at 02:30: the newest end before the restart is the start.
    assert warnings("03:04") == [
        "the logger restarted without logging a stop between 2026-11-21T03:02:00Z and 2026-11-21T03:05:00Z"
        + tail
    ]
    assert warnings("03:05:30") == [
        "the logger restarted without logging a stop between 2026-11-21T03:05:00Z and 2026-11-21T03:06:00Z"
        + tail
    ]
    # An older file that ends at the very moment of the restart does not say when the gap began.
    (tmp_path / "masq.log.1").write_text(rec("03:01", "x") + "\n" + rec("03:05", "y") + "\n")
    assert warnings("03:04") == [
        "the logger restarted without logging a stop between 2026-11-21T02:30:00Z and 2026-11-21T03:05:00Z"
        + tail
    ]
    (tmp_path / "masq.log.1").unlink()
    (tmp_path / "masq.log.2").unlink()
    (tmp_path / "masq.log.1").write_text(rec("03:04", "x") + "\n" + rec("03:06", "x") + "\n")
    result = ask(tmp_path, [rec("03:05", "start"), opened("03:07")], at="03:05", window=0)
    # Nothing older ends before it (a file ending later does not count): only the moment is known.
    assert result.warnings == [
        "the logger restarted without logging a stop at 2026-11-21T03:05:00Z: "
        "connections in that time may be missing or incomplete"
    ]


def test_gap_warnings_in_time_order(tmp_path: Path) -> None:
    lines = [
        rec("03:00", "start"),
        rec("03:01", "events_lost", lost=2),
        rec("03:02", "stop"),
        rec("03:03", "start"),
        opened("03:04"),
        rec("03:04:30", "events_lost"),
        rec("03:04:45", "start"),
    ]
    warnings = ask(tmp_path, lines, at="03:03", window=120).warnings
    tail = ": connections in that time may be missing or incomplete"
    assert warnings == [
        "the kernel dropped 2 connection events (masq.log:2) between 2026-11-21T03:00:00Z and "
        "2026-11-21T03:01:00Z" + tail,
        "the logger was not running between 2026-11-21T03:02:00Z and 2026-11-21T03:03:00Z" + tail,
        "the kernel dropped connection events (masq.log:6) between 2026-11-21T03:04:00Z and "
        "2026-11-21T03:04:30Z" + tail,
        "the logger restarted without logging a stop between 2026-11-21T03:04:30Z and 2026-11-21T03:04:45Z"
        + tail,
    ]


def test_unclosed_connection_of_a_running_logger_lasts_until_now(tmp_path: Path) -> None:
    result = ask(tmp_path, started(), at="03:30", window=0, now="03:40")
    (match,) = result.matches
    assert match.end == t("03:40") and match.open_at_time
    # A clock behind the logs: they end with their last record.
    result = ask(tmp_path, started(), at="03:01", window=0, now="02:00")
    (match,) = result.matches
    assert match.end == t("03:01") and match.open_at_time
    assert result.end == t("03:01")
