"""`nattrail who`: reading the masquerade logs (rotated names, compression, damaged or unusual lines,
duplicates) and what the logs' span and gaps say about the answer."""

from __future__ import annotations

import gzip
import json
import lzma
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from who_data import KEY

from nattrail.who import answer, logs
from nattrail.who.query import At, Query


def t(clock: str) -> datetime:
    return datetime.fromisoformat(f"2026-11-21T{clock}+00:00")


def z(clock: str) -> str:
    return f"2026-11-21T{clock}Z"


def rec(clock: str, event: str, compact: bool = True, **fields: Any) -> str:
    record = {"ts": z(clock), "level": "info", "event": event, **fields}
    return json.dumps(record, separators=(",", ":") if compact else (", ", ": "))


def opened(clock: str, key: dict[str, Any] | None = None, **extra: Any) -> str:
    return rec(clock, "open", **(key or KEY), opened=z(clock), **extra)


def closed(start: str, end: str, key: dict[str, Any] | None = None, **extra: Any) -> str:
    return rec(end, "close", **(key or KEY), opened=z(start), closed=z(end), **extra)


def text(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def query(at: str = "03:12", window: int = 300, **changes: Any) -> Query:
    return Query(masq_port=666, at=At(t(at), at), window=timedelta(seconds=window), **changes)


def scan_of(path: Path, **changes: Any) -> logs.Scan:
    return logs.read_logs(path, query(**changes))


# --- finding and opening the files --------------------------------------------------------------------


def test_rotated_names(tmp_path: Path) -> None:
    log = tmp_path / "masq.log"
    names = [
        "masq.log.1.xz",
        "masq.log.zst",
        "masq.log-2026_11_21.bz2",
        "masq.log.10",
        "masq.log.1.gz.tmp",
        "masq.logs",
        "masq.log-",
        "masq.log.x",
        "xmasq.log",
        "masq.log.1.gz.gz",
    ]
    for name in names:
        (tmp_path / name).write_text("")
    assert [p.name for p in logs.find_logs(log)] == [
        "masq.log",
        "masq.log-2026_11_21.bz2",
        "masq.log.1.xz",
        "masq.log.10",
        "masq.log.zst",
    ]
    # The name is matched literally: a dot in it is not "any character".
    (tmp_path / "masqxlog.1").write_text("")
    assert "masqxlog.1" not in [p.name for p in logs.find_logs(log)]


def test_missing_directory_is_reported_as_the_log_itself(tmp_path: Path) -> None:
    log = tmp_path / "gone" / "masq.log"
    assert logs.find_logs(log) == [log]
    with pytest.raises(logs.WhoError) as error:
        logs.read_logs(log, query())
    assert str(error.value) == f"no log file could be read: {log} does not exist"


def test_compression_is_sniffed_from_the_content(tmp_path: Path) -> None:
    log = tmp_path / "masq.log"
    log.write_text(text([closed("03:10", "03:20")]))
    # xz under a name that says nothing, gzip under a ".1" name.
    (tmp_path / "masq.log.2").write_bytes(
        lzma.compress(text([rec("03:00", "start"), opened("03:10")]).encode())
    )
    (tmp_path / "masq.log.1").write_bytes(
        gzip.compress(text([rec("03:10:01", "ident", **KEY, user="a")]).encode())
    )
    result = answer.who(query(), log)
    (match,) = result.matches
    assert match.conn.records == ["masq.log.2:2 open", "masq.log.1:1 ident", "masq.log:1 close"]
    assert match.conn.user == "a"
    assert result.files == [str(log), str(tmp_path / "masq.log.1"), str(tmp_path / "masq.log.2")]
    assert result.problems == []


def test_damaged_xz_keeps_what_was_read(tmp_path: Path) -> None:
    log = tmp_path / "masq.log"
    log.write_text(text([closed("03:10", "03:20")]))
    data = lzma.compress(text([opened("03:10")] + [f'{{"x":{n}}}' for n in range(2000)]).encode())
    broken = data[:-40] + bytes(b ^ 0xFF for b in data[-40:])
    (tmp_path / "masq.log.1").write_bytes(broken)
    result = answer.who(query(), log)
    assert [m.conn.records for m in result.matches] == [["masq.log.1:1 open", "masq.log:1 close"]]
    (problem,) = result.problems
    assert problem.startswith(f"error reading {tmp_path / 'masq.log.1'}: ")
    assert problem.endswith("; used what was there")


def test_no_readable_file_names_every_problem(tmp_path: Path) -> None:
    log = tmp_path / "masq.log"
    (tmp_path / "masq.log.1").write_bytes(b"\x28\xb5\x2f\xfd")
    with pytest.raises(logs.WhoError) as error:
        logs.read_logs(log, query())
    rotated = tmp_path / "masq.log.1"
    assert str(error.value) == (
        f"no log file could be read: {log} does not exist; cannot read {rotated}: {rotated} is "
        "zstd-compressed, which Python cannot read; decompress it (zstd -d)"
    )


def test_same_file_twice_is_read_once(tmp_path: Path) -> None:
    log = tmp_path / "masq.log"
    log.write_text(text([opened("03:10"), closed("03:10", "03:20")]))
    scanner = logs.Scanner(query())
    scan = scanner.read([log, log])
    assert scan.files == [str(log)]
    assert len(scan.records) == 2


# --- lines --------------------------------------------------------------------------------------------


def test_span_of_the_logs_counts_every_record(tmp_path: Path) -> None:
    other = {**KEY, "masq_port": 40000}
    log = tmp_path / "masq.log"
    log.write_text(text([opened("03:05", other), opened("03:10"), opened("03:30", other)]))
    (tmp_path / "masq.log.1").write_text(text([opened("02:00", other), opened("02:30", other)]))
    scan = scan_of(log)
    assert (scan.first, scan.last) == (t("02:00"), t("03:30"))
    assert scan.file_ends == [t("03:30"), t("02:30")]
    assert scan.last_event == "open"


def test_stop_at_the_same_instant_as_another_record_ends_the_logs(tmp_path: Path) -> None:
    log = tmp_path / "masq.log"
    log.write_text(text([opened("03:10"), rec("03:11", "stop"), opened("03:11", {**KEY, "ct_id": 2})]))
    scan = scan_of(log)
    assert (scan.last, scan.last_event) == (t("03:11"), "stop")
    result = answer.who(query(at="03:20", window=600), log, now=t("04:00"))
    assert "the logger stopped at 2026-11-21T03:11:00Z and has logged nothing since" in result.warnings
    # Written the other way round, the stop still wins.
    log.write_text(text([opened("03:10"), opened("03:11", {**KEY, "ct_id": 2}), rec("03:11", "stop")]))
    assert scan_of(log).last_event == "stop"


def test_blank_lines_and_other_separators(tmp_path: Path) -> None:
    log = tmp_path / "masq.log"
    lines = ["", "  ", rec("03:00", "start", compact=False), opened("03:10"), "", closed("03:10", "03:20")]
    log.write_text(text(lines))
    scan = scan_of(log)
    assert scan.malformed == 0
    assert [r.where for r in scan.records] == ["masq.log:3", "masq.log:4", "masq.log:6"]
    assert (scan.first, scan.last) == (t("03:00"), t("03:20"))


def test_timestamps_in_other_zones_and_without_zone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "EST5")  # the local zone plays no part: the logs are read in UTC
    time.tzset()
    log = tmp_path / "masq.log"
    log.write_text(
        text(
            [
                opened("03:10").replace('"ts":"2026-11-21T03:10Z"', '"ts":"2026-11-21T04:10:00+01:00"'),
                closed("03:10", "03:20").replace('"ts":"2026-11-21T03:20Z"', '"ts":"2026-11-21T03:20:00"'),
            ]
        )
    )
    try:
        scan = scan_of(log)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert [r.ts for r in scan.records] == [t("03:10"), t("03:20")]
    assert all(r.ts.utcoffset() == timedelta(0) for r in scan.records)


def test_bad_records_are_counted_once_each(tmp_path: Path) -> None:
    log = tmp_path / "masq.log"
    port = '"masq_port":666,'
    bad = [
        '{"ts":"yesterday","event":"open",' + port + '"x":1}',
        '{"ts":"2026-11-21T03:10:00Z","event":7,' + port + '"x":1}',
        '{"ts":12,"event":"open",' + port + '"x":1}',
        '["not", "a", "record", ' + port + "1]",
        "\xff\xfe " + port,
        '[{"masq_port":666,"event":"open"}]',
    ]
    log.write_text(text([rec("03:00", "start"), *bad, *bad[3:], opened("03:10")]), encoding="latin-1")
    (tmp_path / "masq.log.1").write_text(text([rec("02:00", "start"), bad[0], bad[3]]), encoding="latin-1")
    result = answer.who(query(), log)
    # The same damaged line in two places (a copied log) is one problem; a wrong field is one per line.
    assert result.problems == ["skipped 7 unparseable log lines"]
    assert len(result.matches) == 1


def test_torn_line_before_a_record_without_the_port(tmp_path: Path) -> None:
    log = tmp_path / "masq.log"
    torn = '{"ts":"2026-11-21T03:09:59Z","event":"op'
    log.write_text(text([opened("03:05"), torn + rec("03:10", "stop")]))
    scan = scan_of(log)
    # The stop after the torn part is not about the port, but the file still ends with it.
    assert scan.malformed == 1
    assert (scan.last, scan.file_ends) == (t("03:05"), [t("03:05")])


def test_torn_last_line_leaves_the_line_before_as_the_end(tmp_path: Path) -> None:
    log = tmp_path / "masq.log"
    log.write_text(
        text([opened("03:05"), opened("03:07", {**KEY, "masq_port": 1})]) + '{"ts":"2026-11-21T03:0'
    )
    (tmp_path / "masq.log.1").write_text('{"ts":"2026-11-21T02:0')
    scan = scan_of(log)
    assert scan.malformed == 2
    assert scan.file_ends == [t("03:07")]
    assert scan.last == t("03:07")


def test_torn_line_of_the_port_is_counted_once(tmp_path: Path) -> None:
    log = tmp_path / "masq.log"
    log.write_text(text([opened("03:05")]) + opened("03:10")[:-20])
    scan = scan_of(log)
    assert scan.malformed == 1
    assert [r.where for r in scan.records] == ["masq.log:1"]


def test_unknown_events_are_counted_by_name(tmp_path: Path) -> None:
    log = tmp_path / "masq.log"
    log.write_text(
        text(
            [
                rec("03:00", "start"),
                rec("03:01", "ident_skips", masq_port=666, count=3),
                rec("03:02", "reopen", masq_port=666),
                rec("03:03", "open_v2", masq_port=666),
                rec("03:04", "reopen", masq_port=666),
                rec("03:05", "reopen", masq_port=666),
                opened("03:10"),
            ]
        )
    )
    result = answer.who(query(), log)
    assert result.problems == ["skipped 4 with unknown events (open_v2, reopen) log lines"]
    log.write_text(text([rec("03:00", "start"), rec("03:03", "open_v2", masq_port=666)]))
    assert answer.who(query(), log).problems == ["skipped 1 with unknown events (open_v2) log line"]


def test_lifecycle_records_are_found_without_a_port(tmp_path: Path) -> None:
    log = tmp_path / "masq.log"
    lines = [
        rec("03:00", "start"),
        opened("03:01"),
        rec("03:02", "resync", open=1),
        rec("03:03", "events_lost", lost=3),
        rec("03:04", "stop"),
        rec("03:05", "starting"),
        rec("03:06", "ident_skips"),
        rec("03:07", "open", **{**KEY, "masq_port": 667}),
        # A record whose event sits past the first bytes of the line is not a lifecycle record.
        '{"ts":"2026-11-21T03:08:00Z","level":"info","padding":"' + "x" * 60 + '","event":"start"}',
    ]
    log.write_text(text(lines))
    scan = scan_of(log)
    assert [(r.event, r.where) for r in scan.records] == [
        ("start", "masq.log:1"),
        ("open", "masq.log:2"),
        ("resync", "masq.log:3"),
        ("stop", "masq.log:5"),
    ]
    assert [(g.start, g.end, g.why) for g in scan.gaps] == [
        (t("03:02"), t("03:03"), "the kernel dropped 3 connection events (masq.log:4)")
    ]
    assert scan.unknown == {}
    assert scan.records[0].data == {"prev": None}
    assert scan.records[2].data == {"prev": t("03:01")}


def test_duplicate_records_count_once_but_lifecycle_records_of_other_files_do_too(tmp_path: Path) -> None:
    log = tmp_path / "masq.log"
    unknown = rec("03:12", "x", masq_port=666)
    lines = [rec("03:00", "start"), opened("03:10"), rec("03:11", "events_lost", lost=1), unknown]
    log.write_text(text(lines))
    (tmp_path / "masq.log-copy").write_text("")  # not a rotated name: ignored
    (tmp_path / "masq.log.1").write_text(text(lines))
    scan = scan_of(log)
    assert [(r.event, r.where) for r in scan.records] == [("start", "masq.log:1"), ("open", "masq.log:2")]
    assert len(scan.gaps) == 1
    # Unknown events are not remembered: each copy counts (they are only counted).
    assert scan.unknown == {"x": 2}


def test_bool_port_is_not_a_port(tmp_path: Path) -> None:
    log = tmp_path / "masq.log"
    record = {**KEY, "masq_port": True}
    log.write_text(text([rec("03:10", "open", compact=False, **record, opened=z("03:10"))]))
    result = answer.who(Query(masq_port=1, at=At(t("03:12"), "03:12"), window=timedelta(minutes=5)), log)
    assert result.matches == []


def test_logged_addresses_are_compared_canonically(tmp_path: Path) -> None:
    six = {**KEY, "client_ip": "FD00:77:0::10", "server_ip": "2001:DB8::0:53", "masq_ip": "2001:db8:0::2"}
    log = tmp_path / "masq.log"
    log.write_text(
        text(
            [
                opened("03:10", six),
                closed("03:10", "03:20", six),
                opened("03:11", {**six, "masq_ip": "router"}),
            ]
        )
    )
    result = answer.who(query(masq_ip="2001:db8::2", remote_ip="2001:db8::53", remote_port=22), log)
    (match,) = result.matches
    assert (match.conn.data["client_ip"], match.conn.data["server_ip"]) == ("fd00:77::10", "2001:db8::53")
    assert match.conn.records == ["masq.log:1 open", "masq.log:2 close"]
    # An address that is not one is kept as logged.
    result = answer.who(query(), log)
    assert sorted(str(m.conn.data["masq_ip"]) for m in result.matches) == ["2001:db8::2", "router"]


def test_lines_without_a_time_do_not_bound_the_logs(tmp_path: Path) -> None:
    log = tmp_path / "masq.log"
    log.write_text(text(['{"note":"rotated"}', opened("03:05"), opened("03:07"), '{"note":"end"}']))
    scan = scan_of(log)
    assert (scan.first, scan.last, scan.file_ends) == (t("03:05"), t("03:07"), [t("03:07")])


def test_stop_record_with_its_event_late_in_the_line_still_ends_the_logs(tmp_path: Path) -> None:
    log = tmp_path / "masq.log"
    stop = '{"ts":"2026-11-21T03:20:00Z","level":"info","message":"' + "x" * 80 + '","event":"stop"}'
    log.write_text(text([rec("03:00", "start"), opened("03:05"), stop]))
    result = answer.who(query(at="03:30", window=900), log, now=t("04:00"))
    assert result.warnings == ["the logger stopped at 2026-11-21T03:20:00Z and has logged nothing since"]
    assert [m.end for m in result.matches] == [t("03:20")]


def test_record_after_stray_bytes_or_several_torn_lines_is_recovered(tmp_path: Path) -> None:
    log = tmp_path / "masq.log"
    torn = '{"ts":"2026-11-21T03:09:59Z","event":"op'
    log.write_text(text(["x" + opened("03:10"), torn + torn + closed("03:10", "03:20"), opened("03:30")]))
    scan = scan_of(log)
    assert [(r.event, r.where) for r in scan.records] == [
        ("open", "masq.log:1"),
        ("close", "masq.log:2"),
        ("open", "masq.log:3"),
    ]
    assert scan.malformed == 2


def test_records_of_one_instant_keep_their_order(tmp_path: Path) -> None:
    log = tmp_path / "masq.log"
    answers = [rec("03:10:01", "ident", **KEY, user=name) for name in ("first", "second", "third")]
    log.write_text(text([rec("03:00", "start"), opened("03:10"), *answers]))
    (tmp_path / "masq.log.1").write_text(
        text([rec("02:00", "start"), rec("02:30", "resync", open=0), rec("02:30", "resync", open=1)])
    )
    result = answer.who(query(), log)
    (match,) = result.matches
    assert match.conn.user == "third"
    assert match.conn.records[1:] == ["masq.log:3 ident", "masq.log:4 ident", "masq.log:5 ident"]
