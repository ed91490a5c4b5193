"""`nattrail who`: reading the question (--at, --window, --masq-port, --remote, --masq-ip) and the
messages a user sees when it is malformed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from who_data import NEW_YORK

from nattrail.who import command
from nattrail.who.query import At, Query, canonical_ip, parse_at, parse_port, parse_remote, parse_window

NEWFOUNDLAND = "NST3:30NDT,M3.2.0,M11.1.0"
INDIA = "IST-5:30"


# --- --at ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-21t03:12z", datetime(2026, 11, 21, 3, 12, tzinfo=UTC)),
        ("2026-11-21 03:12:07.123456Z", datetime(2026, 11, 21, 3, 12, 7, 123456, tzinfo=UTC)),
        ("2026-11-21 03:12:07.5 Z", datetime(2026, 11, 21, 3, 12, 7, 500000, tzinfo=UTC)),
        ("  2026-11-21 08:42+0530  ", datetime(2026, 11, 21, 3, 12, tzinfo=UTC)),
        ("2026-11-21 08:42 +05:30", datetime(2026, 11, 21, 3, 12, tzinfo=UTC)),
        ("2026-11-20 23:42-03:30", datetime(2026, 11, 21, 3, 12, tzinfo=UTC)),
        ("2026-11-21 03:12+00:00", datetime(2026, 11, 21, 3, 12, tzinfo=UTC)),
    ],
)
def test_at_with_an_offset_is_exact_whatever_the_local_zone(
    text: str, expected: datetime, local_zone: Callable[[str], None]
) -> None:
    local_zone(NEW_YORK)
    at = parse_at(text)
    assert at.moment == expected
    assert at.moment.utcoffset() == timedelta(0)
    assert at.given == text
    assert at.zone is None and at.warning is None


def test_at_now_is_given_now_in_utc(local_zone: Callable[[str], None]) -> None:
    local_zone(NEW_YORK)
    now = datetime(2026, 11, 21, 4, 12, tzinfo=UTC).astimezone()
    at = parse_at(" NOW ", now=now)
    assert at == At(moment=datetime(2026, 11, 21, 4, 12, tzinfo=UTC), given=" NOW ")
    assert at.moment.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("zone", "text", "moment", "read_as"),
    [
        (NEW_YORK, "2026-07-01 12:00", datetime(2026, 7, 1, 16, 0, tzinfo=UTC), "UTC-04:00 (EDT)"),
        (NEWFOUNDLAND, "2026-11-21 00:00", datetime(2026, 11, 21, 3, 30, tzinfo=UTC), "UTC-03:30 (NST)"),
        (INDIA, "2026-11-21 08:42:30", datetime(2026, 11, 21, 3, 12, 30, tzinfo=UTC), "UTC+05:30 (IST)"),
        ("UTC0", "2026-11-21 03:12", datetime(2026, 11, 21, 3, 12, tzinfo=UTC), "UTC+00:00 (UTC)"),
    ],
)
def test_at_without_offset_is_local_and_says_which_zone(
    zone: str, text: str, moment: datetime, read_as: str, local_zone: Callable[[str], None]
) -> None:
    local_zone(zone)
    at = parse_at(text)
    assert at.moment == moment
    assert at.moment.utcoffset() == timedelta(0)
    assert at.zone == f"local time, {read_as}"
    assert at.warning is None


def test_ambiguous_local_time_warning_names_both_readings(local_zone: Callable[[str], None]) -> None:
    local_zone(NEW_YORK)
    at = parse_at("2026-11-01 01:30")
    assert at.zone == "local time, UTC-04:00 (EDT)"  # the reading used
    assert at.warning == (
        "--at '2026-11-01 01:30' is ambiguous or skipped in the local time zone (daylight saving change); "
        "used 2026-11-01T05:30:00Z, the other reading is 2026-11-01T06:30:00Z; give an offset to choose"
    )
    # 02:30 on 8 March does not exist (clocks jump from 02:00 to 03:00): both readings are named.
    skipped = parse_at("2026-03-08 02:30")
    assert skipped.moment == datetime(2026, 3, 8, 6, 30, tzinfo=UTC)
    assert skipped.warning is not None
    assert "used 2026-03-08T06:30:00Z, the other reading is 2026-03-08T07:30:00Z" in skipped.warning


def test_ambiguous_at_warns_with_the_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], local_zone: Callable[[str], None]
) -> None:
    local_zone(NEW_YORK)
    log = tmp_path / "masq.log"
    log.write_text('{"ts":"2026-11-01T05:00:00Z","level":"info","event":"start"}\n')
    status = command.main(["--masq-port", "666", "--at", "2026-11-01 01:30", "--log", str(log)])
    err = capsys.readouterr().err
    assert status == 1
    assert (
        "nattrail who: warning: --at '2026-11-01 01:30' is ambiguous or skipped in the local time zone" in err
    )


@pytest.mark.parametrize(
    "text",
    ["yesterday", "2026-11-21", "03:12", "2026-11-21 3:12", "2026-11-21 03:12 UTC", "x2026-11-21 03:12"],
)
def test_at_that_is_not_a_time(text: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_at(text)
    assert str(error.value) == (
        f"not a time: {text!r}; use 'YYYY-MM-DD HH:MM[:SS]' (optionally with Z or +HH:MM)"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("2026-02-30 03:12Z", "day is out of range for month"),
        ("2026-11-21 25:12", "hour must be in 0..23"),
        ("2026-11-21 03:12+25:00", "offset must be a timedelta strictly between"),
    ],
)
def test_at_that_is_not_a_valid_time(text: str, reason: str, local_zone: Callable[[str], None]) -> None:
    local_zone("UTC0")
    with pytest.raises(ValueError) as error:
        parse_at(text)
    assert str(error.value).startswith(f"not a valid time: {text!r} (")
    assert reason in str(error.value)


def test_at_beyond_the_calendar_is_not_a_valid_time(local_zone: Callable[[str], None]) -> None:
    local_zone(INDIA)  # UTC+05:30: midnight of year 1 is before the first UTC moment Python knows
    with pytest.raises(ValueError, match=r"^not a valid time: '0001-01-01 00:00' \("):
        parse_at("0001-01-01 00:00")
    with pytest.raises(ValueError, match=r"^not a valid time: '0001-01-01 00:00\+05:30' \("):
        parse_at("0001-01-01 00:00+05:30")


# --- --window -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5M", 300), (" 2 h ", 7200), ("1D", 86400), ("3660d", 3660 * 86400), ("45S", 45), ("7", 7)],
)
def test_window_units_any_case_and_spacing(text: str, seconds: int) -> None:
    assert parse_window(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["3661d", "316224001", "87841h"])
def test_window_too_large(text: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_window(text)
    assert str(error.value) == f"window {text!r} is too large (at most 3660d)"


def test_window_overflowing_a_timedelta_is_too_large() -> None:
    with pytest.raises(ValueError) as error:
        parse_window("99999999999999999999d")
    assert str(error.value) == "window '99999999999999999999d' is too large (at most 3660d)"


@pytest.mark.parametrize("text", ["5x", "m", "-5m", "5mm"])
def test_window_that_is_not_one(text: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_window(text)
    assert str(error.value) == f"not a window: {text!r}; use seconds (90) or 90s, 5m, 2h, 1d"


def test_window_at_the_edge_of_time_clamps_instead_of_failing() -> None:
    late = At(datetime(9999, 12, 31, 23, 0, tzinfo=UTC), "9999-12-31 23:00Z")
    query = Query(masq_port=666, at=late, window=timedelta(hours=2))
    assert query.end == datetime.max.replace(tzinfo=UTC)
    assert query.start == datetime(9999, 12, 31, 21, 0, tzinfo=UTC)
    early = At(datetime(1, 1, 1, 1, 0, tzinfo=UTC), "0001-01-01 01:00Z")
    query = Query(masq_port=666, at=early, window=timedelta(hours=2))
    assert query.start == datetime.min.replace(tzinfo=UTC)
    assert query.end == datetime(1, 1, 1, 3, 0, tzinfo=UTC)
    # Both ends stay comparable with the logs' times.
    assert query.start < datetime(2026, 11, 21, tzinfo=UTC) < datetime.max.replace(tzinfo=UTC)


# --- ports and addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "port"), [("1", 1), ("65535", 65535), (" 666 ", 666), ("0666", 666)])
def test_port_range(text: str, port: int) -> None:
    assert parse_port(text) == port


@pytest.mark.parametrize("text", ["0", "65536", "-1", "+1", "", "ssh", "6 66"])
def test_not_a_port(text: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_port(text)
    assert str(error.value) == f"not a port: {text!r}; expected 1-65535"


def test_remote_forms() -> None:
    assert parse_remote(" [2001:DB8::1] ") == ("2001:db8::1", None)
    assert parse_remote("[2001:db8::1]:65535") == ("2001:db8::1", 65535)
    assert parse_remote("[203.0.113.10]:1") == ("203.0.113.10", 1)
    assert parse_remote(" 203.0.113.10:443 ") == ("203.0.113.10", 443)
    assert parse_remote("::ffff:203.0.113.10") == ("::ffff:cb00:710a", None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[2001:db8::1", "not IP[:PORT]: '[2001:db8::1'; write IPv6 with a port as [2001:db8::1]:443"),
        (
            "[2001:db8::1]443",
            "not IP[:PORT]: '[2001:db8::1]443'; write IPv6 with a port as [2001:db8::1]:443",
        ),
        (
            "[2001:db8::1]]:443",
            "not IP[:PORT]: '[2001:db8::1]]:443'; write IPv6 with a port as [2001:db8::1]:443",
        ),
        ("[2001:db8::1]:", "not a port: ''; expected 1-65535"),
        ("[2001:db8::1]:0", "not a port: '0'; expected 1-65535"),
        ("203.0.113.10:", "not a port: ''; expected 1-65535"),
        ("host:22", "not an IP address: 'host'"),
        ("[host]:22", "not an IP address: 'host'"),
        ("2001:db8::1:443x", "not an IP address: '2001:db8::1:443x'"),
    ],
)
def test_remote_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_remote(text)
    assert str(error.value) == message


def test_masq_ip_is_canonical() -> None:
    assert canonical_ip(" 2001:DB8:0::2 ") == "2001:db8::2"
    with pytest.raises(ValueError) as error:
        canonical_ip("203.0.113")
    assert str(error.value) == "not an IP address: '203.0.113'"
