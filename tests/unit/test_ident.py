"""The RFC 1413 ident client against a fake identd on 127.0.0.1, and the ident limiter with a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nattrail.ident import (
    TOKEN_MAX,
    USER_MAX,
    IdentLimiter,
    IdentReply,
    parse_reply,
    query,
    read_reply_line,
    sanitise,
)

LOCALHOST = "127.0.0.1"
CPORT, SPORT = 6191, 23  # the example ports of RFC 1413
QUERY = b"6191, 23\r\n"
UNSAFE = {"Cc", "Cf", "Cs", "Zl", "Zp"}

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(coro: Coroutine[Any, Any, Any], timeout: float = 20) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@dataclass
class FakeIdentd:
    port: int = 0
    queries: list[bytes] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def identd(handler: Handler) -> AsyncIterator[FakeIdentd]:
    """A fake identd on an ephemeral port: records each query line and peer, then runs ``handler``."""
    state = FakeIdentd()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.peers.append(writer.get_extra_info("peername")[0])
        try:
            state.queries.append(await reader.readline())
            await handler(reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(serve, LOCALHOST, 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


def answer(data: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        # Stay until the client hangs up, as a real identd waiting for the next query would.
        await reader.read()

    return handler


async def ask(handler: Handler, **kwargs: Any) -> tuple[IdentReply, FakeIdentd]:
    async with identd(handler) as fake:
        reply = await query(LOCALHOST, CPORT, SPORT, port=fake.port, **kwargs)
    return reply, fake


# --- replies over a real socket --------------------------------------------------------------------------

ALICE = IdentReply(user="alice", error=None, opsys="UNIX")
HOSTILE_USER = (
    b"\x1b[31ma\x00l\tice\x1b[0m"  # ANSI colour, NUL, TAB
    b"\xe2\x80\xa8\xe2\x80\xa9\xc2\x85"  # U+2028, U+2029, U+0085 (C1 NEL)
    b"\xe2\x80\xae\xe2\x80\x8b"  # U+202E right-to-left override, U+200B zero-width space
    b"\x1b]0;pwned\x07\x7f\x0b\x0c\rx"  # OSC window title, DEL, VT, FF, bare CR
)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"6191 , 23 : USERID : UNIX : alice\r\n", ALICE, id="good"),
        pytest.param(b"6191 , 23 : USERID : UNIX , UTF-8 : alice\r\n", ALICE, id="charset"),
        pytest.param(b"6191,23:USERID:UNIX:alice\n", ALICE, id="bare-lf-no-spaces"),
        pytest.param(
            b"6191 , 23 : USERID : UNIX :  al:ice::x: \r\n",
            IdentReply(user="al:ice::x:", error=None, opsys="UNIX"),
            id="user-with-colons",
        ),
        pytest.param(
            b"6191 , 23 : USERID : OTHER : 4a1f9c\r\n",
            IdentReply(user="4a1f9c", error=None, opsys="OTHER"),
            id="opsys-other",
        ),
        pytest.param(b"6191 , 23 : ERROR : NO-USER\r\n", IdentReply(None, "ERROR:NO-USER"), id="error"),
        pytest.param(b"6191 , 23 : ERROR :\r\n", IdentReply(None, "malformed"), id="error-without-token"),
        pytest.param(b"hello, I am not an identd\r\n", IdentReply(None, "malformed"), id="garbage"),
        pytest.param(b"\r\n", IdentReply(None, "malformed"), id="empty-line"),
        pytest.param(b"6191 , 23 : USERID : UNIX\r\n", IdentReply(None, "malformed"), id="no-user-field"),
        pytest.param(b"6191 , 23 : WHOAMI : x : y\r\n", IdentReply(None, "malformed"), id="unknown-type"),
        pytest.param(b"61x1 , 23 : USERID : UNIX : a\r\n", IdentReply(None, "malformed"), id="bad-port"),
        pytest.param(
            b"6191 , 23 : USERID : UNIX :  \t \r\n",
            IdentReply(None, "malformed", opsys="UNIX"),
            id="empty-user",
        ),
        pytest.param(
            b"6191 , 23 : USERID : UNIX : \x1b[0m\x00\xe2\x80\xa8\r\n",
            IdentReply(None, "malformed", opsys="UNIX"),
            id="user-only-controls",
        ),
        pytest.param(b"6192 , 23 : USERID : UNIX : alice\r\n", IdentReply(None, "mismatch"), id="mismatch"),
        pytest.param(b"23 , 6191 : USERID : UNIX : alice\r\n", IdentReply(None, "mismatch"), id="swapped"),
        pytest.param(b"6191 , 24 : ERROR : NO-USER\r\n", IdentReply(None, "mismatch"), id="mismatch-error"),
        pytest.param(
            b"6191 , 23 : USERID : UNIX : " + HOSTILE_USER + b"\r\n",
            IdentReply(user="alicex", error=None, opsys="UNIX"),
            id="control-characters",
        ),
        pytest.param(
            b"6191 , 23 : USERID : UNIX : al\xff\xfeice\xc3\r\n",
            IdentReply(user="al\ufffd\ufffdice\ufffd", error=None, opsys="UNIX"),
            id="invalid-utf8",
        ),
        pytest.param(
            b"6191 , 23 : USERID : UNIX : " + b"u" * 500 + b"\r\n",
            IdentReply(user="u" * USER_MAX, error=None, opsys="UNIX"),
            id="long-user",
        ),
        pytest.param(
            b"6191 , 23 : USERID : " + b"\x1bO" * 40 + b" : alice\r\n",
            IdentReply(user="alice", error=None, opsys="O" * TOKEN_MAX),
            id="long-opsys",
        ),
        pytest.param(
            b"6191 , 23 : ERROR : NO-USER\xe2\x80\xa8\n" + b"X" * 100 + b"\r\n",
            IdentReply(None, "ERROR:NO-USER"),
            id="error-then-more",
        ),
        pytest.param(
            b"6191 , 23 : ERROR : " + b"E" * 100 + b"\r\n",
            IdentReply(None, "ERROR:" + "E" * TOKEN_MAX),
            id="long-error-token",
        ),
    ],
)
def test_reply(data: bytes, expected: IdentReply) -> None:
    reply, fake = run(ask(answer(data)))
    assert reply == expected
    assert fake.queries == [QUERY]
    assert fake.peers == [LOCALHOST]
    record = json.dumps(reply.as_fields())
    assert "\n" not in record
    assert json.loads(record) == reply.as_fields()
    for text in (reply.user, reply.error, reply.opsys):
        assert text is None or not {unicodedata.category(ch) for ch in text} & UNSAFE


def test_hostile_user_is_one_clean_json_line() -> None:
    reply, _ = run(ask(answer(b"6191,23:USERID:UNIX:\x1b[2J\x00root\xe2\x80\xa8\r\nevil\n")))
    line = json.dumps(reply.as_fields(), ensure_ascii=False)
    assert line == '{"user": "root", "ident_error": null, "ident_os": "UNIX"}'


def test_as_fields() -> None:
    assert ALICE.as_fields() == {"user": "alice", "ident_error": None, "ident_os": "UNIX"}
    assert IdentReply(None, "timeout").as_fields() == {"user": None, "ident_error": "timeout"}


# --- transport failures ---------------------------------------------------------------------------------


def test_oversized_reply_stops_reading_although_the_server_keeps_sending() -> None:
    stopped = asyncio.Event()
    sent: list[int] = []

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sent.append(0)
        try:
            while True:
                writer.write(b"A" * 10240)
                await writer.drain()
                sent[0] += 10240
        except ConnectionError:
            stopped.set()

    async def scenario() -> None:
        async with identd(flood) as fake:
            # A reader that went on reading would hit the (long) deadline and say "timeout" instead.
            reply = await query(LOCALHOST, CPORT, SPORT, port=fake.port, timeout=15)
            assert reply == IdentReply(None, "oversized")
            # The client hung up: the flood ends with a reset, not with the test's deadline.
            await stopped.wait()
        assert fake.queries == [QUERY]

    run(scenario())
    assert sent[0] >= 10240


def test_oversized_reply_does_not_wait_for_more() -> None:
    # 10 KB without a line end, then silence: the answer comes from the size limit, not from a timeout.
    reply, _ = run(ask(answer(b"B" * 10240), timeout=15))
    assert reply == IdentReply(None, "oversized")


def test_reader_takes_at_most_max_reply_bytes() -> None:
    async def scenario() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(b"C" * 10240)
        assert await read_reply_line(reader, 1000) == "oversized"
        reader.feed_eof()
        assert len(await reader.read()) == 10240 - 1000

    run(scenario())


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"abc\r\ndef\n", b"abc"),
        (b"abc\ndef\n", b"abc"),
        (b"a\rb\r\r\n", b"a\rb\r"),
        (b"x" * 999 + b"\n", b"x" * 999),  # exactly max_reply bytes, line end included
    ],
)
def test_read_reply_line(data: bytes, line: bytes) -> None:
    async def scenario() -> bytes | str:
        reader = asyncio.StreamReader()
        for byte in data:  # one byte at a time: the line end may arrive in any chunk
            reader.feed_data(bytes([byte]))
        reader.feed_eof()
        return await read_reply_line(reader, 1000)

    assert run(scenario()) == line


def test_read_reply_line_one_byte_too_many() -> None:
    async def scenario() -> bytes | str:
        reader = asyncio.StreamReader()
        reader.feed_data(b"x" * 1000 + b"\n")
        return await read_reply_line(reader, 1000)

    assert run(scenario()) == "oversized"


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()


def test_timeout_when_the_server_never_answers() -> None:
    reply, fake = run(ask(never_answer, timeout=0.3))
    assert reply == IdentReply(None, "timeout")
    assert fake.queries == [QUERY]


def test_one_deadline_for_the_whole_exchange() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Always something new before any per-read timeout could fire; never a line end.
        while True:
            writer.write(b"6")
            await writer.drain()
            await asyncio.sleep(0.02)

    reply, _ = run(ask(trickle, timeout=0.3, max_reply=100_000))
    assert reply == IdentReply(None, "timeout")


def test_refused() -> None:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))  # bound, never listening: the port stays ours and closed
        port = sock.getsockname()[1]
        reply = run(query(LOCALHOST, CPORT, SPORT, port=port, timeout=5))
    assert reply == IdentReply(None, "refused")


@pytest.mark.parametrize("data", [b"", b"6191 , 23 : USERID : UNIX : ali"], ids=["silent", "half-line"])
def test_server_closes_without_a_full_line(data: bytes) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        writer.close()

    reply, fake = run(ask(hang_up))
    assert reply == IdentReply(None, "closed")
    assert fake.queries == [QUERY]


def test_source_address_is_used() -> None:
    reply, fake = run(ask(answer(b"6191 , 23 : USERID : UNIX : alice\r\n"), source="127.0.0.2"))
    assert reply == ALICE
    assert fake.peers == ["127.0.0.2"]


def test_source_address_not_ours_is_unreachable() -> None:
    # TEST-NET-2 is on no interface here: bind() fails with EADDRNOTAVAIL and no packet leaves.
    reply, fake = run(ask(never_answer, source="198.51.100.7"))
    assert reply.user is None
    assert reply.error is not None
    assert reply.error == "unreachable: Cannot assign requested address"
    assert fake.queries == []


def test_cancellation_propagates() -> None:
    async def scenario() -> None:
        asked = asyncio.Event()

        async def wait(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            asked.set()
            await reader.read()

        async with identd(wait) as fake:
            task = asyncio.create_task(query(LOCALHOST, CPORT, SPORT, port=fake.port, timeout=15))
            await asked.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    run(scenario())


# --- parsing and sanitising without sockets --------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.text(max_size=100))
def test_any_reply_parses_to_safe_strings(noise: bytes, text: str) -> None:
    for line in (noise, b"6191 , 23 : USERID : UNIX : " + noise, f"6191,23:ERROR:{text}".encode()):
        reply = parse_reply(line, CPORT, SPORT)
        assert (reply.user is None) != (reply.error is None)
        assert reply.user is None or 0 < len(reply.user) <= USER_MAX
        assert reply.opsys is None or len(reply.opsys) <= TOKEN_MAX
        for value in (reply.user, reply.error, reply.opsys):
            assert value is None or not {unicodedata.category(ch) for ch in value} & UNSAFE
        record = json.dumps(reply.as_fields(), ensure_ascii=False)
        assert len(record.splitlines()) == 1


@pytest.mark.parametrize(
    ("text", "limit", "clean"),
    [
        ("  alice  ", 64, "alice"),
        ("\x1b[1;31mred\x1b[0m", 64, "red"),
        ("\x9b31mred", 64, "red"),  # the C1 CSI
        ("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", 64, "link"),  # OSC hyperlink, ST-terminated
        ("a\u2028b\u2029c\x85d\u200de\ufeff", 64, "abcde"),
        ("abc  def", 5, "abc"),  # the cut leaves no trailing space
    ],
)
def test_sanitise(text: str, limit: int, clean: str) -> None:
    assert sanitise(text, limit) == clean


# --- the limiter ----------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(**kwargs: Any) -> tuple[IdentLimiter, FakeClock]:
    clock = FakeClock()
    return IdentLimiter(clock=clock, **kwargs), clock


def take(lim: IdentLimiter, client: str) -> str | None:
    """One whole query: acquire and, if allowed, release at once."""
    reason = lim.try_acquire(client)
    if reason is None:
        lim.release()
    return reason


def test_concurrency_cap() -> None:
    lim, _ = limiter(max_concurrent=3)
    assert [lim.try_acquire(f"10.0.0.{i}") for i in range(3)] == [None, None, None]
    assert lim.in_flight == 3
    assert lim.try_acquire("10.0.0.9") == "concurrency"
    assert lim.try_acquire("10.0.0.0") == "concurrency"
    lim.release()
    assert lim.in_flight == 2
    assert lim.try_acquire("10.0.0.9") is None
    assert lim.in_flight == 3
    assert lim.take_skips() == {"concurrency": 2, "rate": 0}


def test_concurrency_skip_takes_no_token() -> None:
    lim, _ = limiter(max_concurrent=1, per_client_burst=3)
    assert lim.try_acquire("10.0.0.1") is None
    assert [lim.try_acquire("10.0.0.2") for _ in range(20)] == ["concurrency"] * 20
    lim.release()
    assert [take(lim, "10.0.0.2") for _ in range(4)] == [None, None, None, "rate"]


def test_rate_per_client_with_refill() -> None:
    lim, clock = limiter(per_client_rate=5.0, per_client_burst=10)
    assert [take(lim, "10.0.0.1") for _ in range(10)] == [None] * 10
    assert take(lim, "10.0.0.1") == "rate"
    clock.now += 0.1  # half a token
    assert take(lim, "10.0.0.1") == "rate"
    clock.now += 0.1  # one token
    assert take(lim, "10.0.0.1") is None
    assert take(lim, "10.0.0.1") == "rate"
    clock.now += 3600  # refills to the burst, not beyond
    assert [take(lim, "10.0.0.1") for _ in range(11)] == [None] * 10 + ["rate"]
    assert lim.take_skips() == {"concurrency": 0, "rate": 4}


def test_clients_are_independent() -> None:
    lim, _ = limiter(per_client_rate=1.0, per_client_burst=2)
    assert [take(lim, "10.0.0.1") for _ in range(3)] == [None, None, "rate"]
    assert [take(lim, "10.0.0.2") for _ in range(3)] == [None, None, "rate"]
    assert take(lim, "10.0.0.1") == "rate"


def test_clock_stepping_back_mints_no_tokens() -> None:
    lim, clock = limiter(per_client_rate=1.0, per_client_burst=1)
    assert take(lim, "10.0.0.1") is None
    clock.now -= 100
    assert take(lim, "10.0.0.1") == "rate"


def test_table_stays_bounded_under_a_flood_of_sources() -> None:
    lim, clock = limiter(max_clients=4096, per_client_rate=5.0, per_client_burst=10)
    results = []
    for i in range(100_000):
        results.append(take(lim, f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"))
        assert lim.clients <= 4096
    # The first 4096 get a bucket; with no time passing, none has refilled, so nobody else fits.
    assert results[:4096] == [None] * 4096
    assert set(results[4096:]) == {"rate"}
    assert lim.take_skips() == {"concurrency": 0, "rate": 100_000 - 4096}
    # Clients already in the table keep working meanwhile.
    assert take(lim, "10.0.0.0") is None
    # Once buckets have refilled (burst / rate seconds), they make room for newcomers.
    clock.now += 2.0
    assert take(lim, "172.16.0.1") is None
    assert lim.clients <= 4096


def test_table_bounded_and_serving_when_sources_churn() -> None:
    lim, clock = limiter(max_clients=4096, per_client_rate=5.0, per_client_burst=10)
    for i in range(100_000):
        clock.now += 0.001  # 1000 new sources a second: buckets refill (2 s) before the table fills (4 s)
        assert take(lim, f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}") is None
        assert lim.clients <= 4096
    assert lim.take_skips() == {"concurrency": 0, "rate": 0}


def test_eviction_keeps_buckets_that_have_not_refilled() -> None:
    lim, clock = limiter(max_clients=2, per_client_rate=1.0, per_client_burst=2)
    assert [take(lim, "10.0.0.1") for _ in range(3)] == [None, None, "rate"]
    assert take(lim, "10.0.0.2") is None
    assert take(lim, "10.0.0.3") == "rate"  # table full of buckets still in use
    assert lim.clients == 2
    assert take(lim, "10.0.0.1") == "rate"  # its empty bucket was not forgotten
    clock.now += 2.0
    assert take(lim, "10.0.0.3") is None
    assert lim.clients == 2


def test_eviction_takes_refilled_buckets_behind_busy_ones() -> None:
    lim, clock = limiter(max_clients=2, per_client_rate=5.0, per_client_burst=10)
    assert take(lim, "10.0.0.1") is None  # oldest in the table...
    assert take(lim, "10.0.0.2") is None
    clock.now += 1.9
    assert [take(lim, "10.0.0.1") for _ in range(10)] == [None] * 10  # ...until it is busy again
    clock.now += 0.2  # 10.0.0.2 has refilled, 10.0.0.1 has one token of ten
    assert take(lim, "10.0.0.3") is None
    assert take(lim, "10.0.0.1") is None
    assert take(lim, "10.0.0.1") == "rate"  # the busy client kept its bucket
    assert lim.clients == 2


def test_take_skips_resets() -> None:
    lim, _ = limiter(max_concurrent=1, per_client_burst=1)
    assert lim.take_skips() == {"concurrency": 0, "rate": 0}
    assert lim.try_acquire("10.0.0.1") is None
    assert lim.try_acquire("10.0.0.2") == "concurrency"
    assert lim.try_acquire("10.0.0.1") == "rate"
    assert lim.try_acquire("10.0.0.1") == "rate"
    assert lim.take_skips() == {"concurrency": 1, "rate": 2}
    assert lim.take_skips() == {"concurrency": 0, "rate": 0}


def test_release_without_acquire_is_an_error() -> None:
    lim, _ = limiter()
    with pytest.raises(RuntimeError, match="release"):
        lim.release()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_concurrent": 0},
        {"per_client_rate": 0.0},
        {"per_client_rate": float("nan")},
        {"per_client_rate": float("inf")},
        {"per_client_burst": 0},
        {"max_clients": 0},
    ],
)
def test_limiter_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        IdentLimiter(**kwargs)
