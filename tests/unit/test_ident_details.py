"""The ident client and limiter: exact limits, error tokens and messages, the default port and reply size,
resets after connecting — beyond the main paths in test_ident.py."""

from __future__ import annotations

import asyncio
import errno
import random
import socket
import struct
from collections.abc import Coroutine
from typing import Any

import pytest

from nattrail import ident
from nattrail.ident import IdentLimiter, IdentReply, parse_reply, query, sanitise

LOCALHOST = "127.0.0.1"
CPORT, SPORT = 6191, 23


def run(coro: Coroutine[Any, Any, Any], timeout: float = 20) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def serve_once(
    reply: bytes, host: str = LOCALHOST, port: int = 0, reset: bool = False
) -> tuple[asyncio.Server, int, list[bytes]]:
    queries: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            queries.append(await reader.readline())
            if reset:
                # SO_LINGER 0: closing sends a reset, not an orderly end of stream.
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                writer.write(reply)
                await writer.drain()
                await reader.read()
        except ConnectionError:
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(handle, host, port)
    return server, server.sockets[0].getsockname()[1], queries


async def ask(reply: bytes, reset: bool = False, **kwargs: Any) -> tuple[IdentReply, list[bytes]]:
    server, port, queries = await serve_once(reply, reset=reset)
    try:
        return await query(LOCALHOST, CPORT, SPORT, port=port, **kwargs), queries
    finally:
        server.close()
        await server.wait_closed()


# --- parsing ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"6191,23:userid:unix:alice", IdentReply("alice", None, "unix")),
        (b"6191,23: UserId :UNIX:alice", IdentReply("alice", None, "UNIX")),
        (b"6191,23:error:no-user", IdentReply(None, "ERROR:no-user")),
        (b"6191,23:USERID: :alice", IdentReply("alice", None, None)),
        (b"6191,23:USERID:,UTF-8:alice", IdentReply("alice", None, None)),
        (b"6191,23:USERID:MS DOS , CP437:bob", IdentReply("bob", None, "MS DOS")),
        (b"6191,23:USERID:UNIX,UTF-8,x:bob", IdentReply("bob", None, "UNIX")),
        (b"\t6191\t,\t23\t:USERID:UNIX:bob", IdentReply("bob", None, "UNIX")),
        (b"06191,023:USERID:UNIX:bob", IdentReply("bob", None, "UNIX")),
        (b"6191,23:ERROR", IdentReply(None, "malformed")),
        (b"6191,23:USERID:UNIX:alice:extra", IdentReply("alice:extra", None, "UNIX")),
        (b"6191,23,1:USERID:UNIX:bob", IdentReply(None, "malformed")),
        (b"006191,23:USERID:UNIX:bob", IdentReply(None, "malformed")),  # six digits: not a port
        (b"6191 23:USERID:UNIX:bob", IdentReply(None, "malformed")),
        (b"6191,23:ERROR:" + b"E" * 40, IdentReply(None, "ERROR:" + "E" * 32)),
        (b"6191,23:ERROR:INVALID-PORT:x", IdentReply(None, "ERROR:INVALID-PORT")),
    ],
)
def test_parse_reply(line: bytes, expected: IdentReply) -> None:
    assert parse_reply(line, CPORT, SPORT) == expected


def test_documented_limits() -> None:
    long_user = parse_reply(b"6191,23:USERID:" + b"O" * 40 + b":" + b"u" * 100, CPORT, SPORT)
    assert long_user == IdentReply("u" * 64, None, "O" * 32)


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("a\ud800b", "ab"),  # a lone surrogate (Cs) cannot be written as UTF-8
        ("a\x00b\x1fc\x7fd\x9fe", "abcde"),  # Cc: C0, DEL, C1
        ("a\u200eb\u2066c", "abc"),  # Cf: bidi marks and isolates
        ("x\u2028y\u2029z", "xyz"),  # Zl, Zp
        ("\x1b]0;title\x9c ok", "ok"),  # OSC ended by the C1 ST
        ("\x9d2;t\x07ok", "ok"),  # the C1 OSC ended by BEL
        ("\x1b[?25lshown", "shown"),  # CSI with a private parameter byte
        ("\x1b[ qx", "x"),  # CSI with an intermediate byte
        ("a\u00a0b c", "a\u00a0b c"),  # ordinary spaces inside stay
    ],
)
def test_sanitise_more(text: str, clean: str) -> None:
    assert sanitise(text, 64) == clean


def test_sanitise_cuts_then_strips() -> None:
    assert sanitise("  abc", 2) == "ab"
    assert sanitise("ab cd", 3) == "ab"
    assert sanitise("abc", 0) == ""


def test_failed_reply_fields() -> None:
    reply = IdentReply.failed("timeout")
    assert (reply.user, reply.error, reply.opsys) == (None, "timeout", None)
    assert IdentReply("u", None).as_fields() == {"user": "u", "ident_error": None}


# --- connect errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (ConnectionRefusedError(), "refused"),
        (OSError(errno.ECONNREFUSED, "Connection refused"), "refused"),
        (OSError(errno.EHOSTUNREACH, "whatever the text"), "unreachable: No route to host"),
        (OSError(errno.ENETUNREACH, "x"), "unreachable: Network is unreachable"),
        (OSError("Multiple exceptions: " + "x" * 200), "unreachable: Multiple exceptions: " + "x" * 59),
        (OSError(0, "zero errno\nmeans no errno"), "unreachable: [Errno 0] zero errnomeans no errno"),
        (OSError(), "unreachable"),
        (ValueError("bad\x1b[31m address "), "unreachable: bad address"),
    ],
)
def test_connect_error_tokens(exc: BaseException, error: str) -> None:
    assert ident._connect_error(exc) == error


def test_unreachable_host_with_real_sockets() -> None:
    # A source address on another family than the destination: the connect fails before any packet.
    reply = run(query(LOCALHOST, CPORT, SPORT, port=9, source="::1", timeout=5))
    assert reply.user is None
    assert reply.error is not None and reply.error.startswith("unreachable")
    assert len(reply.error) <= len("unreachable: ") + 80


# --- query over a socket ----------------------------------------------------------------------------------


def test_reset_after_connecting_is_closed_not_unreachable() -> None:
    reply, queries = run(ask(b"", reset=True))
    assert reply == IdentReply(None, "closed")
    assert queries == [b"6191, 23\r\n"]


def test_default_reply_size_is_1000_bytes_line_end_included() -> None:
    head = b"6191,23:USERID:UNIX:"
    fits = head + b"u" * (999 - len(head)) + b"\n"
    assert len(fits) == 1000
    reply, _ = run(ask(fits))
    assert reply == IdentReply("u" * 64, None, "UNIX")
    reply, _ = run(ask(head + b"u" * (1000 - len(head)) + b"\n"))
    assert reply == IdentReply(None, "oversized")


def test_tiny_max_reply_still_reads_a_line() -> None:
    reply, _ = run(ask(b"6191,23:USERID:UNIX:a\r\n", max_reply=30))
    assert reply == IdentReply("a", None, "UNIX")
    reply, _ = run(ask(b"6191,23:USERID:UNIX:a\r\n", max_reply=0))
    assert reply == IdentReply(None, "oversized")


def test_default_port_is_113() -> None:
    # A loopback address of our own on the ident port (binding port 113 needs root or the capability).
    host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"

    async def scenario() -> IdentReply:
        try:
            server, _, _ = await serve_once(b"6191,23:USERID:UNIX:root\r\n", host=host, port=113)
        except OSError as exc:
            pytest.skip(f"SKIPPED LOUDLY: cannot listen on {host}:113: {exc}")
        try:
            return await query(host, CPORT, SPORT, timeout=5)
        finally:
            server.close()
            await server.wait_closed()

    assert run(scenario()) == IdentReply("root", None, "UNIX")


# --- the limiter ------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_concurrent": 0}, "max_concurrent must be >= 1, got 0"),
        ({"per_client_rate": -1.0}, "per_client_rate must be a finite number > 0, got -1.0"),
        ({"per_client_rate": 0}, "per_client_rate must be a finite number > 0, got 0"),
        ({"per_client_burst": 0}, "per_client_burst must be >= 1, got 0"),
        ({"max_clients": -3}, "max_clients must be >= 1, got -3"),
    ],
)
def test_limiter_messages(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        IdentLimiter(**kwargs)
    assert str(info.value) == message


def test_smallest_limiter_works() -> None:
    clock = Clock()
    lim = IdentLimiter(max_concurrent=1, per_client_rate=1e-9, per_client_burst=1, max_clients=1, clock=clock)
    assert lim.try_acquire("a") is None
    assert lim.in_flight == 1
    assert lim.try_acquire("b") == "concurrency"
    lim.release()
    assert lim.in_flight == 0
    assert lim.try_acquire("b") == "rate"  # a's bucket is empty and the table holds one
    assert lim.clients == 1
    assert lim.take_skips() == {"concurrency": 1, "rate": 1}


def test_defaults() -> None:
    clock = Clock()
    lim = IdentLimiter(clock=clock)
    # Burst 10 per client ...
    assert [lim.try_acquire("10.0.0.1") for _ in range(11)] == [None] * 10 + ["rate"]
    # ... refilled at 5 a second ...
    clock.now = 50.1875  # 0.94 of a token (exact in binary floating point, like the times below)
    assert lim.try_acquire("10.0.0.1") == "rate"
    clock.now = 50.25
    assert lim.try_acquire("10.0.0.1") is None
    assert lim.try_acquire("10.0.0.1") == "rate"
    # ... and 64 in flight at once.
    results = [lim.try_acquire(f"10.1.0.{i}") for i in range(60)]
    assert results == [None] * 53 + ["concurrency"] * 7
    assert lim.in_flight == 64
    for _ in range(64):
        lim.release()
    # The table holds 4096 clients.
    assert lim.clients == 54
    for i in range(4096 - 54):
        assert lim.try_acquire(f"10.2.{i >> 8}.{i & 255}") is None
        lim.release()
    assert lim.clients == 4096
    assert lim.try_acquire("10.3.0.0") == "rate"


def test_exactly_one_token_is_enough() -> None:
    clock = Clock()
    lim = IdentLimiter(per_client_rate=4.0, per_client_burst=2, clock=clock)
    assert [lim.try_acquire("a") for _ in range(3)] == [None, None, "rate"]
    clock.now += 0.25  # exactly one token, in binary floating point too
    assert lim.try_acquire("a") is None
    assert lim.try_acquire("a") == "rate"


def test_a_bucket_refilled_exactly_to_the_burst_makes_room() -> None:
    clock = Clock()
    lim = IdentLimiter(per_client_rate=4.0, per_client_burst=2, max_clients=1, clock=clock)
    assert lim.try_acquire("a") is None
    lim.release()
    clock.now += 0.25  # full again, to the exact value
    assert lim.try_acquire("b") is None
    assert lim.clients == 1
    assert lim.try_acquire("a") == "rate"  # b's bucket has not refilled
    assert lim.clients == 1


def test_release_message() -> None:
    lim = IdentLimiter()
    with pytest.raises(RuntimeError) as info:
        lim.release()
    assert str(info.value) == "IdentLimiter.release() without a matching successful try_acquire()"
    assert lim.try_acquire("a") is None
    lim.release()
    with pytest.raises(RuntimeError):
        lim.release()
    assert lim.in_flight == 0


# --- reading the line as it trickles in -------------------------------------------------------------------


async def read_in_pieces(pieces: list[bytes], max_reply: int = 1000) -> bytes | str:
    """read_reply_line while ``pieces`` arrive one by one, each after the reader has taken the last."""
    reader = asyncio.StreamReader()
    task = asyncio.create_task(ident.read_reply_line(reader, max_reply))
    for piece in pieces:
        await asyncio.sleep(0)  # a turn of the loop, not a wait: the reader takes what is there
        await asyncio.sleep(0)
        reader.feed_data(piece)
    await asyncio.sleep(0)
    reader.feed_eof()
    return await task


@pytest.mark.parametrize(
    ("pieces", "line"),
    [
        ([b"6191,23", b":USERID", b":UNIX:a\r\n"], b"6191,23:USERID:UNIX:a"),
        ([b"abc", b"\ndef"], b"abc"),
        ([b"abc\r", b"\n"], b"abc"),
        ([b"x" * 999, b"\n"], b"x" * 999),
        ([b"x" * 999, b"y\n"], "oversized"),
        ([b"ab", b""], "closed"),
    ],
)
def test_read_reply_line_in_pieces(pieces: list[bytes], line: bytes | str) -> None:
    assert run(read_in_pieces(pieces)) == line


def test_any_exception_carrying_econnrefused_is_refused() -> None:
    odd = type("OddError", (OSError,), {})(errno.ECONNREFUSED, "refused, in other words")
    assert not isinstance(odd, ConnectionRefusedError)
    assert ident._connect_error(odd) == "refused"


def test_source_port_is_ephemeral() -> None:
    async def scenario() -> tuple[IdentReply, int]:
        ports: list[int] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            ports.append(writer.get_extra_info("peername")[1])
            await reader.readline()
            writer.write(b"6191,23:USERID:UNIX:a\r\n")
            await writer.drain()
            writer.transport.abort()

        server = await asyncio.start_server(handle, LOCALHOST, 0)
        try:
            port = server.sockets[0].getsockname()[1]
            reply = await query(LOCALHOST, CPORT, SPORT, port=port, source=LOCALHOST)
        finally:
            server.close()
            await server.wait_closed()
        return reply, ports[0]

    reply, source_port = run(scenario())
    assert reply == IdentReply("a", None, "UNIX")
    assert source_port >= 1024


def test_a_name_that_does_not_resolve_is_reported_by_its_meaning() -> None:
    """getaddrinfo's errors carry negative EAI codes, which os.strerror does not know."""
    import socket  # noqa: PLC0415

    assert ident._connect_error(socket.gaierror(-2, "Name or service not known")) == (
        "unreachable: Name or service not known"
    )
