"""A minimal SOCKS5 client (RFC 1928) with username/password authentication (RFC 1929).

Only what the redirector needs: CONNECT to an IPv4 address. Message building and reply parsing are plain
functions so that they can be tested without sockets; ``negotiate`` drives them over asyncio streams.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from dataclasses import dataclass

VERSION = 5
AUTH_VERSION = 1
METHOD_NO_AUTH = 0x00
METHOD_USERPASS = 0x02
METHOD_NONE_ACCEPTABLE = 0xFF
CMD_CONNECT = 0x01
ATYP_IPV4 = 0x01
ATYP_DOMAIN = 0x03
ATYP_IPV6 = 0x04

# RFC 1928 section 6, in the RFC's own words so that logs can be matched against it.
REPLY_NAMES: dict[int, str] = {
    0x00: "succeeded",
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}


def reply_name(code: int) -> str:
    return REPLY_NAMES.get(code, f"unassigned reply {code:#04x}")


class SocksError(Exception):
    """The proxy refused, broke the protocol, or went away. ``code`` is the SOCKS reply code, if any."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def reply(self) -> str | None:
        return None if self.code is None else reply_name(self.code)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __post_init__(self) -> None:
        for what, value in (("username", self.username), ("password", self.password)):
            if not 1 <= len(value.encode("utf-8")) <= 255:
                raise ValueError(f"SOCKS {what} must be 1 to 255 bytes long (RFC 1929)")

    def __repr__(self) -> str:
        # Keeps the password out of tracebacks and debug logs.
        return f"Credentials(username={self.username!r}, password='***')"


@dataclass(frozen=True)
class Reply:
    code: int
    bound_host: str
    bound_port: int

    @property
    def name(self) -> str:
        return reply_name(self.code)


def greeting(credentials: Credentials | None) -> bytes:
    methods = [METHOD_NO_AUTH] if credentials is None else [METHOD_USERPASS, METHOD_NO_AUTH]
    return bytes([VERSION, len(methods), *methods])


def userpass_request(credentials: Credentials) -> bytes:
    user = credentials.username.encode("utf-8")
    password = credentials.password.encode("utf-8")
    return bytes([AUTH_VERSION, len(user)]) + user + bytes([len(password)]) + password


def connect_request(host: str, port: int) -> bytes:
    address = ipaddress.IPv4Address(host)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    return bytes([VERSION, CMD_CONNECT, 0, ATYP_IPV4]) + address.packed + struct.pack("!H", port)


def check_method_choice(data: bytes, credentials: Credentials | None) -> int:
    """Validate the server's 2-byte method selection and return the chosen method."""
    version, method = data[0], data[1]
    if version != VERSION:
        raise SocksError(f"malformed method selection: version {version}, expected 5")
    if method == METHOD_NONE_ACCEPTABLE:
        raise SocksError("proxy accepted none of the offered authentication methods")
    offered = {METHOD_NO_AUTH} if credentials is None else {METHOD_NO_AUTH, METHOD_USERPASS}
    if method not in offered:
        raise SocksError(f"proxy chose authentication method {method:#04x}, which was not offered")
    return method


async def _read(reader: asyncio.StreamReader, count: int, stage: str) -> bytes:
    try:
        return await reader.readexactly(count)
    except asyncio.IncompleteReadError as exc:
        raise SocksError(f"proxy closed the connection during {stage}") from exc


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    """Read one CONNECT reply; return it even when it reports failure (the caller decides)."""
    version, code, _reserved, atyp = await _read(reader, 4, "the CONNECT reply")
    if version != VERSION:
        raise SocksError(f"malformed CONNECT reply: version {version}, expected 5")
    if atyp == ATYP_IPV4:
        host = str(ipaddress.IPv4Address(await _read(reader, 4, "the CONNECT reply")))
    elif atyp == ATYP_IPV6:
        host = str(ipaddress.IPv6Address(await _read(reader, 16, "the CONNECT reply")))
    elif atyp == ATYP_DOMAIN:
        (length,) = await _read(reader, 1, "the CONNECT reply")
        host = (await _read(reader, length, "the CONNECT reply")).decode("ascii", "replace")
    else:
        raise SocksError(f"malformed CONNECT reply: unknown address type {atyp:#04x}")
    (port,) = struct.unpack("!H", await _read(reader, 2, "the CONNECT reply"))
    return Reply(code=code, bound_host=host, bound_port=port)


async def negotiate(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    host: str,
    port: int,
    credentials: Credentials | None = None,
) -> Reply:
    """Run the SOCKS5 handshake for CONNECT host:port; return the success reply or raise SocksError."""
    writer.write(greeting(credentials))
    await writer.drain()
    method = check_method_choice(await _read(reader, 2, "method selection"), credentials)
    if method == METHOD_USERPASS:
        assert credentials is not None
        writer.write(userpass_request(credentials))
        await writer.drain()
        auth_version, status = await _read(reader, 2, "authentication")
        if auth_version != AUTH_VERSION:
            raise SocksError(f"malformed authentication reply: version {auth_version}, expected 1")
        if status != 0:
            raise SocksError(f"proxy rejected the username/password (status {status})")
    writer.write(connect_request(host, port))
    await writer.drain()
    reply = await read_reply(reader)
    if reply.code != 0:
        raise SocksError(f"proxy refused CONNECT {host}:{port}: {reply.name}", code=reply.code)
    return reply
