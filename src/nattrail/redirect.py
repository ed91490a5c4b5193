"""`nattrail redirect`: a transparent redirector from nftables ``redirect`` to an upstream SOCKS5 proxy.

nftables rewrites the destination of chosen outgoing TCP connections to this daemon's port; the daemon
asks conntrack for the original destination (SO_ORIGINAL_DST), opens a SOCKS5 CONNECT to it through the
proxy and relays bytes both ways. Only IPv4 is handled, as the SOCKS request is CONNECT by IPv4 address.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import itertools
import math
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nattrail import __version__, socks5
from nattrail.jsonlog import JsonLog
from nattrail.startup import open_log, read_json_object

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
SOCKADDR_IN_SIZE = 16
RELAY_CHUNK = 64 * 1024
LISTEN_BACKLOG = 128
OVER_CAP_LOG_INTERVAL = 1.0  # seconds between two "over_cap" lines, so that a flood cannot flood the log

Address = tuple[str, int]


class SupportsGetsockopt(Protocol):
    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


# Given the accepted socket, return the destination the client originally asked for.
DestinationLookup = Callable[[Any], Address]


def parse_sockaddr_in(data: bytes) -> Address:
    """Decode a struct sockaddr_in: family (host byte order), port (network order), IPv4 address."""
    if len(data) < 8:
        raise ValueError(f"sockaddr_in too short: {len(data)} bytes")
    (family,) = struct.unpack("=H", data[:2])
    if family != socket.AF_INET:
        raise ValueError(f"not an AF_INET address (family {family})")
    (port,) = struct.unpack("!H", data[2:4])
    return socket.inet_ntoa(data[4:8]), port


def original_dst(sock: SupportsGetsockopt) -> Address:
    """The pre-NAT destination of an accepted connection; OSError if conntrack knows none."""
    return parse_sockaddr_in(sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, SOCKADDR_IN_SIZE))


def fmt_addr(address: Address | None) -> str | None:
    return None if address is None else f"{address[0]}:{address[1]}"


# --- configuration -------------------------------------------------------------------------------------


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Config:
    listen: Address
    socks: Address
    credentials: socks5.Credentials | None = None
    max_connections: int = 512
    connect_timeout: float = 10.0
    idle_timeout: float = 3600.0
    log: str | None = None
    stats_interval: float = 300.0
    shutdown_grace: float = 5.0


# Config-file key -> command-line spelling, used for both merging and error messages.
OPTIONS: dict[str, str] = {
    "listen": "--listen",
    "socks": "--socks",
    "socks_user": "--socks-user",
    "socks_password_file": "--socks-password-file",
    "max_connections": "--max-connections",
    "connect_timeout": "--connect-timeout",
    "idle_timeout": "--idle-timeout",
    "log": "--log",
    "stats_interval": "--stats-interval",
    "shutdown_grace": "--shutdown-grace",
}


def parse_hostport(name: str, value: object, *, numeric_host: bool, allow_port_zero: bool) -> Address:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{name}: expected HOST:PORT, got {value!r}")
    host, _, port_text = value.rpartition(":")
    if numeric_host:
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            raise ConfigError(f"{name}: {host!r} is not an IPv4 address") from None
    elif not host:
        raise ConfigError(f"{name}: missing host in {value!r}")
    if not port_text.isdigit() or not (0 if allow_port_zero else 1) <= int(port_text) <= 65535:
        raise ConfigError(f"{name}: bad port {port_text!r} in {value!r}")
    return host, int(port_text)


def parse_number(
    name: str, value: object, kind: type[int] | type[float], minimum: float, strict: bool
) -> Any:  # noqa: ANN401
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    try:
        number = kind(value)
    except ValueError:
        raise ConfigError(
            f"{name}: expected {'an integer' if kind is int else 'a number'}, got {value!r}"
        ) from None
    if kind is int and isinstance(value, float) and value != number:
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if not math.isfinite(number):
        raise ConfigError(f"{name}: must be a finite number, got {value!r}")
    if number < minimum or (strict and number == minimum):
        raise ConfigError(f"{name}: must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return number


def read_password(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--socks-password-file: cannot read {path}: {exc.strerror}") from None
    # Editors add a final newline; a password never meaningfully ends in one.
    password = text.rstrip("\r\n")
    if not password:
        raise ConfigError(f"--socks-password-file: {path} is empty")
    return password


def load_config_file(path: str) -> dict[str, object]:
    data = read_json_object(path, ConfigError, "--config: ")
    unknown = sorted(set(data) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"--config: unknown keys in {path}: {', '.join(unknown)}")
    return data


def build_config(cli: dict[str, object], file: dict[str, object] | None = None) -> Config:
    """Merge command-line values (which win, None meaning "not given") over the config file's."""
    merged = {key: cli.get(key) if cli.get(key) is not None else (file or {}).get(key) for key in OPTIONS}
    for key in ("listen", "socks"):
        if merged[key] is None:
            raise ConfigError(f"{OPTIONS[key]} is required (on the command line or in --config)")
    user, password_file = merged["socks_user"], merged["socks_password_file"]
    if (user is None) != (password_file is None):
        raise ConfigError("--socks-user and --socks-password-file go together")
    credentials = None
    if user is not None:
        if not isinstance(user, str) or not isinstance(password_file, str):
            raise ConfigError("--socks-user and --socks-password-file must be strings")
        try:
            credentials = socks5.Credentials(user, read_password(password_file))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    log = merged["log"]
    if log is not None and (not isinstance(log, str) or not log):
        raise ConfigError(f"--log: expected a file path, got {log!r}")
    defaults = Config(listen=("", 0), socks=("", 0))

    def number(key: str, kind: type[int] | type[float], minimum: float, strict: bool) -> Any:  # noqa: ANN401
        value = merged[key]
        return (
            getattr(defaults, key)
            if value is None
            else parse_number(OPTIONS[key], value, kind, minimum, strict)
        )

    return Config(
        listen=parse_hostport("--listen", merged["listen"], numeric_host=True, allow_port_zero=True),
        socks=parse_hostport("--socks", merged["socks"], numeric_host=False, allow_port_zero=False),
        credentials=credentials,
        max_connections=number("max_connections", int, 1, strict=False),
        connect_timeout=number("connect_timeout", float, 0, strict=True),
        idle_timeout=number("idle_timeout", float, 0, strict=True),
        log=log,
        stats_interval=number("stats_interval", float, 0, strict=False),
        shutdown_grace=number("shutdown_grace", float, 0, strict=False),
    )


# --- the daemon ------------------------------------------------------------------------------------------


@dataclass
class Stats:
    accepted: int = 0
    active: int = 0
    refused_over_cap: int = 0
    no_original_dst: int = 0
    loop_refused: int = 0
    socks_errors: int = 0
    connect_timeouts: int = 0
    idle_timeouts: int = 0
    relay_errors: int = 0
    closed: int = 0
    bytes_from_clients: int = 0
    bytes_to_clients: int = 0


@dataclass
class _Connection:
    conn: int
    client: str | None
    original_dst: str | None = None
    started: float = 0.0
    bytes_from_client: int = 0
    bytes_to_client: int = 0
    last_activity: float = 0.0
    errors: list[str] = field(default_factory=list)

    def fields(self) -> dict[str, object]:
        return {"conn": self.conn, "client": self.client, "original_dst": self.original_dst}


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST, so that a refused client sees an error instead of a clean, empty reply."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Redirector:
    def __init__(
        self,
        config: Config,
        log: JsonLog,
        lookup: DestinationLookup = original_dst,
    ) -> None:
        self.config = config
        self.log = log
        self.lookup = lookup
        self.stats = Stats()
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._address: Address | None = None
        self._over_cap_logged_at = float("-inf")
        self._over_cap_suppressed = 0

    @property
    def address(self) -> Address:
        if self._address is None:
            raise RuntimeError("not started")
        return self._address

    async def start(self) -> Address:
        host, port = self.config.listen
        self._server = await asyncio.start_server(
            self.handle, host, port, family=socket.AF_INET, backlog=LISTEN_BACKLOG, reuse_address=True
        )
        # Kept apart from the server: connections still in flight during shutdown need it after close().
        bound_host, bound_port = self._server.sockets[0].getsockname()[:2]
        self._address = (bound_host, bound_port)
        return self._address

    async def stop(self) -> None:
        """Stop listening, give active relays ``shutdown_grace`` seconds, then cut the rest."""
        if self._server is not None:
            self._server.close()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.config.shutdown_grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def log_stats(self, reason: str) -> None:
        self.log.info("stats", reason=reason, **asdict(self.stats))

    def _refuse_over_cap(self, client: str | None) -> None:
        self.stats.refused_over_cap += 1
        now = time.monotonic()
        if now - self._over_cap_logged_at < OVER_CAP_LOG_INTERVAL:
            self._over_cap_suppressed += 1
            return
        self.log.warning(
            "over_cap",
            client=client,
            max_connections=self.config.max_connections,
            refused_over_cap=self.stats.refused_over_cap,
            suppressed=self._over_cap_suppressed,
        )
        self._over_cap_logged_at, self._over_cap_suppressed = now, 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        client = fmt_addr(writer.get_extra_info("peername"))
        if self.stats.active >= self.config.max_connections:
            self._refuse_over_cap(client)
            _reset(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.stats.active += 1
        conn = _Connection(conn=next(self._ids), client=client)
        try:
            await self._serve(conn, reader, writer)
        except asyncio.CancelledError:
            # Only stop() cancels handlers; ending "cancelled" would make asyncio's stream callback
            # (3.11) log a spurious "Unhandled exception in client_connected_cb".
            pass
        finally:
            self.stats.active -= 1
            self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.transport.abort()

    def _check_destination(self, conn: _Connection, writer: asyncio.StreamWriter) -> Address | None:
        try:
            destination = self.lookup(writer.get_extra_info("socket"))
        except (OSError, ValueError) as exc:
            self.stats.no_original_dst += 1
            self.log.warning("no_original_dst", **conn.fields(), error=str(exc))
            return None
        conn.original_dst = fmt_addr(destination)
        local = writer.get_extra_info("sockname")
        listen = self.config.listen
        # A connection made straight to our port (not redirected) reports itself as its original
        # destination; relaying it would make us a proxy for anyone who can reach us, or loop.
        if destination == (local[0], local[1]) or (
            destination[1] == self.address[1] and destination[0] in (listen[0], "0.0.0.0")  # noqa: S104
        ):
            self.stats.loop_refused += 1
            self.log.warning("loop_refused", **conn.fields(), listen=fmt_addr(self.address))
            return None
        return destination

    async def _connect_upstream(
        self, conn: _Connection, destination: Address
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        upstream: asyncio.StreamWriter | None = None
        socks = fmt_addr(self.config.socks)
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                up_reader, upstream = await asyncio.open_connection(*self.config.socks)
                reply = await socks5.negotiate(
                    up_reader, upstream, destination[0], destination[1], self.config.credentials
                )
        except asyncio.CancelledError:
            if upstream is not None:
                upstream.transport.abort()
            raise
        except TimeoutError:
            self.stats.connect_timeouts += 1
            self.log.warning(
                "connect_timeout", **conn.fields(), socks=socks, timeout=self.config.connect_timeout
            )
        except socks5.SocksError as exc:
            self.stats.socks_errors += 1
            self.log.warning(
                "socks_error",
                **conn.fields(),
                socks=socks,
                reply_code=exc.code,
                reply=exc.reply,
                error=str(exc),
            )
        except OSError as exc:
            self.stats.socks_errors += 1
            # asyncio's "[Errno 111] Connect call failed (...)" hides the useful part: the reason.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            self.log.error(
                "socks_error",
                **conn.fields(),
                socks=socks,
                reply_code=None,
                reply=None,
                error=f"cannot reach the proxy: {reason}",
            )
        else:
            self.log.info(
                "open",
                **conn.fields(),
                socks=socks,
                socks_reply=reply.name,
                socks_bound=fmt_addr((reply.bound_host, reply.bound_port)),
            )
            return up_reader, upstream
        if upstream is not None:
            upstream.transport.abort()
        return None

    async def _serve(
        self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        destination = self._check_destination(conn, writer)
        if destination is None:
            _reset(writer)
            return
        loop = asyncio.get_running_loop()
        conn.started = loop.time()
        streams = await self._connect_upstream(conn, destination)
        if streams is None:
            _reset(writer)
            return
        up_reader, upstream = streams
        reason = "shutdown"
        try:
            reason = await self._relay(conn, reader, writer, up_reader, upstream)
        finally:
            self.stats.closed += 1
            if reason == "idle_timeout":
                self.stats.idle_timeouts += 1
            elif reason == "error":
                self.stats.relay_errors += 1
            self.log.log(
                "close",
                "warning" if reason == "error" else "info",
                **conn.fields(),
                bytes_from_client=conn.bytes_from_client,
                bytes_to_client=conn.bytes_to_client,
                duration_s=round(loop.time() - conn.started, 6),
                reason=reason,
                **({"error": "; ".join(conn.errors)} if conn.errors else {}),
            )
            upstream.close()
            writer.close()

    async def _pump(
        self,
        conn: _Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        from_client: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        while data := await reader.read(RELAY_CHUNK):
            conn.last_activity = loop.time()
            writer.write(data)
            await writer.drain()
            if from_client:
                conn.bytes_from_client += len(data)
                self.stats.bytes_from_clients += len(data)
            else:
                conn.bytes_to_client += len(data)
                self.stats.bytes_to_clients += len(data)
        # Half-close: pass the EOF on and keep the other direction flowing.
        if writer.can_write_eof():
            writer.write_eof()

    async def _relay(
        self,
        conn: _Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        upstream: asyncio.StreamWriter,
    ) -> str:
        """Relay until both directions reached EOF, one failed, or the idle timeout; return why it ended."""
        loop = asyncio.get_running_loop()
        conn.last_activity = loop.time()
        pending = {
            asyncio.create_task(self._pump(conn, reader, upstream, from_client=True)),
            asyncio.create_task(self._pump(conn, up_reader, writer, from_client=False)),
        }
        try:
            while pending:
                remaining = conn.last_activity + self.config.idle_timeout - loop.time()
                if remaining <= 0:
                    return "idle_timeout"
                done, pending = await asyncio.wait(
                    pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                failures = [exc for task in done if (exc := task.exception()) is not None]
                if failures:
                    conn.errors.extend(f"{type(exc).__name__}: {exc}" for exc in failures)
                    # A peer hanging up hard (a browser closing a tab) is routine, unlike other failures.
                    return "reset" if all(isinstance(e, ConnectionError) for e in failures) else "error"
            return "eof"
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


async def run(
    config: Config,
    log: JsonLog,
    lookup: DestinationLookup = original_dst,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop`` is set); SIGHUP reopens the log, SIGUSR1 logs stats."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    redirector = Redirector(config, log, lookup)
    address = await redirector.start()
    log.info(
        "start",
        version=__version__,
        pid=os.getpid(),
        listen=fmt_addr(address),
        socks=fmt_addr(config.socks),
        socks_auth="username" if config.credentials else "none",
        max_connections=config.max_connections,
        connect_timeout=config.connect_timeout,
        idle_timeout=config.idle_timeout,
    )

    def reopen() -> None:
        try:
            log.reopen()
        except OSError as exc:
            log.error("log_reopen_failed", error=str(exc))
        else:
            log.info("log_reopened")

    handlers: dict[signal.Signals, Callable[[], None]] = {
        signal.SIGTERM: stop.set,
        signal.SIGINT: stop.set,
        signal.SIGHUP: reopen,
        signal.SIGUSR1: lambda: redirector.log_stats("signal"),
    }
    for signum, handler in handlers.items():
        loop.add_signal_handler(signum, handler)

    async def periodic_stats() -> None:
        while True:
            await asyncio.sleep(config.stats_interval)
            redirector.log_stats("periodic")

    ticker = asyncio.create_task(periodic_stats()) if config.stats_interval > 0 else None
    try:
        await stop.wait()
    finally:
        for signum in handlers:
            loop.remove_signal_handler(signum)
        if ticker is not None:
            ticker.cancel()
        log.info("stopping", active=redirector.stats.active, grace=config.shutdown_grace)
        await redirector.stop()
        redirector.log_stats("shutdown")
        log.info("stop")


# --- command line --------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "redirect",
        help="transparent redirector: nftables redirect -> SOCKS5 proxy",
        description="Relay connections that nftables redirected to this port through a SOCKS5 proxy.",
    )
    parser.add_argument("--config", metavar="FILE", help="JSON file with the same keys (command line wins)")
    parser.add_argument("--listen", metavar="ADDR:PORT", help="IPv4 address and port nftables redirects to")
    parser.add_argument("--socks", metavar="HOST:PORT", help="upstream SOCKS5 proxy")
    parser.add_argument("--socks-user", metavar="U", help="username for RFC 1929 authentication")
    parser.add_argument("--socks-password-file", metavar="F", help="file holding the SOCKS password")
    parser.add_argument("--max-connections", metavar="N", help="relays at once; more are reset (512)")
    parser.add_argument("--connect-timeout", metavar="S", help="proxy connect + handshake timeout (10)")
    parser.add_argument("--idle-timeout", metavar="S", help="close a relay idle in both directions (3600)")
    parser.add_argument("--stats-interval", metavar="S", help="seconds between stats lines, 0: off (300)")
    parser.add_argument("--shutdown-grace", metavar="S", help="on SIGTERM, wait for relays this long (5)")
    parser.add_argument("--log", metavar="FILE", help="JSON-lines log file (default: stdout)")
    parser.add_argument(
        "--check", action="store_true", help="check the settings (and read the password file), then exit"
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        file = load_config_file(args.config) if args.config else None
        config = build_config({key: getattr(args, key, None) for key in OPTIONS}, file)
    except ConfigError as exc:
        print(f"nattrail redirect: error: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "check", False):
        return 0
    log = open_log(config.log, "redirect", "nattrail redirect: error: cannot open log {path}: {reason}")
    if log is None:
        return 1
    with log:
        try:
            asyncio.run(run(config, log))
        except OSError as exc:
            log.error("fatal", error=str(exc))
            print(f"nattrail redirect: error: {exc}", file=sys.stderr)
            return 1
    return 0
