"""`nattrail redirect`: SOCKS5 negotiation, relaying, limits and guards, against a tiny real SOCKS5 server.

All traffic stays on 127.0.0.0/8. The destination lookup is injected (it needs a real NAT redirect);
the real SO_ORIGINAL_DST path is exercised end to end inside a private network namespace, where this
file also serves as the driver script (run as ``python test_redirect.py --netns-driver``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from conftest import netns_driver_report, refuse_outside_private_netns
from hypothesis import given
from hypothesis import strategies as st

from nattrail import socks5
from nattrail.jsonlog import JsonLog
from nattrail.redirect import (
    Address,
    Config,
    ConfigError,
    Redirector,
    _reset,
    build_config,
    load_config_file,
    original_dst,
    parse_sockaddr_in,
)

LOCALHOST = "127.0.0.1"
SRC = Path(socks5.__file__).resolve().parents[1]
TRAILER = b"|echo-saw-eof"


def run(coro: Coroutine[Any, Any, None], timeout: float = 20) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except ConnectionError:
        writer.transport.abort()  # pass a reset on, as a real proxy would


# --- a real echo server and a tiny real SOCKS5 server -------------------------------------------------


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo until EOF, then send a trailer: proves the reverse direction survives a half-close."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write(TRAILER)
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@dataclass
class FakeSocks:
    """RFC 1928/1929 server with scripted misbehaviour; records what the client asked for."""

    credentials: tuple[str, str] | None = None
    reply_code: int = 0
    script: str = "normal"
    connect_to: Address | None = None  # where to really connect (the netns driver must avoid a loop)
    requests: list[Address] = field(default_factory=list)
    methods: list[bytes] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None

    @property
    def address(self) -> Address:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, LOCALHOST, 0)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _version, count = await reader.readexactly(2)
        methods = await reader.readexactly(count)
        self.methods.append(methods)
        if self.script == "close_after_greeting":
            return
        if self.script == "silent":
            await asyncio.sleep(3600)
        if self.script == "bad_method_version":
            writer.write(b"\x04\x00")
            return
        if self.script == "unoffered_method":
            writer.write(b"\x05\x01")  # GSSAPI, never offered
            return
        if self.credentials is not None:
            if socks5.METHOD_USERPASS not in methods:
                writer.write(b"\x05\xff")
                return
            writer.write(b"\x05\x02")
            _auth_version, ulen = await reader.readexactly(2)
            user = (await reader.readexactly(ulen)).decode()
            (plen,) = await reader.readexactly(1)
            password = (await reader.readexactly(plen)).decode()
            self.logins.append((user, password))
            if (user, password) != self.credentials:
                writer.write(b"\x01\x01")
                return
            writer.write(b"\x01\x00")
        else:
            writer.write(b"\x05\x00")
        _ver, cmd, _rsv, atyp = await reader.readexactly(4)
        assert (cmd, atyp) == (socks5.CMD_CONNECT, socks5.ATYP_IPV4)
        host = socket.inet_ntoa(await reader.readexactly(4))
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        self.requests.append((host, port))
        await self._reply(reader, writer, (host, port))

    async def _reply(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, destination: Address
    ) -> None:
        bound = socket.inet_aton("127.0.0.9") + struct.pack("!H", 4242)
        if self.reply_code != 0:
            writer.write(bytes([5, self.reply_code, 0, 1]) + bound)
            return
        scripted = {
            "bad_reply_version": b"\x04\x00\x00\x01" + bound,
            "bad_atyp": b"\x05\x00\x00\x09" + bound,
            "close_mid_reply": b"\x05\x00\x00",
        }
        if self.script in scripted:
            writer.write(scripted[self.script])
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*(self.connect_to or destination))
        except OSError:
            writer.write(b"\x05\x05\x00\x01" + bound)
            return
        if self.script == "bound_domain":
            writer.write(b"\x05\x00\x00\x03" + bytes([9]) + b"proxy.lan" + struct.pack("!H", 1080))
        elif self.script == "bound_ipv6":
            writer.write(b"\x05\x00\x00\x04" + socket.inet_pton(socket.AF_INET6, "::1") + b"\x04\x38")
        else:
            writer.write(b"\x05\x00\x00\x01" + bound)
        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            up_writer.close()


@dataclass
class Lab:
    echo: Address
    socks: FakeSocks
    redirector: Redirector
    stream: io.StringIO

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        records = [json.loads(line) for line in self.stream.getvalue().splitlines()]
        return [r for r in records if name is None or r["event"] == name]

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(*self.redirector.address)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; log so far: {self.events()}"
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def lab(
    proxy: FakeSocks | None = None,
    lookup: Callable[[Address], Callable[[Any], Address]] | None = None,
    **overrides: Any,
) -> AsyncIterator[Lab]:
    """Echo server + SOCKS server + redirector; ``lookup(echo_address)`` builds the destination lookup."""
    echo_server = await asyncio.start_server(echo_handler, LOCALHOST, 0)
    echo = echo_server.sockets[0].getsockname()[:2]
    socks = proxy or FakeSocks()
    await socks.start()
    config = replace(Config(listen=(LOCALHOST, 0), socks=socks.address, stats_interval=0), **overrides)
    stream = io.StringIO()
    finder = lookup(echo) if lookup else (lambda _sock: echo)
    redirector = Redirector(config, JsonLog(stream=stream), finder)
    await redirector.start()
    try:
        yield Lab(echo=echo, socks=socks, redirector=redirector, stream=stream)
    finally:
        await redirector.stop()
        assert socks.server is not None
        socks.server.close()
        echo_server.close()


async def read_all(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while data := await reader.read(65536):
        chunks.append(data)
    return b"".join(chunks)


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 5) == b""
    except ConnectionResetError:
        return True


async def assert_refused(
    connecting: Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
) -> None:
    """The daemon resets refused clients at once; the RST may even beat connect() to the check."""
    try:
        reader, writer = await connecting
    except ConnectionResetError:
        return
    try:
        assert await closed_by_peer(reader)
    finally:
        writer.close()


async def round_trip(lab: Lab, payload: bytes) -> bytes:
    reader, writer = await lab.connect()
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    data = await read_all(reader)
    writer.close()
    return data


# --- SO_ORIGINAL_DST ----------------------------------------------------------------------------------


def sockaddr_in(host: str, port: int) -> bytes:
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(host) + bytes(8)


def test_parse_sockaddr_in() -> None:
    assert parse_sockaddr_in(sockaddr_in("127.0.0.2", 9)) == ("127.0.0.2", 9)
    assert parse_sockaddr_in(sockaddr_in("203.0.113.10", 443)) == ("203.0.113.10", 443)


@given(st.ip_addresses(v=4), st.integers(min_value=0, max_value=65535))
def test_parse_sockaddr_in_round_trip(address: Any, port: int) -> None:
    assert parse_sockaddr_in(sockaddr_in(str(address), port)) == (str(address), port)


def test_parse_sockaddr_in_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="too short"):
        parse_sockaddr_in(b"\x02\x00\x00")
    with pytest.raises(ValueError, match="AF_INET"):
        parse_sockaddr_in(struct.pack("=H", socket.AF_INET6) + bytes(14))


def test_original_dst_asks_the_kernel_the_right_question() -> None:
    class FakeSocket:
        def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes:
            assert (level, optname, buflen) == (socket.SOL_IP, 80, 16)
            return sockaddr_in("10.1.2.3", 8080)

    assert original_dst(FakeSocket()) == ("10.1.2.3", 8080)


# --- SOCKS5 client, message level -----------------------------------------------------------------------


def test_socks_messages() -> None:
    creds = socks5.Credentials("alice", "s3cret")
    assert socks5.greeting(None) == b"\x05\x01\x00"
    assert socks5.greeting(creds) == b"\x05\x02\x02\x00"
    assert socks5.userpass_request(creds) == b"\x01\x05alice\x06s3cret"
    assert socks5.connect_request("203.0.113.10", 666) == b"\x05\x01\x00\x01\xcb\x00\x71\x0a\x02\x9a"
    assert "s3cret" not in repr(creds)
    assert socks5.reply_name(5) == "connection refused"
    assert socks5.reply_name(0x42) == "unassigned reply 0x42"


def test_socks_message_validation() -> None:
    with pytest.raises(ValueError, match="255"):
        socks5.Credentials("a" * 256, "x")
    with pytest.raises(ValueError, match="1 to 255"):
        socks5.Credentials("alice", "")
    with pytest.raises(ValueError, match="port"):
        socks5.connect_request("10.0.0.1", 0)
    with pytest.raises(ValueError):
        socks5.connect_request("::1", 80)


# --- SOCKS5 negotiation through the daemon ------------------------------------------------------------


def test_relay_no_auth_with_half_close() -> None:
    async def scenario() -> None:
        async with lab() as the_lab:
            payload = os.urandom(300_000)
            assert await round_trip(the_lab, payload) == payload + TRAILER
            await the_lab.wait_for(lambda: bool(the_lab.events("close")))
            assert the_lab.socks.requests == [the_lab.echo]
            assert the_lab.socks.methods == [b"\x00"]
            (opened,) = the_lab.events("open")
            assert opened["socks_reply"] == "succeeded"
            assert opened["original_dst"] == "{}:{}".format(*the_lab.echo)
            assert opened["socks_bound"] == "127.0.0.9:4242"
            assert opened["client"].startswith("127.0.0.1:")
            (closed,) = the_lab.events("close")
            assert closed["bytes_from_client"] == len(payload)
            assert closed["bytes_to_client"] == len(payload) + len(TRAILER)
            assert closed["reason"] == "eof"
            assert closed["duration_s"] >= 0
            assert closed["conn"] == opened["conn"]
            stats = the_lab.redirector.stats
            assert (stats.accepted, stats.active, stats.closed) == (1, 0, 1)
            assert stats.bytes_from_clients == len(payload)

    run(scenario())


def test_server_half_close_keeps_client_direction_open() -> None:
    """The upstream side finishes first (an HTTP/1.0-like server); the client keeps sending after."""

    async def greeter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        writer.write_eof()
        received = await read_all(reader)
        received_at.append(received)
        writer.close()

    received_at: list[bytes] = []

    async def scenario() -> None:
        server = await asyncio.start_server(greeter, LOCALHOST, 0)
        target = server.sockets[0].getsockname()[:2]
        async with lab(lookup=lambda _echo: lambda _sock: target) as the_lab:
            reader, writer = await the_lab.connect()
            assert await read_all(reader) == b"hello"
            writer.write(b"late data")
            writer.write_eof()
            await the_lab.wait_for(lambda: bool(the_lab.events("close")))
            assert received_at == [b"late data"]
            writer.close()
        server.close()

    run(scenario())


def test_upstream_reset_ends_the_relay() -> None:
    async def resetter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def scenario() -> None:
        server = await asyncio.start_server(resetter, LOCALHOST, 0)
        target = server.sockets[0].getsockname()[:2]
        async with lab(lookup=lambda _echo: lambda _sock: target) as the_lab:
            reader, writer = await the_lab.connect()
            writer.write(b"ping")
            assert await closed_by_peer(reader)
            # What the proxy passes on may arrive as a FIN: the client's direction stays open until it
            # closes too (half-close semantics), then the relay ends.
            writer.close()
            await the_lab.wait_for(lambda: bool(the_lab.events("close")))
            (closed,) = the_lab.events("close")
            assert closed["reason"] in {"eof", "reset"}
            assert the_lab.redirector.stats.active == 0
        server.close()

    run(scenario())


def test_client_reset_is_routine_not_an_error() -> None:
    async def scenario() -> None:
        async with lab() as the_lab:
            reader, writer = await the_lab.connect()
            writer.write(b"x" * 10)
            await reader.readexactly(10)
            _reset(writer)
            await the_lab.wait_for(lambda: bool(the_lab.events("close")))
            (closed,) = the_lab.events("close")
            assert closed["reason"] == "reset" and closed["level"] == "info"
            assert "ConnectionResetError" in closed["error"]
            assert the_lab.redirector.stats.relay_errors == 0

    run(scenario())


def test_username_password() -> None:
    async def scenario() -> None:
        socks = FakeSocks(credentials=("alice", "pä55 word"))
        creds = socks5.Credentials("alice", "pä55 word")
        async with lab(socks, credentials=creds) as the_lab:
            assert await round_trip(the_lab, b"ping") == b"ping" + TRAILER
            assert socks.logins == [("alice", "pä55 word")]
            assert socks.methods == [b"\x02\x00"]

    run(scenario())


def test_username_password_rejected() -> None:
    async def scenario() -> None:
        socks = FakeSocks(credentials=("alice", "right"))
        async with lab(socks, credentials=socks5.Credentials("alice", "wrong")) as the_lab:
            await assert_refused(the_lab.connect())
            await the_lab.wait_for(lambda: bool(the_lab.events("socks_error")))
            (error,) = the_lab.events("socks_error")
            assert "rejected the username/password" in error["error"]
            assert error["reply_code"] is None
            assert "right" not in the_lab.stream.getvalue() and "wrong" not in the_lab.stream.getvalue()

    run(scenario())


def test_refused_reply_code_is_logged_by_name() -> None:
    async def scenario() -> None:
        async with lab(FakeSocks(reply_code=5)) as the_lab:
            await assert_refused(the_lab.connect())
            await the_lab.wait_for(lambda: bool(the_lab.events("socks_error")))
            (error,) = the_lab.events("socks_error")
            assert error["reply_code"] == 5
            assert error["reply"] == "connection refused"
            assert error["original_dst"] == "{}:{}".format(*the_lab.echo)
            assert error["level"] == "warning"
            assert the_lab.redirector.stats.socks_errors == 1
            assert not the_lab.events("open")

    run(scenario())


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("close_after_greeting", "closed the connection during method selection"),
        ("close_mid_reply", "closed the connection during the CONNECT reply"),
        ("bad_method_version", "malformed method selection: version 4"),
        ("unoffered_method", "method 0x01, which was not offered"),
        ("bad_reply_version", "malformed CONNECT reply: version 4"),
        ("bad_atyp", "unknown address type 0x09"),
    ],
)
def test_handshake_failures(script: str, message: str) -> None:
    async def scenario() -> None:
        async with lab(FakeSocks(script=script)) as the_lab:
            await assert_refused(the_lab.connect())
            await the_lab.wait_for(lambda: bool(the_lab.events("socks_error")))
            (error,) = the_lab.events("socks_error")
            assert message in error["error"]
            assert the_lab.redirector.stats.socks_errors == 1
            assert the_lab.redirector.stats.active == 0

    run(scenario())


def test_no_acceptable_method() -> None:
    async def scenario() -> None:
        # The proxy insists on a password that we do not have.
        async with lab(FakeSocks(credentials=("a", "b"))) as the_lab:
            await assert_refused(the_lab.connect())
            await the_lab.wait_for(lambda: bool(the_lab.events("socks_error")))
            assert "none of the offered" in the_lab.events("socks_error")[0]["error"]

    run(scenario())


@pytest.mark.parametrize(
    ("script", "bound"), [("bound_domain", "proxy.lan:1080"), ("bound_ipv6", "::1:1080")]
)
def test_other_bound_address_types(script: str, bound: str) -> None:
    async def scenario() -> None:
        async with lab(FakeSocks(script=script)) as the_lab:
            assert await round_trip(the_lab, b"x") == b"x" + TRAILER
            assert the_lab.events("open")[0]["socks_bound"] == bound

    run(scenario())


def test_connect_timeout() -> None:
    async def scenario() -> None:
        async with lab(FakeSocks(script="silent"), connect_timeout=0.2) as the_lab:
            await assert_refused(the_lab.connect())
            await the_lab.wait_for(lambda: bool(the_lab.events("connect_timeout")))
            assert the_lab.events("connect_timeout")[0]["timeout"] == 0.2
            assert the_lab.redirector.stats.connect_timeouts == 1

    run(scenario())


def test_proxy_unreachable() -> None:
    async def scenario() -> None:
        with socket.socket() as placeholder:
            placeholder.bind((LOCALHOST, 0))
            dead_port = placeholder.getsockname()[1]  # bound, never listening: connections are refused
            async with lab(socks=(LOCALHOST, dead_port)) as the_lab:
                await assert_refused(the_lab.connect())
                await the_lab.wait_for(lambda: bool(the_lab.events("socks_error")))
                (error,) = the_lab.events("socks_error")
                assert error["level"] == "error" and error["reply"] is None
                assert error["error"] == "cannot reach the proxy: Connection refused"

    run(scenario())


# --- limits and guards --------------------------------------------------------------------------------


def test_max_connections_cap() -> None:
    async def scenario() -> None:
        async with lab(max_connections=2) as the_lab:
            held = []
            for _ in range(2):
                reader, writer = await the_lab.connect()
                writer.write(b"hi")
                assert await reader.readexactly(2) == b"hi"  # relay established, slot taken
                held.append((reader, writer))
            assert the_lab.redirector.stats.active == 2

            await assert_refused(the_lab.connect())
            stats = the_lab.redirector.stats
            assert (stats.accepted, stats.refused_over_cap, stats.active) == (3, 1, 2)
            (over,) = the_lab.events("over_cap")
            assert over["max_connections"] == 2 and over["refused_over_cap"] == 1
            assert the_lab.socks.connections == 2  # the refused one never reached the proxy

            held[0][1].write_eof()
            assert await read_all(held[0][0]) == TRAILER
            held[0][1].close()
            await the_lab.wait_for(lambda: the_lab.redirector.stats.active == 1)
            assert await round_trip(the_lab, b"again") == b"again" + TRAILER
            held[1][1].close()

    run(scenario())


def test_over_cap_floods_do_not_flood_the_log() -> None:
    async def scenario() -> None:
        async with lab(max_connections=1) as the_lab:
            reader, writer = await the_lab.connect()
            writer.write(b"hi")
            await reader.readexactly(2)
            for _ in range(20):
                await assert_refused(the_lab.connect())
            assert the_lab.redirector.stats.refused_over_cap == 20
            assert len(the_lab.events("over_cap")) < 5
            writer.close()

    run(scenario())


def test_loop_guard_refuses_our_own_address() -> None:
    async def scenario() -> None:
        holder: dict[str, Redirector] = {}

        def ourselves(_echo: Address) -> Callable[[Any], Address]:
            return lambda _sock: holder["r"].address

        async with lab(lookup=ourselves) as the_lab:
            holder["r"] = the_lab.redirector
            await assert_refused(the_lab.connect())
            await the_lab.wait_for(lambda: bool(the_lab.events("loop_refused")))
            assert the_lab.socks.connections == 0
            assert the_lab.redirector.stats.loop_refused == 1

    run(scenario())


def test_loop_guard_with_wildcard_listen() -> None:
    async def scenario() -> None:
        holder: dict[str, Redirector] = {}

        def direct(_echo: Address) -> Callable[[Any], Address]:
            # What conntrack reports for a connection made straight to the port: its own destination.
            return lambda _sock: ("127.0.0.1", holder["r"].address[1])

        async with lab(lookup=direct, listen=("0.0.0.0", 0)) as the_lab:
            holder["r"] = the_lab.redirector
            await assert_refused(asyncio.open_connection(LOCALHOST, the_lab.redirector.address[1]))
            await the_lab.wait_for(lambda: bool(the_lab.events("loop_refused")))
            assert the_lab.socks.connections == 0

    run(scenario())


def test_no_original_destination() -> None:
    def not_redirected(_echo: Address) -> Callable[[Any], Address]:
        def lookup(_sock: Any) -> Address:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))

        return lookup

    async def scenario() -> None:
        async with lab(lookup=not_redirected) as the_lab:
            await assert_refused(the_lab.connect())
            await the_lab.wait_for(lambda: bool(the_lab.events("no_original_dst")))
            (event,) = the_lab.events("no_original_dst")
            assert "No such file" in event["error"]
            assert the_lab.socks.connections == 0
            assert the_lab.redirector.stats.no_original_dst == 1

    run(scenario())


def test_idle_timeout() -> None:
    async def scenario() -> None:
        async with lab(idle_timeout=0.3) as the_lab:
            reader, writer = await the_lab.connect()
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            started = time.monotonic()
            assert await closed_by_peer(reader)
            assert time.monotonic() - started >= 0.25
            await the_lab.wait_for(lambda: bool(the_lab.events("close")))
            assert the_lab.events("close")[0]["reason"] == "idle_timeout"
            assert the_lab.redirector.stats.idle_timeouts == 1
            writer.close()

    run(scenario())


def test_shutdown_grace_then_cut() -> None:
    async def scenario() -> None:
        async with lab(shutdown_grace=0.2) as the_lab:
            reader, writer = await the_lab.connect()
            writer.write(b"x")
            await reader.readexactly(1)
            started = time.monotonic()
            await the_lab.redirector.stop()
            assert 0.15 <= time.monotonic() - started < 3
            assert the_lab.events("close")[0]["reason"] == "shutdown"
            assert await closed_by_peer(reader)
            with pytest.raises(OSError):
                await the_lab.connect()
            writer.close()

    run(scenario())


def test_shutdown_waits_for_relays_that_finish_in_time() -> None:
    async def scenario() -> None:
        async with lab(shutdown_grace=5) as the_lab:
            reader, writer = await the_lab.connect()
            writer.write(b"x")
            await reader.readexactly(1)

            async def finish_soon() -> None:
                await asyncio.sleep(0.1)
                writer.write_eof()

            finisher = asyncio.create_task(finish_soon())
            await the_lab.redirector.stop()
            await finisher
            assert the_lab.events("close")[0]["reason"] == "eof"
            assert await read_all(reader) == TRAILER
            writer.close()

    run(scenario())


# --- configuration ------------------------------------------------------------------------------------


def settings_with_password(directory: Path, password: str, **settings: object) -> tuple[Path, Path]:
    """A JSON settings file for the redirector in ``directory``, its socks_password_file a file beside it
    holding ``password`` and a newline; returns (settings file, password file)."""
    secret = directory / "socks-password"
    secret.write_text(f"{password}\n")
    file = directory / "redirect.json"
    file.write_text(json.dumps({**settings, "socks_password_file": str(secret)}))
    return file, secret


def test_config_from_cli_and_file(tmp_path: Path) -> None:
    file, _ = settings_with_password(
        tmp_path,
        "hunter2",
        listen="0.0.0.0:12345",
        socks="proxy.example:1080",
        socks_user="router",
        max_connections=64,
        idle_timeout=600,
    )
    config = build_config({"max_connections": "100", "connect_timeout": "2.5"}, load_config_file(str(file)))
    assert config.listen == ("0.0.0.0", 12345)
    assert config.socks == ("proxy.example", 1080)
    assert config.credentials == socks5.Credentials("router", "hunter2")
    assert config.max_connections == 100  # the command line wins
    assert config.connect_timeout == 2.5
    assert config.idle_timeout == 600
    assert config.log is None


@pytest.mark.parametrize(
    ("cli", "message"),
    [
        ({"socks": "127.0.0.1:1080"}, "--listen is required"),
        ({"listen": "127.0.0.1:1"}, "--socks is required"),
        ({"listen": "localhost:1", "socks": "h:1"}, "not an IPv4 address"),
        ({"listen": "127.0.0.1", "socks": "h:1"}, "expected HOST:PORT"),
        ({"listen": "127.0.0.1:65536", "socks": "h:1"}, "bad port"),
        ({"listen": "127.0.0.1:1", "socks": "h:0"}, "bad port"),
        ({"listen": "127.0.0.1:1", "socks": ":1"}, "missing host"),
        (
            {"listen": "127.0.0.1:1", "socks": "h:1", "max_connections": "0"},
            "--max-connections: must be >= 1",
        ),
        ({"listen": "127.0.0.1:1", "socks": "h:1", "max_connections": "many"}, "expected an integer"),
        ({"listen": "127.0.0.1:1", "socks": "h:1", "connect_timeout": "0"}, "--connect-timeout: must be > 0"),
        ({"listen": "127.0.0.1:1", "socks": "h:1", "idle_timeout": "nan"}, "finite"),
        ({"listen": "127.0.0.1:1", "socks": "h:1", "socks_user": "u"}, "go together"),
        (
            {
                "listen": "127.0.0.1:1",
                "socks": "h:1",
                "socks_user": "u",
                "socks_password_file": "/nonexistent",
            },
            "cannot read",
        ),
    ],
)
def test_config_errors(cli: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(cli)


def test_config_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"listen": "127.0.0.1:1", "sock": "typo:1"}')
    with pytest.raises(ConfigError, match=r"unknown keys.*sock"):
        load_config_file(str(path))
    path.write_text("[1]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_config_file(str(path))
    path.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config_file(str(path))
    with pytest.raises(ConfigError, match="max-connections"):
        build_config({}, {"listen": "127.0.0.1:1", "socks": "h:1", "max_connections": True})
    with pytest.raises(ConfigError, match="integer"):
        build_config({}, {"listen": "127.0.0.1:1", "socks": "h:1", "max_connections": 1.5})


def test_cli_reports_config_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from nattrail import cli  # noqa: PLC0415 (the CLI imports every subcommand)

    assert cli.main(["redirect", "--listen", "127.0.0.1:1"]) == 2
    assert "--socks is required" in capsys.readouterr().err


def test_check_accepts_good_settings_without_starting_and_refuses_bad_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`nattrail redirect --check` is what the role validates the settings file with."""
    from nattrail import cli  # noqa: PLC0415

    good, password = settings_with_password(
        tmp_path, "s3cret", listen="0.0.0.0:12345", socks="proxy:1080", socks_user="u", max_connections=5
    )
    # Port 1 on 127.0.0.1 is never bound here: --check must return before listening anywhere.
    assert cli.main(["redirect", "--check", "--config", str(good)]) == 0
    assert capsys.readouterr().err == ""
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"listen": "0.0.0.0:12345", "socks": "proxy:99999"}))
    assert cli.main(["redirect", "--check", "--config", str(bad)]) == 2
    assert "--socks: bad port '99999' in 'proxy:99999'" in capsys.readouterr().err
    password.unlink()
    assert cli.main(["redirect", "--check", "--config", str(good)]) == 2
    assert "cannot read" in capsys.readouterr().err


# --- the daemon as a process: signals -----------------------------------------------------------------


def wait_for_line(path: Path, event: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record["event"] == event:
                    return record
        time.sleep(0.02)
    raise AssertionError(f"no {event!r} in {path}: {path.read_text() if path.exists() else '(missing)'}")


def test_daemon_process_signals(tmp_path: Path) -> None:
    log = tmp_path / "redirect.log"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    # The SOCKS address is never used: nothing reaching this daemon is a redirected connection.
    argv = [sys.executable, "-m", "nattrail", "redirect", "--listen", "127.0.0.1:0", "--socks", "127.0.0.1:9"]
    process = subprocess.Popen([*argv, "--log", str(log)], env=env, stderr=subprocess.PIPE)
    try:
        start = wait_for_line(log, "start")
        assert start["daemon"] == "redirect" and start["socks"] == "127.0.0.1:9"
        host, port = start["listen"].rsplit(":", 1)

        # A direct connection: conntrack reports no redirect (or our own address); never relayed.
        # The reset can win the race with connect() itself, hence the suppress around both.
        with (
            contextlib.suppress(ConnectionResetError),
            socket.create_connection((host, int(port)), 5) as direct,
        ):
            assert direct.recv(1) == b""
        process.send_signal(signal.SIGUSR1)
        stats = wait_for_line(log, "stats")
        assert stats["reason"] == "signal"
        assert stats["accepted"] == 1 and stats["no_original_dst"] + stats["loop_refused"] == 1
        assert stats["socks_errors"] == 0

        log.rename(tmp_path / "redirect.log.1")
        process.send_signal(signal.SIGHUP)
        wait_for_line(log, "log_reopened")

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert wait_for_line(log, "stop")["level"] == "info"
        assert wait_for_line(log, "stats")["reason"] == "shutdown"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()


# --- the real SO_ORIGINAL_DST, in a private network namespace -----------------------------------------


def test_real_so_original_dst_in_a_network_namespace() -> None:
    report = netns_driver_report(__file__, "--netns-driver", untested="the real SO_ORIGINAL_DST path")
    assert report["requested"] == [["127.0.0.2", 9]]
    assert report["echo"] == "through the redirect" + TRAILER.decode()
    opened = report["events"]["open"]
    assert opened["original_dst"] == "127.0.0.2:9"
    assert opened["socks_reply"] == "succeeded"
    assert report["events"]["loop_refused"]["original_dst"] == report["listen"]
    assert report["socks_connections"] == 1


async def netns_scenario(run_nft: Callable[[str], Awaitable[None]]) -> dict[str, Any]:
    echo_server = await asyncio.start_server(echo_handler, LOCALHOST, 0)
    echo = echo_server.sockets[0].getsockname()[:2]
    # The proxy must not connect to 127.0.0.2:9 itself: the output-hook redirect would loop it back.
    socks = FakeSocks(connect_to=echo)
    await socks.start()
    stream = io.StringIO()
    config = Config(listen=(LOCALHOST, 0), socks=socks.address, stats_interval=0)
    redirector = Redirector(config, JsonLog(stream=stream))  # the real lookup
    _, port = await redirector.start()
    # nft 1.0.6 wants a separator after each closing brace on one line; multi-line reads better.
    await run_nft(
        "table ip t {\n"
        "  chain o {\n"
        "    type nat hook output priority -100;\n"
        f"    tcp dport 9 redirect to :{port}\n"
        "  }\n"
        "}\n"
    )

    reader, writer = await asyncio.open_connection("127.0.0.2", 9)
    writer.write(b"through the redirect")
    writer.write_eof()
    echoed = await read_all(reader)
    writer.close()

    # Straight to the daemon: conntrack reports the daemon's own address, which the guard refuses.
    await assert_refused(asyncio.open_connection(LOCALHOST, port))
    await asyncio.sleep(0.1)
    await redirector.stop()
    events = {r["event"]: r for r in map(json.loads, stream.getvalue().splitlines())}
    return {
        "listen": f"{LOCALHOST}:{port}",
        "requested": socks.requests,
        "socks_connections": socks.connections,
        "echo": echoed.decode(),
        "events": events,
    }


def netns_driver() -> None:
    """Runs inside ``unshare --net``: a namespace of our own, so nft here never touches the host."""
    refuse_outside_private_netns()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)

    async def run_nft(ruleset: str) -> None:
        subprocess.run(["nft", "-f", "-"], input=ruleset, text=True, check=True)

    report = asyncio.run(asyncio.wait_for(netns_scenario(run_nft), 20))
    print(json.dumps(report))


if __name__ == "__main__":
    if sys.argv[1:] != ["--netns-driver"]:
        raise SystemExit("usage: test_redirect.py --netns-driver (inside unshare --net)")
    netns_driver()
