"""`nattrail who`: finding the inside host behind a masquerade port and time, from synthetic log sets.

Each test writes the masquerade logger's JSON lines (compact, as JsonLog writes them) into a current log
and rotated files (numbered, gzipped, dateext) in tmp_path, then runs the command as a user would.
"""

from __future__ import annotations

import bz2
import gzip
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from who_data import KEY, NEW_YORK

from nattrail.who import answer, command, logs
from nattrail.who.query import At, Query, parse_at, parse_remote, parse_window

ALICE = KEY


def conn(**changes: Any) -> dict[str, Any]:
    return {**ALICE, **changes}


def rec(ts: str, event: str, **fields: Any) -> str:
    record = {"ts": ts, "level": "info", "event": event, **fields, "daemon": "masqlog"}
    return json.dumps(record, separators=(",", ":"))


def z(clock: str, day: str = "2026-11-21") -> str:
    """'03:12' or '03:12:30.5' -> a log timestamp on ``day``."""
    parts = clock.split(":")
    while len(parts) < 3:
        parts.append("00")
    seconds = float(parts[2])
    return f"{day}T{parts[0]}:{parts[1]}:{int(seconds):02d}.{round(seconds % 1 * 1e6):06d}Z"


def opened(clock: str, key: dict[str, Any], at: str | None = None, **extra: Any) -> str:
    start = z(clock)
    return rec(at or start, "open", **key, opened=extra.pop("opened", start), **extra)


def ident(clock: str, key: dict[str, Any], user: str | None = "alice", error: str | None = None) -> str:
    return rec(z(clock), "ident", **key, user=user, ident_error=error, ident_os="UNIX")


def closed(start: str | None, end: str, key: dict[str, Any], out: int = 1200, back: int = 64000) -> str:
    begin = z(start) if start else None
    finish = z(end)
    duration = None
    if begin:
        duration = (datetime.fromisoformat(finish) - datetime.fromisoformat(begin)).total_seconds()
    return rec(
        finish,
        "close",
        **key,
        opened=begin,
        closed=finish,
        duration=duration,
        orig_packets=10,
        orig_bytes=out,
        reply_packets=20,
        reply_bytes=back,
    )


def write_logs(directory: Path, files: dict[str, list[str]], tail: str = "") -> Path:
    """Write each file (``.gz``/``.bz2`` compressed); ``tail`` is appended raw to the current log."""
    for name, lines in files.items():
        text = "".join(line + "\n" for line in lines)
        if name == "masq.log":
            text += tail
        path = directory / name
        if name.endswith(".gz"):
            path.write_bytes(gzip.compress(text.encode()))
        elif name.endswith(".bz2"):
            path.write_bytes(bz2.compress(text.encode()))
        else:
            path.write_text(text)
    return directory / "masq.log"


def run(capsys: pytest.CaptureFixture[str], log: Path, *argv: str) -> tuple[int, str, str]:
    status = command.main([*argv, "--log", str(log)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def blocks(out: str) -> list[str]:
    """The per-connection blocks of the human output (after the header)."""
    return out.split("\n\n")[1:]


# --- the mission --------------------------------------------------------------------------------------


def mission_logs(directory: Path) -> Path:
    """Alice's connection through port 666 spread over the rotated files, among other traffic."""
    bob = conn(ct_id=2002, client_ip="10.77.0.11", client_port=50000, masq_port=40000)
    other_day = conn(ct_id=7, client_ip="10.77.0.12", client_port=41000)
    return write_logs(
        directory,
        {
            "masq.log-20261119.gz": [
                rec(z("09:00", "2026-11-19"), "start"),
                opened("09:01", other_day, at=z("09:01", "2026-11-19"), opened=z("09:01", "2026-11-19")),
            ],
            "masq.log-20261120": [
                closed(None, "09:02", other_day).replace("2026-11-21", "2026-11-20"),
            ],
            "masq.log.2.gz": [opened("03:10", ALICE), opened("03:10:30", bob)],
            "masq.log.1": [ident("03:10:01", ALICE), ident("03:10:31", bob, user="bob")],
            "masq.log": [closed("03:10:30", "03:11", bob), closed("03:10", "03:20", ALICE)],
        },
    )


def test_mission_port_and_time_find_alice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = mission_logs(tmp_path)
    status, out, err = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z")
    assert status == 0, err
    assert err == ""
    header, *_ = out.splitlines()
    assert header.startswith("1 connection through *:666 ")
    assert "open at 2026-11-21T03:12:00Z: 10.77.0.10:40001 (user alice) -> 203.0.113.10:22" in out
    (block,) = blocks(out)
    assert block.splitlines()[0] == (
        "10.77.0.10:40001  user alice  -> 203.0.113.10:22  via 203.0.113.2:666  tcp"
        "   <- open at 2026-11-21T03:12:00Z"
    )
    assert "opened 2026-11-21T03:10:00Z  closed 2026-11-21T03:20:00Z  duration 10m00s" in block
    assert "bytes out 1200 (1.2 KiB) / in 64000 (62.5 KiB)" in block
    # The evidence: which file and line each part came from, whatever order the files were read in.
    assert "log: masq.log.2.gz:1 open, masq.log.1:1 ident, masq.log:2 close" in block
    assert "bob" not in out


def test_rotated_files_are_found_and_others_ignored(tmp_path: Path) -> None:
    log = mission_logs(tmp_path)
    (tmp_path / "masq.log.bak").write_text("not a log\n")
    (tmp_path / "other.log.1").write_text("not a log\n")
    (tmp_path / "masq.log-20261118-1763420000.gz").write_bytes(gzip.compress(b""))
    names = [path.name for path in logs.find_logs(log)]
    assert names == [
        "masq.log",
        "masq.log-20261118-1763420000.gz",
        "masq.log-20261119.gz",
        "masq.log-20261120",
        "masq.log.1",
        "masq.log.2.gz",
    ]


def test_port_reused_three_times_newest_first_and_right_one_marked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = conn(ct_id=11, client_ip="10.77.0.21", client_port=40011)
    second = conn(ct_id=12, client_ip="10.77.0.22", client_port=40012)
    third = conn(ct_id=13, client_ip="10.77.0.23", client_port=40013)
    log = write_logs(
        tmp_path,
        {
            "masq.log.1": [
                opened("03:08", first),
                ident("03:08:01", first, user="carol"),
                closed("03:08", "03:09", first),
                opened("03:11", second),
                ident("03:11:01", second, user="dave"),
            ],
            "masq.log": [
                closed("03:11", "03:13", second),
                opened("03:14", third),
                ident("03:14:01", third, user="erin"),
                closed("03:14", "03:16", third),
            ],
        },
    )
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21T03:12:00Z")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith("3 connections through *:666 ")
    assert lines[1] == "open at 2026-11-21T03:12:00Z: 10.77.0.22:40012 (user dave) -> 203.0.113.10:22"
    found = blocks(out)
    assert [b.split()[0] for b in found] == ["10.77.0.23:40013", "10.77.0.22:40012", "10.77.0.21:40011"]
    assert ["<- open at" in b for b in found] == [False, True, False]

    # Between two of them nobody held the port: the header says so.
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21T03:13:30Z")
    assert status == 0
    assert out.splitlines()[1] == "none was open at 2026-11-21T03:13:30Z"
    assert not any("<- open at" in b for b in blocks(out))


def test_same_ct_id_after_reboot_is_a_separate_connection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_logs(
        tmp_path,
        {
            "masq.log.1": [
                rec(z("00:00"), "start"),
                opened("01:00", ALICE),
                ident("01:00:01", ALICE, user="mallory"),
                closed("01:00", "01:05", ALICE),
                opened("02:00", ALICE),  # the router went down with this one open: no close
                ident("02:00:01", ALICE, user="oscar"),
            ],
            "masq.log": [
                rec(z("02:55"), "start"),
                opened("03:10", ALICE),
                ident("03:10:01", ALICE, user="alice"),
                closed("03:10", "03:20", ALICE),
            ],
        },
    )
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z", "--window", "3h")
    assert status == 0
    found = blocks(out)
    assert [b.split()[2] for b in found] == ["alice", "oscar", "mallory"]
    assert "<- open at" in found[0] and "closed 2026-11-21T03:20:00Z" in found[0]
    assert "closed 2026-11-21T01:05:00Z" in found[2]
    # The reboot's unclosed connection ended, at the latest, when the same address pair was taken again.
    assert "closed -" in found[1] and "<- open at" not in found[1]
    assert "ended by 2026-11-21T03:10:00Z" in found[1]
    assert "the logger restarted without logging a stop between" in out


def test_restart_ends_connections_its_table_dump_no_longer_lists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    survivor = conn(ct_id=9, client_ip="10.77.0.12", client_port=40009, server_ip="198.51.100.7")
    log = write_logs(
        tmp_path,
        {
            "masq.log.1": [
                rec(z("00:00"), "start"),
                opened("01:00", ALICE),
                ident("01:00:01", ALICE),
                opened("01:30", survivor),
                rec(z("02:00"), "stop"),
            ],
            "masq.log": [
                rec(z("02:30"), "start"),
                # The dump right after the start lists what is still open; the kernel's start time may
                # differ from the logger's by the event delay.
                opened("01:30:00.4", survivor, at=z("02:30:00.1"), resync=True),
                rec(z("02:30:00.2"), "resync", open=1, learnt=1, closed_in_gap=0),
            ],
        },
    )
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:00Z", "--window", "2h")
    assert status == 0
    first, second = blocks(out)
    assert first.startswith("10.77.0.12:40009") and "<- open at" in first
    assert "log: masq.log.1:4 open, masq.log:2 resync" in first
    assert second.startswith("10.77.0.10:40001") and "<- open at" not in second
    assert (
        "ended by 2026-11-21T02:30:00.200000Z, as the table dump after the logger started at "
        "2026-11-21T02:30:00Z did not list it"
    ) in second
    assert "warning: the logger was not running between 2026-11-21T02:00:00Z and 2026-11-21T02:30:00Z" in out


def test_close_found_by_a_table_dump_is_flagged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gone = rec(
        z("03:20"), "close", **ALICE, opened=z("03:10"), closed=z("03:20"), duration=None,
        orig_packets=None, orig_bytes=None, reply_packets=None, reply_bytes=None, lost=True,
    )  # fmt: skip
    log = write_logs(tmp_path, {"masq.log": [opened("03:10", ALICE), rec(z("03:19"), "events_lost"), gone]})
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z", "--window", "10m")
    assert status == 0
    (block,) = blocks(out)
    assert "duration -" in block and "masq.log:3 close (lost)" in block
    assert "note: its close event was lost" in block
    assert "warning: the kernel dropped connection events (masq.log:2)" in out


def test_close_without_open(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_logs(tmp_path, {"masq.log": [rec(z("03:00"), "start"), closed("03:05", "03:15", ALICE)]})
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z")
    assert status == 0
    (block,) = blocks(out)
    assert "<- open at" in block
    assert "opened 2026-11-21T03:05:00Z  closed 2026-11-21T03:15:00Z  duration 10m00s" in block
    assert "ident: not logged" in block
    assert "log: masq.log:2 close" in block


def test_close_without_open_or_start_time_counts_from_the_start_of_the_logs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_logs(tmp_path, {"masq.log": [rec(z("03:00"), "start"), closed(None, "03:15", ALICE)]})
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z", "--json")
    assert status == 0
    (match,) = json.loads(out)["matches"]
    assert match["opened"] is None
    assert match["assumed_start"] == "2026-11-21T03:00:00Z"
    assert match["open_at_time"] is True
    assert "taken as the start of the logs" in match["notes"][0]


def test_open_without_close(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = conn(ct_id=5, client_port=40005, masq_port=40005)
    log = write_logs(
        tmp_path,
        {
            "masq.log": [
                opened("03:10", ALICE),
                ident("03:10:01", ALICE),
                opened("03:30", other),
                closed("03:30", "03:31", other),
            ]
        },
    )
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:25Z")
    assert status == 0
    (block,) = blocks(out)
    assert "<- open at 2026-11-21T03:25:00Z" in block
    assert "closed -  duration -  bytes out - / in -" in block
    assert "note: no close logged; still open" in block


def test_unclosed_connection_is_open_until_now_while_the_logger_runs(tmp_path: Path) -> None:
    log = write_logs(tmp_path, {"masq.log": [rec(z("03:00"), "start"), opened("03:10", ALICE)]})
    later = datetime(2026, 11, 21, 5, 0, tzinfo=UTC)
    query = Query(masq_port=666, at=At(later, "now"), window=timedelta(minutes=5))
    (match,) = answer.who(query, log, now=later).matches
    assert match.open_at_time

    # Once the logger has stopped, the logs know nothing after the stop.
    write_logs(tmp_path, {"masq.log": [opened("03:10", ALICE), rec(z("03:20"), "stop")]})
    result = answer.who(query, log, now=later)
    assert result.matches == []
    assert any("logger stopped at 2026-11-21T03:20:00Z" in w for w in result.warnings)


def test_resync_of_a_known_connection_is_not_a_second_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_logs(
        tmp_path,
        {
            "masq.log": [
                opened("03:10", ALICE),
                ident("03:10:01", ALICE),
                opened("03:11", ALICE, resync=True, opened=None),
                closed("03:10", "03:20", ALICE),
            ]
        },
    )
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z")
    assert status == 0
    (block,) = blocks(out)
    assert "log: masq.log:1 open, masq.log:2 ident, masq.log:3 resync, masq.log:4 close" in block


def test_ident_error_is_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_logs(
        tmp_path,
        {
            "masq.log": [
                opened("03:10", ALICE),
                ident("03:10:05", ALICE, user=None, error="ERROR:NO-USER"),
                closed("03:10", "03:20", ALICE),
            ]
        },
    )
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z")
    assert status == 0
    assert "open at 2026-11-21T03:12:00Z: 10.77.0.10:40001 (ident ERROR:NO-USER)" in out
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z", "--json")
    (match,) = json.loads(out)["matches"]
    assert match["user"] is None and match["ident_error"] == "ERROR:NO-USER"


def test_ident_skipped_in_the_open_record_is_shown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Past its caps the logger does not ask, and says so in the open record: no ident record follows.
    log = write_logs(
        tmp_path,
        {
            "masq.log": [
                opened("03:10", ALICE, user=None, ident_error="skipped:rate"),
                closed("03:10", "03:20", ALICE),
            ]
        },
    )
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z", "--json")
    assert status == 0
    (match,) = json.loads(out)["matches"]
    assert match["user"] is None and match["ident_error"] == "skipped:rate"


def test_ident_answer_after_the_close_still_belongs_to_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_logs(
        tmp_path,
        {"masq.log": [opened("03:10", ALICE), closed("03:10", "03:10:02", ALICE), ident("03:10:09", ALICE)]},
    )
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:10:01Z")
    assert status == 0
    (block,) = blocks(out)
    assert "user alice" in block and "<- open at" in block


def test_remote_and_masq_ip_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Masquerade allocates ports per remote end: two hosts can hold :666 at once, to different servers.
    web = conn(ct_id=21, client_ip="10.77.0.31", client_port=40021, server_ip="198.51.100.7", server_port=80)
    second_ip = conn(ct_id=22, client_ip="10.77.0.32", client_port=40022, masq_ip="203.0.113.3")
    log = write_logs(
        tmp_path,
        {
            "masq.log": [
                opened("03:10", ALICE),
                opened("03:10:10", web),
                opened("03:10:20", second_ip),
                closed("03:10", "03:20", ALICE),
                closed("03:10:10", "03:20", web),
                closed("03:10:20", "03:20", second_ip),
            ]
        },
    )
    at = ("--masq-port", "666", "--at", "2026-11-21 03:12Z")
    status, out, _ = run(capsys, log, *at)
    assert status == 0 and len(blocks(out)) == 3
    assert out.count("<- open at") == 3

    status, out, _ = run(capsys, log, *at, "--remote", "198.51.100.7")
    assert [b.split()[0] for b in blocks(out)] == ["10.77.0.31:40021"]
    status, out, _ = run(capsys, log, *at, "--remote", "203.0.113.10:22")
    assert [b.split()[0] for b in blocks(out)] == ["10.77.0.32:40022", "10.77.0.10:40001"]
    status, out, _ = run(capsys, log, *at, "--remote", "203.0.113.10:23")
    assert status == 1
    status, out, _ = run(capsys, log, *at, "--masq-ip", "203.0.113.3")
    assert [b.split()[0] for b in blocks(out)] == ["10.77.0.32:40022"]
    status, out, _ = run(capsys, log, *at, "--masq-ip", "203.0.113.2", "--remote", "203.0.113.10")
    assert [b.split()[0] for b in blocks(out)] == ["10.77.0.10:40001"]
    status, out, _ = run(capsys, log, *at, "--proto", "udp")
    assert status == 1


def test_json_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = mission_logs(tmp_path)
    status, out, err = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z", "--json")
    assert status == 0 and err == ""
    report = json.loads(out)
    assert set(report) == {"query", "matches", "warnings"}
    query = report["query"]
    assert query["masq_port"] == 666 and query["proto"] == "any"
    assert query["at"] == "2026-11-21T03:12:00Z"
    assert (query["from"], query["to"]) == ("2026-11-21T03:07:00Z", "2026-11-21T03:17:00Z")
    assert query["window_seconds"] == 300
    assert len(query["logs"]) == 5
    assert report["warnings"] == []
    (match,) = report["matches"]
    assert match == {
        **ALICE,
        "user": "alice",
        "ident_error": None,
        "ident_os": "UNIX",
        "ident_logged": True,
        "opened": "2026-11-21T03:10:00Z",
        "closed": "2026-11-21T03:20:00Z",
        "duration": 600.0,
        "orig_packets": 10,
        "orig_bytes": 1200,
        "reply_packets": 20,
        "reply_bytes": 64000,
        "resync": False,
        "assumed_start": "2026-11-21T03:10:00Z",
        "assumed_end": "2026-11-21T03:20:00Z",
        "open_at_time": True,
        "notes": [],
        "records": ["masq.log.2.gz:1 open", "masq.log.1:1 ident", "masq.log:2 close"],
    }


def test_no_match_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = mission_logs(tmp_path)
    status, out, err = run(capsys, log, "--masq-port", "667", "--at", "2026-11-21 03:12Z")
    assert status == 1
    assert out == ""
    assert err.strip().splitlines()[-1] == (
        "nattrail who: no connection through *:667 (any protocol) between "
        "2026-11-21T03:07:00Z and 2026-11-21T03:17:00Z"
    )
    status, out, err = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 04:12Z", "--json")
    assert status == 1
    assert json.loads(out)["matches"] == []
    assert "no connection through *:666" in err


def test_missing_log_exits_2_naming_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "masq.log"
    status, out, err = run(capsys, missing, "--masq-port", "666", "--at", "2026-11-21 03:12Z")
    assert status == 2 and out == ""
    assert str(missing) in err and "no log file could be read" in err


def test_only_rotated_files_left_is_a_warning_not_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = mission_logs(tmp_path)
    log.unlink()
    status, out, err = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z")
    assert status == 0
    assert f"warning: {log} does not exist" in err
    assert "closed -" in out  # its close was in the missing file


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--window", "5x"], "argument --window: not a window: '5x'"),
        (["--window", "1w"], "argument --window: not a window: '1w'"),
        (["--at", "yesterday"], "argument --at: not a time: 'yesterday'"),
        (["--at", "2026-13-01 03:12"], "argument --at: not a valid time: '2026-13-01 03:12'"),
        (["--masq-port", "70000"], "argument --masq-port: not a port: '70000'"),
        (["--remote", "203.0.113.300"], "argument --remote: not an IP address: '203.0.113.300'"),
        (["--proto", "sctp"], "argument --proto: invalid choice: 'sctp'"),
    ],
)
def test_usage_errors_exit_2_naming_option_and_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    base = {"--masq-port": "666", "--at": "2026-11-21 03:12Z"}
    base.update(dict(zip(argv[::2], argv[1::2], strict=True)))
    with pytest.raises(SystemExit) as exit_info:
        command.main([item for pair in base.items() for item in pair])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# --- times --------------------------------------------------------------------------------------------


def test_naive_at_is_local_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], local_zone: Callable[[str], None]
) -> None:
    local_zone(NEW_YORK)
    log = mission_logs(tmp_path)
    # 22:12 in New York on 20 November is 03:12 UTC on the 21st.
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-20 22:12")
    assert status == 0
    assert out.splitlines()[0] == (
        "1 connection through *:666 (any protocol) between 2026-11-21T03:07:00Z and 2026-11-21T03:17:00Z; "
        "--at '2026-11-20 22:12' read as local time, UTC-05:00 (EST)"
    )
    assert "<- open at 2026-11-21T03:12:00Z" in out
    # An explicit offset wins over the local zone.
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21T04:12:00+01:00")
    assert "<- open at 2026-11-21T03:12:00Z" in out


def test_ambiguous_local_time_warns(local_zone: Callable[[str], None]) -> None:
    local_zone(NEW_YORK)
    at = parse_at("2026-11-01 01:30")  # clocks go back at 02:00 EDT: 01:30 happens twice
    assert at.moment == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    assert at.warning is not None and "2026-11-01T06:30:00Z" in at.warning
    assert parse_at("2026-11-02 01:30").warning is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-21 03:12", datetime(2026, 11, 21, 3, 12, tzinfo=UTC)),
        ("2026-11-21T03:12:07", datetime(2026, 11, 21, 3, 12, 7, tzinfo=UTC)),
        ("2026-11-21 03:12:07.25Z", datetime(2026, 11, 21, 3, 12, 7, 250000, tzinfo=UTC)),
        ("2026-11-21T05:12+02:00", datetime(2026, 11, 21, 3, 12, tzinfo=UTC)),
        ("2026-11-20T22:12:00-0500", datetime(2026, 11, 21, 3, 12, tzinfo=UTC)),
    ],
)
def test_parse_at(text: str, expected: datetime, local_zone: Callable[[str], None]) -> None:
    local_zone("UTC0")
    assert parse_at(text).moment == expected


def test_parse_at_now() -> None:
    now = datetime(2026, 11, 21, 3, 12, tzinfo=UTC)
    assert parse_at("now", now=now).moment == now
    assert abs(parse_at("now").moment - datetime.now(UTC)) < timedelta(minutes=1)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("5m", 300), ("2h", 7200), ("1d", 86400), ("0", 0)]
)
def test_parse_window(text: str, seconds: int) -> None:
    assert parse_window(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5x", "m", "1.5m", "-1", "99999999999999999999d"])
def test_parse_window_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="window"):
        parse_window(text)


def test_parse_remote() -> None:
    assert parse_remote("203.0.113.10") == ("203.0.113.10", None)
    assert parse_remote("203.0.113.10:22") == ("203.0.113.10", 22)
    assert parse_remote("2001:DB8::0:1") == ("2001:db8::1", None)
    assert parse_remote("[2001:db8::1]:443") == ("2001:db8::1", 443)
    for bad in ("[2001:db8::1", "[2001:db8::1]443", "host:22", "203.0.113.10:0"):
        with pytest.raises(ValueError):
            parse_remote(bad)


def test_window_edges_are_inclusive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_logs(tmp_path, {"masq.log": [opened("03:00", ALICE), closed("03:00", "03:07", ALICE)]})
    assert run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z")[0] == 0
    assert run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12:01Z")[0] == 1
    assert run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12:01Z", "--window", "302")[0] == 0


# --- damaged and unusual logs -------------------------------------------------------------------------


def test_torn_last_line_and_unknown_events_are_tolerated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_logs(
        tmp_path,
        {
            "masq.log": [
                opened("03:10", ALICE),
                rec(z("03:10:01"), "open_v2", **ALICE),
                "this is not json",
                ident("03:10:02", ALICE),
                closed("03:10", "03:20", ALICE),
            ]
        },
        tail='{"ts":"2026-11-21T03:21:00.000000Z","level":"info","event":"open","proto":"tc',
    )
    status, out, err = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z")
    assert status == 0
    assert "user alice" in out
    # One warning line for all of it; the garbage line in the middle cannot concern the port, so it is
    # skipped without being parsed.
    assert err == (
        "nattrail who: warning: skipped 1 unparseable and 1 with unknown events (open_v2) log lines\n"
    )


def test_record_after_a_torn_line_is_recovered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torn = '{"ts":"2026-11-21T03:09:59.000000Z","level":"info","event":"op'
    log = write_logs(tmp_path, {"masq.log": [torn + opened("03:10", ALICE), closed("03:10", "03:20", ALICE)]})
    status, out, err = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z")
    assert status == 0
    assert "log: masq.log:1 open, masq.log:2 close" in out
    assert "1 unparseable" in err


def test_events_lost_in_the_window_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lost = {"lost": 42}
    log = write_logs(
        tmp_path,
        {
            "masq.log": [
                rec(z("01:00"), "events_lost", lost=7),
                opened("03:10", ALICE),
                rec(z("03:13"), "events_lost", **lost),
                closed("03:10", "03:20", ALICE),
            ]
        },
    )
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z")
    assert status == 0
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: the kernel dropped 42 connection events (masq.log:3) between 2026-11-21T03:10:00Z and "
        "2026-11-21T03:13:00Z: connections in that time may be missing or incomplete"
    ]
    # With nothing found the warning matters most: it goes to stderr with the "no connection" line.
    status, out, err = run(capsys, log, "--masq-port", "777", "--at", "2026-11-21 03:12Z")
    assert status == 1 and "dropped 42 connection events" in err
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z", "--json")
    assert len(json.loads(out)["warnings"]) == 1


@pytest.mark.parametrize("lost", [True, "many", None])
def test_events_lost_without_a_count_says_no_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lost: object
) -> None:
    log = write_logs(
        tmp_path,
        {
            "masq.log": [
                opened("03:10", ALICE),
                rec(z("03:13"), "events_lost", lost=lost),
                closed("03:10", "03:20", ALICE),
            ]
        },
    )
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z")
    assert status == 0
    assert "warning: the kernel dropped connection events (masq.log:2)" in out, out


def test_logger_down_in_the_window_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_logs(
        tmp_path,
        {
            "masq.log.1": [rec(z("03:00"), "start"), opened("03:01", ALICE), rec(z("03:11"), "stop")],
            "masq.log": [rec(z("03:14"), "start")],
        },
    )
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z")
    assert status == 0
    assert "warning: the logger was not running between 2026-11-21T03:11:00Z and 2026-11-21T03:14:00Z" in out


def test_prefilter_does_not_match_longer_ports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    longer = conn(masq_port=6660)
    log = write_logs(tmp_path, {"masq.log": [opened("03:10", longer), closed("03:10", "03:20", longer)]})
    assert run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z")[0] == 1
    assert run(capsys, log, "--masq-port", "6660", "--at", "2026-11-21 03:12Z")[0] == 0


def test_log_written_with_other_separators_is_still_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [json.dumps(json.loads(line)) for line in (opened("03:10", ALICE), ident("03:10:01", ALICE))]
    log = write_logs(tmp_path, {"masq.log.1.bz2": lines, "masq.log": [closed("03:10", "03:20", ALICE)]})
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z")
    assert status == 0
    assert "log: masq.log.1.bz2:1 open, masq.log.1.bz2:2 ident, masq.log:1 close" in out


def test_duplicate_files_do_not_duplicate_connections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = mission_logs(tmp_path)
    (tmp_path / "masq.log.3").hardlink_to(tmp_path / "masq.log.1")
    # A copy under another name (copytruncate, or an admin's backup) repeats the same records.
    copy = gzip.decompress((tmp_path / "masq.log.2.gz").read_bytes())
    (tmp_path / "masq.log-20261121").write_bytes(copy)
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z")
    assert status == 0
    (block,) = blocks(out)
    assert "log: masq.log-20261121:1 open, masq.log.1:1 ident, masq.log:2 close" in block


def test_truncated_gzip_keeps_what_was_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    others = [
        opened("03:11", conn(ct_id=100 + n, client_port=30000 + n, masq_port=5000 + n)) for n in range(3000)
    ]
    log = write_logs(
        tmp_path,
        {"masq.log.1.gz": [opened("03:10", ALICE), *others], "masq.log": [closed("03:10", "03:20", ALICE)]},
    )
    data = (tmp_path / "masq.log.1.gz").read_bytes()
    (tmp_path / "masq.log.1.gz").write_bytes(data[: len(data) // 2])  # as if gzip were still writing it
    status, out, err = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z")
    assert status == 0
    assert "log: masq.log.1.gz:1 open, masq.log:1 close" in out
    assert "masq.log.1.gz ends early (still being compressed?)" in err


def test_the_default_log_is_the_one_the_loggers_settings_name(tmp_path: Path) -> None:
    """A router whose nattrail_log_dir is elsewhere: `nattrail who` follows masq_logger's settings."""
    settings = tmp_path / "masqlog.json"
    assert command.default_log(settings) == "/var/log/nattrail/masq.log"  # no settings file
    settings.write_text('{"log": "/srv/logs/masq.log", "protocols": ["tcp"]}')
    assert command.default_log(settings) == "/srv/logs/masq.log"
    for broken in ("not json", '["a list"]', '{"log": ""}', '{"log": 5}'):
        settings.write_text(broken)
        assert command.default_log(settings) == "/var/log/nattrail/masq.log", broken
