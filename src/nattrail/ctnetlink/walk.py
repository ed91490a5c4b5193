"""The general attribute walk: any order, any layout, every length checked.

What the fast layouts (:mod:`nattrail.ctnetlink.fast`) fall back to for anything the kernel does
not send in its usual event layout (ICMP, IPv6, dump entries, damaged input), and what the tests hold
them to. Never trusts a length: a truncated or malformed attribute raises :class:`DecodeError`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

from nattrail.ctnetlink import constants
from nattrail.ctnetlink.constants import (
    CTA_COUNTERS32_BYTES,
    CTA_COUNTERS32_PACKETS,
    CTA_COUNTERS_BYTES,
    CTA_COUNTERS_PACKETS,
    CTA_TIMESTAMP_START,
    CTA_TIMESTAMP_STOP,
    CTA_TUPLE_IP,
    CTA_TUPLE_PROTO,
    NLA_TYPE_MASK,
)
from nattrail.ctnetlink.records import Counters, DecodeError, Tuple

# The layouts this module calls methods on (``NLA_HDR.unpack_from(...)``), bound by assignment and not
# by ``from … import``: CPython 3.11 compiles a method call on a name an import bound as an attribute
# load plus a call (it expects a module there), which builds a bound method at every call (50-80 ns
# more per unpack_from, measured); an assigned name keeps the LOAD_METHOD fast path, as when defined here.
NLA_HDR, U16, U32, U64 = constants.NLA_HDR, constants.U16, constants.U32, constants.U64


def iter_attrs(data: bytes | memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """Yield (type, payload start, payload end) for each attribute in data[start:end]."""
    if end > len(data):
        raise DecodeError(f"attribute block runs past the message ({end} > {len(data)})")
    pos = start
    while pos + 4 <= end:
        length, kind = NLA_HDR.unpack_from(data, pos)
        if length < 4 or pos + length > end:
            raise DecodeError(f"bad attribute length {length} at offset {pos}")
        yield kind & NLA_TYPE_MASK, pos + 4, pos + length
        pos += (length + 3) & ~3


def _exact(data: bytes | memoryview, start: int, end: int, size: int, what: str) -> None:
    if end - start != size:
        raise DecodeError(f"{what}: expected {size} bytes, got {end - start}")


# attribute -> (Tuple field, size, address family) for the addresses, (Tuple field, size) for the rest
_IP_ATTRS = {
    constants.CTA_IP_V4_SRC: ("src", 4, socket.AF_INET),
    constants.CTA_IP_V4_DST: ("dst", 4, socket.AF_INET),
    constants.CTA_IP_V6_SRC: ("src", 16, socket.AF_INET6),
    constants.CTA_IP_V6_DST: ("dst", 16, socket.AF_INET6),
}
_PROTO_ATTRS = {
    constants.CTA_PROTO_NUM: ("proto", 1),
    constants.CTA_PROTO_SRC_PORT: ("sport", 2),
    constants.CTA_PROTO_DST_PORT: ("dport", 2),
    constants.CTA_PROTO_ICMP_ID: ("icmp_id", 2),
    constants.CTA_PROTO_ICMP_TYPE: ("icmp_type", 1),
    constants.CTA_PROTO_ICMP_CODE: ("icmp_code", 1),
}


def _walk_tuple(data: bytes | memoryview, start: int, end: int) -> Tuple:
    values: dict[str, Any] = {}
    for kind, a, b in iter_attrs(data, start, end):
        if kind == CTA_TUPLE_IP:
            for ikind, ia, ib in iter_attrs(data, a, b):
                if ikind in _IP_ATTRS:
                    name, size, family = _IP_ATTRS[ikind]
                    _exact(data, ia, ib, size, "address")
                    values[name] = socket.inet_ntop(family, bytes(data[ia:ib]))
        elif kind == CTA_TUPLE_PROTO:
            for pkind, pa, pb in iter_attrs(data, a, b):
                if pkind in _PROTO_ATTRS:
                    name, size = _PROTO_ATTRS[pkind]
                    _exact(data, pa, pb, size, name)
                    values[name] = data[pa] if size == 1 else U16.unpack_from(data, pa)[0]
    if "src" not in values or "dst" not in values or "proto" not in values:
        raise DecodeError("tuple without addresses or protocol")
    return Tuple(**values)


def _counters(data: bytes | memoryview, start: int, end: int) -> Counters:
    packets = octets = 0
    for kind, a, b in iter_attrs(data, start, end):
        if kind in (CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES):
            _exact(data, a, b, 8, "64-bit counter")
            (value,) = U64.unpack_from(data, a)
        elif kind in (CTA_COUNTERS32_PACKETS, CTA_COUNTERS32_BYTES):
            _exact(data, a, b, 4, "32-bit counter")
            (value,) = U32.unpack_from(data, a)
        else:
            continue
        if kind in (CTA_COUNTERS_PACKETS, CTA_COUNTERS32_PACKETS):
            packets = value
        else:
            octets = value
    return Counters(packets, octets)


def _timestamps(data: bytes | memoryview, start: int, end: int) -> tuple[int | None, int | None]:
    found: dict[int, int] = {}
    for kind, a, b in iter_attrs(data, start, end):
        if kind in (CTA_TIMESTAMP_START, CTA_TIMESTAMP_STOP):
            _exact(data, a, b, 8, "timestamp")
            found[kind] = U64.unpack_from(data, a)[0]
    return found.get(CTA_TIMESTAMP_START), found.get(CTA_TIMESTAMP_STOP)
