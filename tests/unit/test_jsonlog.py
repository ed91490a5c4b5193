"""The shared JSON-lines logger: record shape, timestamps, files, reopen after rotation."""

from __future__ import annotations

import io
import json
import re
import stat
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from nattrail.jsonlog import EpochStamp, JsonLog, dumps_flat, utc_timestamp

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_timestamp_is_utc_with_microseconds_and_z() -> None:
    local = datetime(2024, 5, 1, 5, 12, 0, 42, tzinfo=timezone(timedelta(hours=2)))
    assert utc_timestamp(local) == "2024-05-01T03:12:00.000042Z"
    assert TS.match(utc_timestamp())


def test_record_header_comes_first_and_fields_follow() -> None:
    stream = io.StringIO()
    log = JsonLog(stream=stream, fields={"daemon": "test"}, clock=lambda: datetime(2024, 1, 2, tzinfo=UTC))
    log.warning("thing_happened", count=3, where="here")
    line = stream.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert list(record) == ["ts", "level", "event", "count", "where", "daemon"]
    assert record["ts"] == "2024-01-02T00:00:00.000000Z"
    assert record["level"] == "warning"
    assert record["event"] == "thing_happened"


def test_defaults_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    JsonLog().info("hello", n=1)
    assert json.loads(capsys.readouterr().out)["event"] == "hello"


def test_unserialisable_values_are_stringified_not_lost() -> None:
    stream = io.StringIO()
    JsonLog(stream=stream).error("boom", error=ValueError("bad"), path=Path("/x"), text="é")
    record = json.loads(stream.getvalue())
    assert record["error"] == "bad" and record["path"] == "/x" and record["text"] == "é"


def test_rejects_unknown_level_and_reserved_names() -> None:
    log = JsonLog(stream=io.StringIO())
    with pytest.raises(ValueError, match="unknown level"):
        log.log("x", "fatal")
    with pytest.raises(ValueError, match="reserved"):
        log.info("x", ts="now")
    with pytest.raises(ValueError, match="reserved"):
        JsonLog(stream=io.StringIO(), fields={"event": "x"})
    with pytest.raises(ValueError, match="not both"):
        JsonLog("/dev/null", stream=io.StringIO())


def test_min_level_filters() -> None:
    stream = io.StringIO()
    log = JsonLog(stream=stream, min_level="info")
    log.debug("quiet")
    log.info("loud")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["loud"]


def test_file_append_mode_and_permissions(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    path.write_text('{"event": "older"}\n')
    with JsonLog(path) as log:
        log.info("newer")
    assert [r["event"] for r in lines(path)] == ["older", "newer"]

    fresh = tmp_path / "fresh.log"
    with JsonLog(fresh) as log:
        log.info("x")
    assert stat.S_IMODE(fresh.stat().st_mode) & 0o007 == 0


def test_reopen_after_rotation_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    rotated = tmp_path / "app.log.1"
    log = JsonLog(path)
    log.info("before")
    path.rename(rotated)
    log.info("after_rename")  # still goes to the open descriptor, i.e. the rotated file
    log.reopen()
    log.info("after_reopen")
    log.close()
    assert [r["event"] for r in lines(rotated)] == ["before", "after_rename"]
    assert [r["event"] for r in lines(path)] == ["after_reopen"]


def test_reopen_is_a_noop_for_streams_and_closed_file_logs_fail_loudly(tmp_path: Path) -> None:
    JsonLog(stream=io.StringIO()).reopen()
    log = JsonLog(tmp_path / "a.log")
    log.close()
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.info("lost")
    with pytest.raises(ValueError, match="closed"):
        log.reopen()


def test_write_lines_writes_a_batch_of_whole_records(tmp_path: Path) -> None:
    path = tmp_path / "batch.log"
    log = JsonLog(path)
    log.write_lines([log.format("open", n=n) for n in range(3)])
    log.write_lines([])
    log.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["n"] for r in records] == [0, 1, 2]
    with pytest.raises(ValueError, match="closed"):
        log.write_lines([log.format("late")])


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text()
)


@given(st.dictionaries(st.text(), st.one_of(scalars, st.lists(scalars, max_size=3))))
def test_dumps_flat_is_json_dumps(record: dict) -> None:
    expected = json.dumps(record, default=str, ensure_ascii=False, separators=(",", ":"))
    assert dumps_flat(record) == expected


@given(st.integers(min_value=0, max_value=4_102_444_800 * 10**9))
def test_epoch_stamp_matches_utc_timestamp(ns: int) -> None:
    stamp = EpochStamp()
    moment = datetime.fromtimestamp(ns // 1000 / 1e6, UTC)
    # Twice: the second call takes the cached date-and-second part.
    assert stamp(ns) == stamp(ns) == utc_timestamp(moment.replace(microsecond=(ns // 1000) % 10**6))


@given(st.lists(st.integers(min_value=0, max_value=4_102_444_800 * 10**9), min_size=1, max_size=200))
def test_epoch_stamp_stays_right_across_many_interleaved_seconds(instants: list[int]) -> None:
    # One record may stamp a connection's start, its end and now: seconds alternate, and more
    # distinct seconds than the cache keeps must still come out right.
    stamp = EpochStamp()
    for ns in [*instants, *reversed(instants), *range(0, 200 * 10**9, 10**9)]:
        moment = datetime.fromtimestamp(ns // 10**9, UTC).replace(microsecond=(ns // 1000) % 10**6)
        assert stamp(ns) == utc_timestamp(moment)
    assert len(stamp._formats) <= EpochStamp.KEEP


@given(
    st.dictionaries(
        st.text().filter(lambda k: k not in ("ts", "level", "event", "daemon")), scalars, min_size=1
    ),
    st.sampled_from(["debug", "info", "warning", "error"]),
    st.text(),
    st.dictionaries(st.text().filter(lambda k: k not in ("ts", "level", "event")), scalars),
)
def test_line_format_gives_the_line_format_would(fields: dict, level: str, event: str, fixed: dict) -> None:
    fields = {k: v for k, v in fields.items() if k not in fixed}
    assume(fields)
    moment = datetime(2026, 11, 21, 3, 12, 0, 123456, tzinfo=UTC)
    log = JsonLog(stream=io.StringIO(), fields=fixed, clock=lambda: moment)
    body = dumps_flat(fields)[1:-1]
    assert log.line_format(event, level) % (utc_timestamp(moment), body) == log.format(event, level, **fields)


@given(
    st.integers(min_value=0, max_value=2**64),
    st.text(),
    st.dictionaries(st.text().filter(lambda k: k not in ("ts", "level", "event", "n", "s")), scalars),
)
def test_line_format_with_a_body_format_fills_it_in_the_same_operation(
    number: int, text: str, fixed: dict
) -> None:
    # Fixed fields may hold "%": only the caller's body format is left for the % operation to fill.
    moment = datetime(2026, 11, 21, 3, 12, 0, 123456, tzinfo=UTC)
    log = JsonLog(stream=io.StringIO(), fields=fixed, clock=lambda: moment)
    fmt = log.line_format("close", "info", body='"n":%d,"s":%s')
    line = fmt % (utc_timestamp(moment), number, dumps_flat({"": text})[4:-1])
    assert line == log.format("close", "info", n=number, s=text)
