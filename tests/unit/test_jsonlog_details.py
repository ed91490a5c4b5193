"""The JSON-lines logger: exact messages, every level, field precedence, escaping, descriptors and
flushing, rotation failures — beyond the main paths in test_jsonlog.py."""

from __future__ import annotations

import fcntl
import io
import json
import os
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from nattrail.jsonlog import EpochStamp, JsonLog, dumps_flat, utc_timestamp

MOMENT = datetime(2026, 11, 21, 3, 12, 0, 123456, tzinfo=UTC)
TS = "2026-11-21T03:12:00.123456Z"


def stream_log(**kwargs: object) -> tuple[JsonLog, io.StringIO]:
    stream = io.StringIO()
    return JsonLog(stream=stream, clock=lambda: MOMENT, **kwargs), stream  # type: ignore[arg-type]


def fds_of(path: Path) -> list[int]:
    """This process's descriptors open on ``path``."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        with_target = f"/proc/self/fd/{name}"
        try:
            if os.readlink(with_target) == str(path):
                found.append(int(name))
        except FileNotFoundError:
            pass
    return found


# --- the records ------------------------------------------------------------------------------------------


def test_each_level_method_writes_its_level() -> None:
    log, stream = stream_log()
    log.debug("a", n=1)
    log.info("b")
    log.warning("c")
    log.error("d", x=None)
    log.log("e")
    assert stream.getvalue().splitlines() == [
        f'{{"ts":"{TS}","level":"debug","event":"a","n":1}}',
        f'{{"ts":"{TS}","level":"info","event":"b"}}',
        f'{{"ts":"{TS}","level":"warning","event":"c"}}',
        f'{{"ts":"{TS}","level":"error","event":"d","x":null}}',
        f'{{"ts":"{TS}","level":"info","event":"e"}}',
    ]


def test_format_default_level_and_line_end() -> None:
    log, stream = stream_log(fields={"daemon": "d"})
    assert log.format("x", flag=True, ratio=0.5, off=False) == (
        f'{{"ts":"{TS}","level":"info","event":"x","flag":true,"ratio":0.5,"off":false,"daemon":"d"}}\n'
    )
    assert stream.getvalue() == ""  # format only formats


def test_caller_fields_take_precedence_over_fixed_fields() -> None:
    log, stream = stream_log(fields={"daemon": "masqlog", "host": "r1"})
    log.info("x", daemon="other")
    assert json.loads(stream.getvalue()) == {
        "ts": TS,
        "level": "info",
        "event": "x",
        "daemon": "other",
        "host": "r1",
    }


def test_min_levels_filter_below_and_keep_from() -> None:
    for min_level, kept in [
        ("debug", ["debug", "info", "warning", "error"]),
        ("info", ["info", "warning", "error"]),
        ("warning", ["warning", "error"]),
        ("error", ["error"]),
    ]:
        log, stream = stream_log(min_level=min_level)
        for level in ("debug", "info", "warning", "error"):
            log.log(level, level)
        assert [json.loads(line)["level"] for line in stream.getvalue().splitlines()] == kept


def test_filtered_records_are_still_checked() -> None:
    log, stream = stream_log(min_level="error")
    with pytest.raises(ValueError, match="reserved"):
        log.debug("x", ts="now")
    assert stream.getvalue() == ""


def test_messages() -> None:
    with pytest.raises(ValueError) as info:
        JsonLog(stream=io.StringIO(), min_level="trace")
    assert str(info.value) == "unknown level 'trace'; expected one of debug, info, warning, error"
    with pytest.raises(ValueError) as info:
        JsonLog(stream=io.StringIO(), fields={"ts": 1, "level": 2, "daemon": "x"})
    assert str(info.value) == "fixed fields may not use reserved names: level, ts"
    with pytest.raises(ValueError) as info:
        JsonLog("/dev/null", stream=io.StringIO())
    assert str(info.value) == "give a path or a stream, not both"
    log, _ = stream_log()
    with pytest.raises(ValueError) as info:
        log.format("x", "fatal")
    assert str(info.value) == "unknown level 'fatal'; expected one of debug, info, warning, error"
    with pytest.raises(ValueError) as info:
        log.format("x", ts="z")
    assert str(info.value) == "field names reserved for the record header: ts"
    with pytest.raises(ValueError) as info:
        log.line_format("x", "Info")
    assert str(info.value) == "unknown level 'Info'; expected one of debug, info, warning, error"


def test_without_a_clock_the_stamp_is_now() -> None:
    stream = io.StringIO()
    before = utc_timestamp()
    JsonLog(stream=stream).info("x")
    after = utc_timestamp()
    ts = json.loads(stream.getvalue())["ts"]
    assert before <= ts <= after  # ISO-8601 strings of one format sort like the instants


def test_utc_timestamp_of_a_naive_moment_and_now() -> None:
    aware = datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)
    assert utc_timestamp(aware) == "2024-02-29T23:59:59.999999Z"
    assert utc_timestamp(None).endswith("Z")


def test_epoch_stamp_examples() -> None:
    stamp = EpochStamp()
    assert stamp(0) == "1970-01-01T00:00:00.000000Z"
    assert stamp(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456Z"
    assert stamp(1_700_000_000_999_999_999) == "2023-11-14T22:13:20.999999Z"
    assert stamp(1_700_000_001_000_000_000) == "2023-11-14T22:13:21.000000Z"


# --- dumps_flat -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "text"),
    [
        ({}, "{}"),
        ({"a": True, "b": False, "c": None}, '{"a":true,"b":false,"c":null}'),
        ({"f": 1.5, "g": -0.0, "h": 1e300}, '{"f":1.5,"g":-0.0,"h":1e+300}'),
        ({"nan": float("nan"), "inf": float("-inf")}, '{"nan":NaN,"inf":-Infinity}'),
        ({"s": 'é"\\\n\x00'}, '{"s":"é\\"\\\\\\n\\u0000"}'),
        ({"k\n": 1}, '{"k\\n":1}'),
        ({1: "a", "b": 2}, '{"1":"a","b":2}'),
        ({None: 1}, '{"null":1}'),
        ({"l": [1, "x"]}, '{"l":[1,"x"]}'),
        ({"p": Path("/x")}, '{"p":"/x"}'),
        ({"e": ValueError("bad")}, '{"e":"bad"}'),
    ],
)
def test_dumps_flat_examples(record: dict, text: str) -> None:
    assert dumps_flat(record) == text


# --- line_format ------------------------------------------------------------------------------------------


def test_line_format_escapes_percent_in_the_fixed_parts() -> None:
    log, _ = stream_log(fields={"daemon": "100%"})
    fmt = log.line_format("50%off", "warning")
    assert fmt == '{"ts":"%s","level":"warning","event":"50%%off","n":%d,"daemon":"100%%"}\n'.replace(
        ',"n":%d', ",%s"
    )
    line = fmt % (TS, '"n":1')
    assert line == log.format("50%off", "warning", n=1)


def test_line_format_defaults_and_body_format() -> None:
    log, _ = stream_log()
    assert log.line_format("open") == '{"ts":"%s","level":"info","event":"open",%s}\n'
    assert log.line_format("close", body='"n":%d') == '{"ts":"%s","level":"info","event":"close","n":%d}\n'


# --- files ------------------------------------------------------------------------------------------------


def test_file_is_created_owner_rw_group_r(tmp_path: Path) -> None:
    path = tmp_path / "new.log"
    old = os.umask(0o022)
    try:
        log = JsonLog(str(path))
    finally:
        os.umask(old)
    assert log.path == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    log.close()


def test_path_property() -> None:
    assert JsonLog(stream=io.StringIO()).path is None


def test_descriptor_is_not_inherited_by_children(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    with JsonLog(path):
        [fd] = fds_of(path)
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
        log_after_reopen = JsonLog(path)
        log_after_reopen.reopen()
        fds = fds_of(path)
        assert len(fds) == 2
        assert all(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC for fd in fds)
        log_after_reopen.close()
    assert fds_of(path) == []


def test_reopen_closes_the_old_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    log = JsonLog(path)
    path.rename(tmp_path / "a.log.1")
    log.reopen()
    assert fds_of(tmp_path / "a.log.1") == []
    assert len(fds_of(path)) == 1
    log.close()
    assert fds_of(path) == []


def test_reopen_that_fails_keeps_logging_to_the_old_file(tmp_path: Path) -> None:
    directory = tmp_path / "logs"
    directory.mkdir()
    log = JsonLog(directory / "a.log")
    moved = tmp_path / "moved"
    directory.rename(moved)  # the log's directory is gone: the reopen cannot create the file
    with pytest.raises(FileNotFoundError):
        log.reopen()
    log.info("still_here")
    log.close()
    assert [json.loads(line)["event"] for line in (moved / "a.log").read_text().splitlines()] == [
        "still_here"
    ]


def test_closed_messages_and_no_leak(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    log = JsonLog(path)
    log.close()
    with pytest.raises(ValueError) as info:
        log.info("x")
    assert str(info.value) == f"log {path} is closed"
    with pytest.raises(ValueError) as info:
        log.write_lines(["x\n"])
    assert str(info.value) == f"log {path} is closed"
    with pytest.raises(ValueError) as info:
        log.reopen()
    assert str(info.value) == f"log {path} is closed"
    assert fds_of(path) == []  # the descriptor the failed reopen opened is closed again
    assert path.read_text() == ""


def test_context_manager_returns_the_log_and_closes_it(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    with JsonLog(path) as log:
        assert isinstance(log, JsonLog)
        log.info("x")
    assert fds_of(path) == []
    with pytest.raises(ValueError, match="closed"):
        log.info("y")


def test_write_lines_to_a_stream_and_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    log, stream = stream_log()
    log.write_lines([log.format("a"), log.format("é")])
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["a", "é"]
    out = JsonLog()
    out.write_lines(["one\n", "two\n"])
    out.write_lines([])
    assert capsys.readouterr().out == "one\ntwo\n"


def test_write_lines_to_a_file_keeps_unicode(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    with JsonLog(path) as log:
        log.write_lines(["é\n", "x" * 100_000 + "\n"])
        log.info("ü")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("é\n" + "x" * 100_000 + "\n")
    assert json.loads(text.splitlines()[2])["event"] == "ü"


def test_records_reach_a_buffered_stream_at_once(tmp_path: Path) -> None:
    # A daemon's stdout into a file or pipe is block-buffered: each record must be flushed, or a crash
    # or a reader tailing the file would miss it.
    path = tmp_path / "out.log"
    with path.open("w", encoding="utf-8") as handle:
        log = JsonLog(stream=handle)
        log.info("one")
        assert json.loads(path.read_text())["event"] == "one"
        log.write_lines(["two\n"])
        assert path.read_text().splitlines()[1] == "two"


@pytest.fixture
def far_time_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone five and a half hours from UTC."""
    monkeypatch.setenv("TZ", "IST-5:30")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("far_time_zone")
def test_timestamps_are_utc_whatever_the_local_time_zone() -> None:
    aware = datetime(2024, 5, 1, 5, 12, 0, 42, tzinfo=timezone(timedelta(hours=2)))
    assert utc_timestamp(aware) == "2024-05-01T03:12:00.000042Z"
    stamp = EpochStamp()
    before = stamp(time.time_ns())
    now = utc_timestamp()
    after = stamp(time.time_ns())
    assert before <= now <= after


def test_epoch_stamp_cache_stays_within_keep() -> None:
    stamp = EpochStamp()
    for second in range(3 * EpochStamp.KEEP):
        assert stamp(second * 10**9) == utc_timestamp(datetime.fromtimestamp(second, UTC))
        assert len(stamp._formats) <= EpochStamp.KEEP
