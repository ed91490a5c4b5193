"""`nattrail who`: what the user reads (human and JSON reports, stderr, exit status) in the less common
cases: IPv6, filters, ident without an answer, short and long durations, several problems at once."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from nattrail.who import command
from nattrail.who.join import COUNTER_FIELDS
from nattrail.who.report import endpoint, format_duration
from nattrail.who.times import format_time

ALICE6 = {
    "proto": "udp",
    "ct_id": 3003,
    "client_ip": "fd00:77::10",
    "client_port": 5353,
    "server_ip": "2001:db8::53",
    "server_port": 53,
    "masq_ip": "2001:db8::2",
    "masq_port": 666,
}


def rec(ts: str, event: str, **fields: Any) -> str:
    return json.dumps({"ts": ts, "level": "info", "event": event, **fields}, separators=(",", ":"))


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def run(capsys: pytest.CaptureFixture[str], log: Path, *argv: str) -> tuple[int, str, str]:
    status = command.main([*argv, "--log", str(log)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# --- small formatters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0, "0.0s"),
        (59.94, "59.9s"),
        (60, "1m00s"),
        (61.4, "1m01s"),
        (3599.4, "59m59s"),
        (3599.6, "1h00m00s"),
        (3661, "1h01m01s"),
        (90061, "25h01m01s"),
    ],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_time() -> None:
    assert format_time(None) == "-"
    plus_two = timezone(timedelta(hours=2))
    assert format_time(datetime(2026, 11, 21, 5, 12, tzinfo=plus_two)) == "2026-11-21T03:12:00Z"
    assert format_time(datetime(2026, 11, 21, 3, 12, 0, 5, tzinfo=UTC)) == "2026-11-21T03:12:00.000005Z"


def test_endpoint() -> None:
    assert endpoint(None, 666) == "*:666"
    assert endpoint(None, None) == "*"
    assert endpoint("2001:db8::2", 666) == "[2001:db8::2]:666"
    assert endpoint("2001:db8::2", None) == "[2001:db8::2]"
    assert endpoint("203.0.113.2", None) == "203.0.113.2"
    assert endpoint("203.0.113.2", 0) == "203.0.113.2:0"


# --- the human report ---------------------------------------------------------------------------------


def ipv6_log(directory: Path) -> Path:
    second = {**ALICE6, "ct_id": 3004, "client_port": 5354}
    return write(
        directory / "masq.log",
        [
            rec("2026-11-21T03:00:00Z", "start"),
            rec("2026-11-21T03:10:10Z", "open", **ALICE6, opened="2026-11-21T03:10:10Z"),
            rec("2026-11-21T03:10:11Z", "ident", **ALICE6, user=None, ident_error=None, ident_os=None),
            rec(
                "2026-11-21T03:10:12.5Z", "close", **ALICE6, opened="2026-11-21T03:10:10Z",
                closed="2026-11-21T03:10:12.5Z", duration=2.5, orig_packets=1, orig_bytes=1023,
                reply_packets=1, reply_bytes=1024,
            ),
            rec("2026-11-21T03:11:00Z", "open", **second, opened="2026-11-21T03:11:00Z"),
            rec(
                "2026-11-21T04:12:01Z", "close", **second, opened="2026-11-21T03:11:00Z",
                closed="2026-11-21T04:12:01Z", orig_packets=True, orig_bytes="many",
                reply_packets=None, reply_bytes=1258291,
            ),
        ],
    )  # fmt: skip


def test_ipv6_report_with_filters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = ipv6_log(tmp_path)
    status, out, err = run(
        capsys, log, "--masq-port", "666", "--masq-ip", "2001:DB8::2", "--remote", "[2001:db8::53]:53",
        "--proto", "udp", "--at", "2026-11-21 03:10:11Z", "--window", "1m",
    )  # fmt: skip
    assert (status, err) == (0, "")
    assert out == (
        "2 connections through [2001:db8::2]:666 (udp, remote [2001:db8::53]:53) between "
        "2026-11-21T03:09:11Z and 2026-11-21T03:11:11Z\n"
        "open at 2026-11-21T03:10:11Z: [fd00:77::10]:5353 (ident: no answer) -> [2001:db8::53]:53\n"
        "\n"
        "[fd00:77::10]:5354  ident: not logged  -> [2001:db8::53]:53  via [2001:db8::2]:666  udp\n"
        "    opened 2026-11-21T03:11:00Z  closed 2026-11-21T04:12:01Z  duration 1h01m01s  "
        "bytes out - / in 1258291 (1.2 MiB)\n"
        "    log: masq.log:5 open, masq.log:6 close\n"
        "\n"
        "[fd00:77::10]:5353  ident: no answer  -> [2001:db8::53]:53  via [2001:db8::2]:666  udp"
        "   <- open at 2026-11-21T03:10:11Z\n"
        "    opened 2026-11-21T03:10:10Z  closed 2026-11-21T03:10:12.500000Z  duration 2.5s  "
        "bytes out 1023 / in 1024 (1.0 KiB)\n"
        "    log: masq.log:2 open, masq.log:3 ident, masq.log:4 close\n"
    )


def test_remote_without_port_and_one_open_of_several(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = ipv6_log(tmp_path)
    status, out, _ = run(
        capsys, log, "--masq-port", "666", "--remote", "2001:db8::53", "--proto", "udp",
        "--at", "2026-11-21 03:12Z", "--window", "2m",
    )  # fmt: skip
    assert status == 0
    assert out.splitlines()[:2] == [
        "2 connections through *:666 (udp, remote [2001:db8::53]) between 2026-11-21T03:10:00Z and "
        "2026-11-21T03:14:00Z",
        "open at 2026-11-21T03:12:00Z: [fd00:77::10]:5354 (ident: not logged) -> [2001:db8::53]:53",
    ]
    status, out, err = run(capsys, log, "--masq-port", "666", "--proto", "tcp", "--at", "2026-11-21 03:12Z")
    assert (status, out) == (1, "")
    assert err == (
        "nattrail who: no connection through *:666 (tcp) between 2026-11-21T03:07:00Z and "
        "2026-11-21T03:17:00Z\n"
    )


def test_json_report_of_the_query(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = ipv6_log(tmp_path)
    status, out, err = run(
        capsys, log, "--masq-port", "666", "--masq-ip", "2001:db8::2", "--remote", "[2001:db8::53]:53",
        "--proto", "udp", "--at", "2026-11-21 03:10:11Z", "--window", "1m", "--json",
    )  # fmt: skip
    assert (status, err) == (0, "")
    report = json.loads(out)
    assert report["query"] == {
        "masq_port": 666,
        "masq_ip": "2001:db8::2",
        "remote_ip": "2001:db8::53",
        "remote_port": 53,
        "proto": "udp",
        "at": "2026-11-21T03:10:11Z",
        "at_given": "2026-11-21 03:10:11Z",
        "at_zone": None,
        "window_seconds": 60,
        "from": "2026-11-21T03:09:11Z",
        "to": "2026-11-21T03:11:11Z",
        "logs": [str(log)],
        "logs_start": "2026-11-21T03:00:00Z",
        "logs_end": "2026-11-21T04:12:01Z",
    }
    later, earlier = report["matches"]
    assert earlier["ident_logged"] is True and earlier["user"] is None and earlier["ident_os"] is None
    assert earlier["duration"] == 2.5 and earlier["closed"] == "2026-11-21T03:10:12.500000Z"
    assert later["ident_logged"] is False
    # Counters that are not counts are shown as unknown.
    assert [later[name] for name in COUNTER_FIELDS] == [None, None, None, 1258291]
    assert later["duration"] == 3661.0
    assert report["warnings"] == []


def test_json_of_an_unclosed_connection(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write(
        tmp_path / "masq.log",
        [rec("2026-11-21T03:10:00Z", "open", **ALICE6), rec("2026-11-21T03:11:00Z", "stop")],
    )
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:10:30Z", "--json")
    assert status == 0
    (match,) = json.loads(out)["matches"]
    assert match["opened"] is None and match["closed"] is None and match["duration"] is None
    assert match["assumed_start"] == "2026-11-21T03:10:00Z"
    assert match["assumed_end"] == "2026-11-21T03:11:00Z"
    assert match["notes"] == [
        "start unknown (its open was not logged); taken as the start of the logs, 2026-11-21T03:10:00Z",
        "no close logged; open when the logger stopped at 2026-11-21T03:11:00Z",
    ]
    assert [match[name] for name in COUNTER_FIELDS] == [None] * 4


def test_local_at_is_reported_in_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import time  # noqa: PLC0415

    monkeypatch.setenv("TZ", "IST-5:30")
    time.tzset()
    try:
        log = ipv6_log(tmp_path)
        status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 08:40:11", "--json")
    finally:
        monkeypatch.undo()
        time.tzset()
    assert status == 0
    query = json.loads(out)["query"]
    assert (query["at"], query["at_zone"]) == ("2026-11-21T03:10:11Z", "local time, UTC+05:30 (IST)")


# --- stderr and exit status ---------------------------------------------------------------------------


def test_problems_go_to_stderr_and_warnings_with_nothing_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write(
        tmp_path / "masq.log",
        [
            rec("2026-11-21T03:10:00Z", "start"),
            'garbage "masq_port":666,',
            rec("2026-11-21T03:10:30Z", "events_lost"),
            rec("2026-11-21T03:11:00Z", "stop"),
        ],
    )
    (tmp_path / "masq.log.1").write_bytes(b"\x28\xb5\x2f\xfd rest of a zstd frame")
    status, out, err = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z")
    assert (status, out) == (1, "")
    assert err.splitlines() == [
        f"nattrail who: warning: cannot read {tmp_path / 'masq.log.1'}: {tmp_path / 'masq.log.1'} is "
        "zstd-compressed, which Python cannot read; decompress it (zstd -d)",
        "nattrail who: warning: skipped 1 unparseable log line",
        "nattrail who: warning: the logger stopped at 2026-11-21T03:11:00Z and has logged nothing since",
        "nattrail who: warning: the logs start at 2026-11-21T03:10:00Z, after the window starts: older "
        "connections are not in them (rotated away?)",
        # The line before the loss is unreadable: the loss is known only by its own time.
        "nattrail who: warning: the kernel dropped connection events (masq.log:3) at 2026-11-21T03:10:30Z: "
        "connections in that time may be missing or incomplete",
        "nattrail who: no connection through *:666 (any protocol) between 2026-11-21T03:07:00Z and "
        "2026-11-21T03:17:00Z",
    ]
    # In JSON the warnings are in the report (problems last); stderr keeps the problems and the verdict.
    status, out, err = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z", "--json")
    assert status == 1
    report = json.loads(out)
    assert report["matches"] == []
    assert report["warnings"][0].startswith("the logger stopped at")
    assert report["warnings"][-1] == "skipped 1 unparseable log line"
    assert len(report["warnings"]) == 5
    assert [line.split(":")[1] for line in err.splitlines()] == [
        " warning",
        " warning",
        " no connection through *",
    ]


def test_empty_log_has_no_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "masq.log"
    log.write_text("\n\n")
    status, out, err = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z", "--json")
    assert status == 1
    report = json.loads(out)
    assert report["query"]["logs"] == [str(log)]
    assert report["query"]["logs_start"] is None and report["query"]["logs_end"] is None
    assert report["warnings"] == ["the logs hold no records"]
    status, out, err = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z")
    assert err.startswith("nattrail who: warning: the logs hold no records\n")


def test_unreadable_logs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "masq.log"
    log.write_bytes(b"\x28\xb5\x2f\xfd")
    status, out, err = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:12Z")
    assert (status, out) == (2, "")
    assert err == (
        f"nattrail who: error: no log file could be read: cannot read {log}: {log} is zstd-compressed, "
        "which Python cannot read; decompress it (zstd -d)\n"
    )
    directory = tmp_path / "a-directory"
    directory.mkdir()
    status, out, err = run(capsys, directory, "--masq-port", "666", "--at", "2026-11-21 03:12Z")
    assert status == 2
    assert err == f"nattrail who: error: no log file could be read: cannot read {directory}: Is a directory\n"


def test_main_reads_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = ipv6_log(tmp_path)
    argv = [
        "nattrail-who",
        "--masq-port",
        "666",
        "--at",
        "2026-11-21 03:10:11Z",
        "--window",
        "0",
        "--log",
        str(log),
    ]
    monkeypatch.setattr(sys, "argv", argv)
    assert command.main() == 0
    assert capsys.readouterr().out.startswith("1 connection through *:666 (any protocol) between ")


def test_default_window_and_log(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="nattrail")
    command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["who", "--masq-port", "666", "--at", "2026-11-21 03:12Z"])
    assert args.window == timedelta(minutes=5)
    assert args.log is None  # resolved at run time from the logger's settings (default_log)
    assert (args.proto, args.json, args.remote, args.masq_ip) == ("any", False, None, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["who", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for phrase in (
        "--masq-port PORT",
        "--masq-ip IP",
        "--remote IP[:PORT]",
        "--at TIME",
        "--window SPAN",
        "--log FILE",
        "{tcp,udp,icmp,any}",
        "(default: 5m)",
        "(default: the log /etc/nattrail/masqlog.json names, else /var/log/nattrail/masq.log)",
    ):
        assert phrase in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["who", "--at", "now"])
    assert "the following arguments are required: --masq-port" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["who", "--masq-port", "666"])
    assert "the following arguments are required: --at" in capsys.readouterr().err


def test_help_explains_every_option(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse  # noqa: PLC0415

    monkeypatch.setenv("COLUMNS", "100")
    parser = argparse.ArgumentParser(prog="nattrail")
    command.register(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    assert re.search(r"\n +who +who used a masquerade port at a given time\n", capsys.readouterr().out)
    with pytest.raises(SystemExit):
        command.main(["--help"])
    assert " ".join(capsys.readouterr().out.split()) == (
        "usage: nattrail who [-h] --masq-port PORT [--masq-ip IP] [--remote IP[:PORT]] "
        "[--proto {tcp,udp,icmp,any}] --at TIME [--window SPAN] [--json] [--log FILE] "
        "Find the inside host (and ident user) behind a masqueraded connection, from the masquerade "
        "logger's logs (the current file and every rotated one). "
        "options: -h, --help show this help message and exit "
        "--masq-port PORT the router's translated source port, as the remote side saw it "
        "--masq-ip IP the router's translated source address (default: any) "
        "--remote IP[:PORT] the remote host (and port) that was contacted "
        "--proto {tcp,udp,icmp,any} protocol (default: any) "
        "--at TIME 'YYYY-MM-DD HH:MM[:SS]', optionally with Z or +HH:MM (default zone: local), or 'now' "
        "--window SPAN how far around --at to look: 90, 90s, 5m, 2h, 1d (default: 5m) "
        "--json print one JSON object "
        "--log FILE current log; rotated files next to it are read too (default: the log "
        "/etc/nattrail/masqlog.json names, else /var/log/nattrail/masq.log) "
        "A time without an offset is this machine's local time zone; give a remote report's time with its "
        "offset (e.g. '2026-11-21 04:12+01:00') or in UTC with Z."
    )


def test_usage_error_names_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        command.main(["--masq-port", "0", "--at", "now"])
    err = capsys.readouterr().err
    assert err.startswith("usage: nattrail who [-h] --masq-port PORT")
    assert (
        err.splitlines()[-1] == "nattrail who: error: argument --masq-port: not a port: '0'; expected 1-65535"
    )


def test_run_uses_the_given_clock_and_prints_indented_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse  # noqa: PLC0415

    log = write(
        tmp_path / "masq.log",
        [rec("2026-11-21T03:00:00Z", "start"), rec("2026-11-21T03:10:00Z", "open", **ALICE6)],
    )
    parser = argparse.ArgumentParser(prog="nattrail")
    command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["who", "--masq-port", "666", "--at", "2026-11-21 03:10Z", "--json", "--log", str(log)]
    )
    assert command.run(args, now=datetime(2026, 11, 21, 3, 30, tzinfo=UTC)) == 0
    out = capsys.readouterr().out
    assert out.startswith('{\n  "query": {\n    "masq_port": 666,\n')
    (match,) = json.loads(out)["matches"]
    assert match["assumed_end"] == "2026-11-21T03:30:00Z"


def test_several_open_at_the_time_are_all_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    second = {**ALICE6, "ct_id": 3004, "client_port": 5354, "server_ip": "2001:db8::54"}
    log = write(
        tmp_path / "masq.log",
        [
            rec("2026-11-21T03:00:00Z", "start"),
            rec("2026-11-21T03:10:00Z", "open", **ALICE6, opened="2026-11-21T03:10:00Z"),
            rec("2026-11-21T03:10:01Z", "ident", **ALICE6, user="alice", ident_error=5, ident_os="UNIX"),
            rec("2026-11-21T03:10:02Z", "open", **second, opened="2026-11-21T03:10:02Z"),
            rec("2026-11-21T03:10:03Z", "ident", **second, user=None, ident_error="ERROR:HIDDEN-USER"),
        ],
    )
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:11Z")
    assert status == 0
    assert out.splitlines()[1] == (
        "open at 2026-11-21T03:11:00Z: [fd00:77::10]:5354 (ident ERROR:HIDDEN-USER) -> [2001:db8::54]:53; "
        "[fd00:77::10]:5353 (user alice) -> [2001:db8::53]:53"
    )
    status, out, _ = run(capsys, log, "--masq-port", "666", "--at", "2026-11-21 03:11Z", "--json")
    # An error that is not text is not shown as one.
    assert [m["ident_error"] for m in json.loads(out)["matches"]] == ["ERROR:HIDDEN-USER", None]
