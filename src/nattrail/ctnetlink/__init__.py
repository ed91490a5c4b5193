"""Conntrack over raw netlink (ctnetlink), with the standard library only.

Enough of the protocol to follow connections: subscribe to the NEW and DESTROY event groups, dump the
table, and decode each message into a :class:`Conntrack`. The layouts come from the kernel's uapi headers
(linux/netlink.h, linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h); every number used is named here.
Decoding never trusts lengths: a truncated or malformed message raises :class:`DecodeError`, which the
caller counts instead of crashing on.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from collections.abc import Iterator
from typing import Any

from nattrail import mmsg
from nattrail.ctnetlink.constants import (
    CTA_COUNTERS32_BYTES,
    CTA_COUNTERS32_PACKETS,
    CTA_COUNTERS_BYTES,
    CTA_COUNTERS_ORIG,
    CTA_COUNTERS_PACKETS,
    CTA_COUNTERS_REPLY,
    CTA_ID,
    CTA_IP_V4_DST,
    CTA_IP_V4_SRC,
    CTA_IP_V6_DST,
    CTA_IP_V6_SRC,
    CTA_MARK,
    CTA_MARK_MASK,
    CTA_PROTO_DST_PORT,
    CTA_PROTO_ICMP_CODE,
    CTA_PROTO_ICMP_ID,
    CTA_PROTO_ICMP_TYPE,
    CTA_PROTO_NUM,
    CTA_PROTO_SRC_PORT,
    CTA_PROTOINFO,
    CTA_STATUS,
    CTA_TIMEOUT,
    CTA_TIMESTAMP,
    CTA_TIMESTAMP_EVENT,
    CTA_TIMESTAMP_START,
    CTA_TIMESTAMP_STOP,
    CTA_TUPLE_IP,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_PROTO,
    CTA_TUPLE_REPLY,
    IPCTNL_MSG_CT_DELETE,
    IPCTNL_MSG_CT_GET,
    IPCTNL_MSG_CT_NEW,
    IPS_DST_NAT,
    IPS_SRC_NAT,
    NETLINK_ADD_MEMBERSHIP,
    NETLINK_CAP_ACK,
    NETLINK_NETFILTER,
    NFGEN_HDR,
    NFNL_SUBSYS_CTNETLINK,
    NFNLGRP_CONNTRACK_DESTROY,
    NFNLGRP_CONNTRACK_NEW,
    NLA_F_NESTED,
    NLA_HDR,
    NLA_TYPE_MASK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_MULTI,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDR,
    NLMSG_OVERRUN,
    PROTO_NAMES,
    SO_RCVBUFFORCE,
    SOL_NETLINK,
    U16,
    U32,
    U64,
)
from nattrail.ctnetlink.records import (
    Conntrack,
    Counters,
    DecodeError,
    NetlinkError,
    Tuple,
)


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
    CTA_IP_V4_SRC: ("src", 4, socket.AF_INET),
    CTA_IP_V4_DST: ("dst", 4, socket.AF_INET),
    CTA_IP_V6_SRC: ("src", 16, socket.AF_INET6),
    CTA_IP_V6_DST: ("dst", 16, socket.AF_INET6),
}
_PROTO_ATTRS = {
    CTA_PROTO_NUM: ("proto", 1),
    CTA_PROTO_SRC_PORT: ("sport", 2),
    CTA_PROTO_DST_PORT: ("dport", 2),
    CTA_PROTO_ICMP_ID: ("icmp_id", 2),
    CTA_PROTO_ICMP_TYPE: ("icmp_type", 1),
    CTA_PROTO_ICMP_CODE: ("icmp_code", 1),
}


# The layout the kernel uses for an IPv4 tuple with ports (TCP, UDP): the fast path reads the
# 48 bytes in one unpack and checks the five attribute-header chunks against the expected ones;
# anything else takes the general walk. Headers are built with NLA_HDR, so in host byte order.
_FAST = struct.Struct("8s4s4s4s8sB3x4s2s2x4s2s2x")
_FAST_HEADERS = (
    NLA_HDR.pack(20, CTA_TUPLE_IP | NLA_F_NESTED) + NLA_HDR.pack(8, CTA_IP_V4_SRC),
    NLA_HDR.pack(8, CTA_IP_V4_DST),
    NLA_HDR.pack(28, CTA_TUPLE_PROTO | NLA_F_NESTED) + NLA_HDR.pack(5, CTA_PROTO_NUM),
    NLA_HDR.pack(6, CTA_PROTO_SRC_PORT),
    NLA_HDR.pack(6, CTA_PROTO_DST_PORT),
)
_FAST_PROTOS = frozenset({socket.IPPROTO_TCP, socket.IPPROTO_UDP})


def _fast_tuple(data: bytes | memoryview, start: int, end: int) -> Tuple | None:
    if end - start < _FAST.size:
        return None
    h1, src, h2, dst, h3, proto, h4, sport, h5, dport = _FAST.unpack_from(data, start)
    if (h1, h2, h3, h4, h5) != _FAST_HEADERS or proto not in _FAST_PROTOS:
        return None
    return Tuple(
        socket.inet_ntoa(src),
        socket.inet_ntoa(dst),
        proto,
        int.from_bytes(sport, "big"),
        int.from_bytes(dport, "big"),
    )


def decode_tuple(data: bytes | memoryview, start: int, end: int) -> Tuple:
    if end > len(data):
        raise DecodeError(f"tuple runs past the message ({end} > {len(data)})")
    fast = _fast_tuple(data, start, end)
    return fast if fast is not None else _walk_tuple(data, start, end)


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


def _decode_general(data: bytes | memoryview, start: int, end: int, event: str) -> Conntrack:
    """Decode the attributes of one conntrack message by walking them all: any order, any layout.
    :func:`decode_conntrack` takes a faster path for the layout the kernel sends in events and
    falls back to this; the tests hold the two to the same answers."""
    orig = reply = None
    status = 0
    ct_id = None
    c_orig = c_reply = None
    start_ns = stop_ns = None
    for kind, a, b in iter_attrs(data, start, end):
        if kind == CTA_TUPLE_ORIG:
            orig = decode_tuple(data, a, b)
        elif kind == CTA_TUPLE_REPLY:
            reply = decode_tuple(data, a, b)
        elif kind == CTA_STATUS:
            _exact(data, a, b, 4, "status")
            (status,) = U32.unpack_from(data, a)
        elif kind == CTA_ID:
            _exact(data, a, b, 4, "conntrack id")
            (ct_id,) = U32.unpack_from(data, a)
        elif kind == CTA_COUNTERS_ORIG:
            c_orig = _counters(data, a, b)
        elif kind == CTA_COUNTERS_REPLY:
            c_reply = _counters(data, a, b)
        elif kind == CTA_TIMESTAMP:
            start_ns, stop_ns = _timestamps(data, a, b)
    if orig is None or reply is None:
        raise DecodeError("conntrack message without both tuples")
    return Conntrack(event, ct_id, status, orig, reply, c_orig, c_reply, start_ns, stop_ns)


# The layout of the kernel's NEW and DESTROY events for IPv4 TCP and UDP (ctnetlink_conntrack_event):
# the original and reply tuples, the id and the status, in that order and at fixed offsets. The fast
# path reads these 120 bytes in one unpack and checks every attribute header against the expected
# bytes; the attributes after them are walked. Anything else takes the general walk.
# nest, ip nest, source header, source, destination header, destination, proto nest, number header,
# number, source port header, source port, destination port header, destination port
_TUPLE_FMT = "4s4s4s4s4s4s4s4sB3x4sH2x4sH2x"
_EVENT_HEAD = struct.Struct("!" + _TUPLE_FMT + _TUPLE_FMT + "4sI4sI")
_TUPLE_HEADERS = (
    NLA_HDR.pack(20, CTA_TUPLE_IP | NLA_F_NESTED),
    NLA_HDR.pack(8, CTA_IP_V4_SRC),
    NLA_HDR.pack(8, CTA_IP_V4_DST),
    NLA_HDR.pack(28, CTA_TUPLE_PROTO | NLA_F_NESTED),
    NLA_HDR.pack(5, CTA_PROTO_NUM),
    NLA_HDR.pack(6, CTA_PROTO_SRC_PORT),
    NLA_HDR.pack(6, CTA_PROTO_DST_PORT),
)
_EVENT_HEADERS = (
    NLA_HDR.pack(52, CTA_TUPLE_ORIG | NLA_F_NESTED),
    *_TUPLE_HEADERS,
    NLA_HDR.pack(52, CTA_TUPLE_REPLY | NLA_F_NESTED),
    *_TUPLE_HEADERS,
    NLA_HDR.pack(8, CTA_ID),
    NLA_HDR.pack(8, CTA_STATUS),
)
# Counters and timestamps: nests of two 64-bit values (start alone while a connection lives).
_PAIR = struct.Struct("!4sQ4sQ")
_COUNTER_HEADERS = (NLA_HDR.pack(12, CTA_COUNTERS_PACKETS), NLA_HDR.pack(12, CTA_COUNTERS_BYTES))
_STAMP_HEADERS = (NLA_HDR.pack(12, CTA_TIMESTAMP_START), NLA_HDR.pack(12, CTA_TIMESTAMP_STOP))
# Attributes the general walk would take from later in the message: their presence there means
# the layout is not the one the fast path knows.
_HEAD_KINDS = frozenset({CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_ID})
# A DESTROY's next 84 bytes: both counter nests and the timestamp nest, read in one unpack as well
# (they are what a close record is made of; three nests walked one by one cost more than decoding
# the tuples).
_DESTROY_TAIL = struct.Struct("!" + "4s4sQ4sQ" * 3)
_DESTROY_HEADERS = (
    NLA_HDR.pack(28, CTA_COUNTERS_ORIG | NLA_F_NESTED),
    *_COUNTER_HEADERS,
    NLA_HDR.pack(28, CTA_COUNTERS_REPLY | NLA_F_NESTED),
    *_COUNTER_HEADERS,
    NLA_HDR.pack(28, CTA_TIMESTAMP | NLA_F_NESTED),
    *_STAMP_HEADERS,
)
_COUNTER_KINDS = frozenset({CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY})
# What the kernel sends after those, none of it used here, by its length: TCP's NEW (the timeout,
# TCP's state, the event's time stamp), UDP's NEW, TCP's DESTROY (TCP's state), UDP's DESTROY. A
# rest of one of these lengths with exactly these headers needs no walk; anything else is walked.
_REST_TIMEOUT = NLA_HDR.pack(8, CTA_TIMEOUT)
_REST_STAMP = NLA_HDR.pack(12, CTA_TIMESTAMP_EVENT)
_KNOWN_RESTS = {
    68: (
        struct.Struct("!4s4x4s44x4s8x"),
        (_REST_TIMEOUT, NLA_HDR.pack(48, CTA_PROTOINFO | NLA_F_NESTED), _REST_STAMP),
    ),
    20: (struct.Struct("!4s4x4s8x"), (_REST_TIMEOUT, _REST_STAMP)),
    28: (struct.Struct("!4s12x4s8x"), (NLA_HDR.pack(16, CTA_PROTOINFO | NLA_F_NESTED), _REST_STAMP)),
    12: (struct.Struct("!4s8x"), (_REST_STAMP,)),
}
_new = tuple.__new__


def _fixed_pair(
    data: bytes | memoryview, a: int, b: int, headers: tuple[bytes, bytes]
) -> tuple[int, int] | None:
    """The two 64-bit values of a counter or timestamp nest in the kernel's layout, else None."""
    if b - a != _PAIR.size:
        return None
    h1, first, h2, second = _PAIR.unpack_from(data, a)
    return (first, second) if (h1, h2) == headers else None


_Rest = tuple[Counters | None, Counters | None, int | None, int | None]


def _walk_rest(data: bytes | memoryview, pos: int, end: int, found: _Rest) -> _Rest | None:
    """The counters and timestamps among the attributes from ``pos`` on (``found``: those read
    already), walked one by one; None if one of the head's attributes comes again."""
    c_orig, c_reply, start_ns, stop_ns = found
    unpack_header = NLA_HDR.unpack_from
    # iter_attrs' walk, inlined.
    while pos + 4 <= end:
        length, kind = unpack_header(data, pos)
        if length < 4 or pos + length > end:
            raise DecodeError(f"bad attribute length {length} at offset {pos}")
        a, b = pos + 4, pos + length
        pos += (length + 3) & ~3
        kind &= NLA_TYPE_MASK
        if kind in _COUNTER_KINDS:
            pair = _fixed_pair(data, a, b, _COUNTER_HEADERS)
            counters = _new(Counters, pair) if pair else _counters(data, a, b)
            if kind == CTA_COUNTERS_ORIG:
                c_orig = counters
            else:
                c_reply = counters
        elif kind == CTA_TIMESTAMP:
            start_ns, stop_ns = _fixed_pair(data, a, b, _STAMP_HEADERS) or _timestamps(data, a, b)
        elif kind in _HEAD_KINDS:
            return None
    return c_orig, c_reply, start_ns, stop_ns


def _fast_event(data: bytes | memoryview, start: int, end: int, event: str) -> Conntrack | None:
    """The kernel's event layout decoded in one unpack, or None for the general walk."""
    if end - start < _EVENT_HEAD.size or end > len(data):
        return None
    (o0, o1, o2, osrc, o3, odst, o4, o5, oproto, o6, osport, o7, odport,
     r0, r1, r2, rsrc, r3, rdst, r4, r5, rproto, r6, rsport, r7, rdport,
     h_id, ct_id, h_status, status) = _EVENT_HEAD.unpack_from(data, start)  # fmt: skip
    if (
        (o0, o1, o2, o3, o4, o5, o6, o7, r0, r1, r2, r3, r4, r5, r6, r7, h_id, h_status) != _EVENT_HEADERS
        or oproto not in _FAST_PROTOS
        or rproto not in _FAST_PROTOS
    ):
        return None
    c_orig = c_reply = None
    start_ns = stop_ns = None
    pos = start + _EVENT_HEAD.size
    if pos + _DESTROY_TAIL.size <= end:
        (h0, h1, o_packets, h2, o_bytes, h3, h4, r_packets, h5, r_bytes,
         h6, h7, start_ns, h8, stop_ns) = _DESTROY_TAIL.unpack_from(data, pos)  # fmt: skip
        if (h0, h1, h2, h3, h4, h5, h6, h7, h8) == _DESTROY_HEADERS:
            c_orig = _new(Counters, (o_packets, o_bytes))
            c_reply = _new(Counters, (r_packets, r_bytes))
            pos += _DESTROY_TAIL.size
        else:
            start_ns = stop_ns = None
    known = _KNOWN_RESTS.get(end - pos)
    if known is None or known[0].unpack_from(data, pos) != known[1]:
        rest = _walk_rest(data, pos, end, (c_orig, c_reply, start_ns, stop_ns))
        if rest is None:
            return None
        c_orig, c_reply, start_ns, stop_ns = rest
    inet_ntoa = socket.inet_ntoa
    # tuple.__new__ with every field given: a NamedTuple's own constructor costs three times as much,
    # and this runs three times for each event the router sees.
    orig = _new(Tuple, (inet_ntoa(osrc), inet_ntoa(odst), oproto, osport, odport, None, None, None))
    reply = _new(Tuple, (inet_ntoa(rsrc), inet_ntoa(rdst), rproto, rsport, rdport, None, None, None))
    return _new(Conntrack, (event, ct_id, status, orig, reply, c_orig, c_reply, start_ns, stop_ns))


def decode_conntrack(data: bytes | memoryview, start: int, end: int, event: str) -> Conntrack:
    """Decode the attributes of one conntrack message (after nlmsghdr and nfgenmsg)."""
    fast = _fast_event(data, start, end, event)
    return fast if fast is not None else _decode_general(data, start, end, event)


def decode_datagram(data: bytes | memoryview) -> Iterator[Conntrack | NetlinkError | None]:
    """Decode every netlink message in one datagram.

    Yields a Conntrack for conntrack messages, a NetlinkError for error/ack messages and None for
    NLMSG_DONE (the end of a dump). Other message types are skipped. Raises DecodeError on a
    malformed header; the messages before it have already been yielded.
    """
    for body, end, kind, flags, _seq in _messages(data):
        if kind == NLMSG_DONE:
            yield None
        elif kind == NLMSG_ERROR:
            yield NetlinkError(_error_code(data, body, end))
        elif kind >> 8 == NFNL_SUBSYS_CTNETLINK:
            if end - body < NFGEN_HDR.size:
                raise DecodeError("conntrack message without nfgenmsg")
            yield decode_conntrack(data, body + NFGEN_HDR.size, end, _event_name(kind, flags))


def _messages(data: bytes | memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """(body start, end, type, flags, sequence number) of each netlink message in one datagram;
    DecodeError on a length that does not fit, after the messages before it."""
    pos = 0
    size = len(data)
    while pos + NLMSG_HDR.size <= size:
        length, kind, flags, seq, _pid = NLMSG_HDR.unpack_from(data, pos)
        if length < NLMSG_HDR.size or pos + length > size:
            raise DecodeError(f"bad netlink message length {length} at offset {pos}")
        yield pos + NLMSG_HDR.size, pos + length, kind, flags, seq
        pos += (length + 3) & ~3


def _error_code(data: bytes | memoryview, body: int, end: int) -> int:
    """The errno of an NLMSG_ERROR (0 for an acknowledgement)."""
    if end - body < 4:
        raise DecodeError("short NLMSG_ERROR")
    (code,) = struct.unpack_from("=i", data, body)
    return -code


def _event_name(kind: int, flags: int) -> str:
    msg = kind & 0xFF
    if msg == IPCTNL_MSG_CT_DELETE:
        return "destroy"
    if flags & NLM_F_MULTI:
        return "dump"
    if msg == IPCTNL_MSG_CT_NEW and flags & (NLM_F_CREATE | NLM_F_EXCL):
        return "new"
    return "update"


def decode_event(data: bytes | memoryview) -> Conntrack | None:
    """The conntrack message of a datagram holding exactly one, as every event does; None for any
    other datagram, which :func:`decode_datagram` must walk. Saves the walk's generator per event."""
    size = len(data)
    if size < _EVENT_MIN:
        return None
    length, kind, flags, _seq, _pid = NLMSG_HDR.unpack_from(data, 0)
    if kind >> 8 != NFNL_SUBSYS_CTNETLINK or length < _EVENT_MIN or (length + 3) & ~3 != size:
        return None
    return decode_conntrack(data, _EVENT_MIN, length, _event_name(kind, flags))


_EVENT_MIN = NLMSG_HDR.size + NFGEN_HDR.size


def dump_request(seq: int = 1, family: int = socket.AF_INET, mark: tuple[int, int] | None = None) -> bytes:
    """An IPCTNL_MSG_CT_GET dump request for every conntrack entry of ``family``; with ``mark``
    (value, mask) the kernel only returns entries whose mark matches."""
    body = NFGEN_HDR.pack(family, 0, 0)
    if mark is not None:
        body += _attr(CTA_MARK, U32.pack(mark[0])) + _attr(CTA_MARK_MASK, U32.pack(mark[1]))
    return _get(NLM_F_DUMP, seq, body)


_GET_KIND = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET


def _get(flags: int, seq: int, body: bytes) -> bytes:
    """An IPCTNL_MSG_CT_GET request around ``body`` (nfgenmsg and attributes)."""
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), _GET_KIND, NLM_F_REQUEST | flags, seq, 0) + body


def _nest(kind: int, payload: bytes) -> bytes:
    return NLA_HDR.pack(4 + len(payload), kind | NLA_F_NESTED) + payload


def _attr(kind: int, payload: bytes) -> bytes:
    return NLA_HDR.pack(4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def event_socket(rcvbuf: int) -> socket.socket:
    """A non-blocking ctnetlink socket subscribed to NEW and DESTROY events.

    SO_RCVBUFFORCE (CAP_NET_ADMIN, which subscribing needs anyway) lifts the buffer above
    net.core.rmem_max; without it the kernel silently caps the size, so the size granted is checked.
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                         NETLINK_NETFILTER)  # fmt: skip
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((0, 0))
        for group in (NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY):
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
    except BaseException:
        sock.close()
        raise
    return sock


def granted_rcvbuf(sock: socket.socket) -> int:
    # The kernel reports twice the requested size (it counts its bookkeeping); halve it back.
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2


def dump_table(family: int = socket.AF_INET, bufsize: int = 1 << 20, mark: tuple[int, int] | None = None,
               ) -> list[Conntrack]:  # fmt: skip
    """Return every entry of the conntrack table (blocking; used at start and after lost events)."""
    entries: list[Conntrack] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, bufsize)
        sock.bind((0, 0))
        sock.settimeout(10.0)
        sock.send(dump_request(family=family, mark=mark))
        while True:
            data = sock.recv(bufsize)
            for item in decode_datagram(data):
                if item is None:
                    return entries
                if isinstance(item, NetlinkError):
                    if item.code:
                        raise OSError(item.code, f"conntrack dump: {os.strerror(item.code)}")
                    continue
                entries.append(item)


# A mark no entry is expected to carry: the reaping dump returns (next to) nothing.
REAP_MARK = (0x6E7A7A6C, 0xFFFFFFFF)


def reap_expired(family: int = socket.AF_INET) -> int:
    """Make the kernel delete expired entries now, so their DESTROY events (and stop timestamps) come
    when the connection ended, not when the garbage collector next passes (up to a minute later
    on a quiet table). A table dump deletes every expired entry it walks over; the mark filter
    keeps the answer empty, so this costs the kernel one walk and us almost nothing.
    Returns how many entries matched the mark anyway (normally 0).
    """
    return len(dump_table(family, bufsize=1 << 16, mark=REAP_MARK))


def is_enobufs(exc: OSError) -> bool:
    return exc.errno == errno.ENOBUFS


def _family(tup: Tuple) -> int:
    return socket.AF_INET6 if ":" in tup.src else socket.AF_INET


def encode_tuple(tup: Tuple) -> bytes:
    """The CTA_TUPLE_* nest body for a tuple, as the kernel lays it out (decode_tuple reads it)."""
    family = _family(tup)
    src, dst = (CTA_IP_V6_SRC, CTA_IP_V6_DST) if family == socket.AF_INET6 else (CTA_IP_V4_SRC, CTA_IP_V4_DST)
    ip = _attr(src, socket.inet_pton(family, tup.src)) + _attr(dst, socket.inet_pton(family, tup.dst))
    proto = _attr(CTA_PROTO_NUM, bytes([tup.proto]))
    if tup.icmp_id is not None:
        proto += _attr(CTA_PROTO_ICMP_ID, U16.pack(tup.icmp_id))
        proto += _attr(CTA_PROTO_ICMP_TYPE, bytes([tup.icmp_type or 0]))
        proto += _attr(CTA_PROTO_ICMP_CODE, bytes([tup.icmp_code or 0]))
    else:
        proto += _attr(CTA_PROTO_SRC_PORT, U16.pack(tup.sport or 0))
        proto += _attr(CTA_PROTO_DST_PORT, U16.pack(tup.dport or 0))
    return _nest(CTA_TUPLE_IP, ip) + _nest(CTA_TUPLE_PROTO, proto)


def get_request(orig: Tuple, seq: int) -> bytes:
    """An IPCTNL_MSG_CT_GET for the connection with this original tuple."""
    return _get(0, seq, NFGEN_HDR.pack(_family(orig), 0, 0) + _nest(CTA_TUPLE_ORIG, encode_tuple(orig)))


def _replies(
    data: bytes | memoryview, answers: list[int | None], ids: list[int | None], first_seq: int
) -> int:
    """Record the answers in one datagram of GET replies: an entry's remaining timeout (seconds),
    or None when it is gone or another connection (another id) now holds its tuple. Returns how
    many replies it held."""
    count = 0
    for body, end, kind, _flags, seq in _messages(data):
        index = seq - first_seq
        if not 0 <= index < len(answers):
            continue
        count += 1
        if kind == NLMSG_ERROR:
            code = _error_code(data, body, end)
            if code and code != errno.ENOENT:
                raise OSError(code, f"conntrack lookup: {os.strerror(code)}")
            answers[index] = None
        elif kind >> 8 == NFNL_SUBSYS_CTNETLINK:
            timeout = ct_id = None
            for attr, a, b in iter_attrs(data, body + NFGEN_HDR.size, end):
                if attr == CTA_TIMEOUT and b - a == 4:
                    timeout = U32.unpack_from(data, a)[0]
                elif attr == CTA_ID and b - a == 4:
                    ct_id = U32.unpack_from(data, a)[0]
            answers[index] = timeout if ids[index] is None or ct_id == ids[index] else None
    return count


# A GET for an IPv4 TCP or UDP connection is always this layout: one pack, the addresses and ports
# already in network order, the attribute headers as constants between them.
_GET_LEN = 72
# The tuple's headers are the ones the event decoder expects (_TUPLE_HEADERS: ip nest, source,
# destination, proto nest, number, source port, destination port), with the padding between them.
_GET_CONSTANTS = (
    NFGEN_HDR.pack(socket.AF_INET, 0, 0) + NLA_HDR.pack(52, CTA_TUPLE_ORIG | NLA_F_NESTED)
    + _TUPLE_HEADERS[0] + _TUPLE_HEADERS[1],
    _TUPLE_HEADERS[2],
    _TUPLE_HEADERS[3] + _TUPLE_HEADERS[4],
    b"\0\0\0" + _TUPLE_HEADERS[5],
    b"\0\0" + _TUPLE_HEADERS[6],
)  # fmt: skip
_GET_FAST = struct.Struct(
    "=IHHII" + "".join(f"{len(c)}s4s" for c in _GET_CONSTANTS[:2]) + f"{len(_GET_CONSTANTS[2])}sB"
    + f"{len(_GET_CONSTANTS[3])}s2s{len(_GET_CONSTANTS[4])}s2s2x"
)  # fmt: skip


def _get_fast(orig: Tuple, seq: int) -> bytes:
    if (
        orig.sport is None
        or orig.dport is None
        or orig.proto not in _FAST_PROTOS
        or orig.icmp_id is not None
        or ":" in orig.src
    ):
        return get_request(orig, seq)  # ICMP, IPv6: the general encoder
    c = _GET_CONSTANTS
    src, dst = socket.inet_aton(orig.src), socket.inet_aton(orig.dst)
    sport, dport = U16.pack(orig.sport), U16.pack(orig.dport)
    return _GET_FAST.pack(_GET_LEN, _GET_KIND, NLM_F_REQUEST, seq, 0,
                          c[0], src, c[1], dst, c[2], orig.proto, c[3], sport, c[4], dport)  # fmt: skip


class Lookup:
    """Looks connections up by their original tuple and conntrack id, on a socket kept open.

    Looking an entry up makes the kernel delete every expired entry it meets, as its garbage
    collector would, so a connection that ended is gone now and its DESTROY event follows. Called
    with a list of (id, original tuple); returns per connection the seconds it has left, or None
    when it is gone. Blocking, but the kernel answers each batch within its send.
    """

    def __init__(self, chunk: int = 256) -> None:
        self.chunk = chunk
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self.sock.bind((0, 0))
        except BaseException:
            self.sock.close()
            raise
        self.reader = mmsg.batch_reader(self.sock, 64, 4096)
        # Sequence numbers keep counting across calls, so a late reply to an earlier call (after
        # an error cut it short) is recognised as not ours and ignored.
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Lookup:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __call__(self, connections: list[tuple[int | None, Tuple]]) -> list[int | None]:
        answers: list[int | None] = [None] * len(connections)
        for first in range(0, len(connections), self.chunk):
            batch = connections[first : first + self.chunk]
            base = self.seq + 1 if self.seq + 1 + len(batch) < 1 << 32 else 1
            self.seq = base + len(batch) - 1
            # One datagram carries the whole batch: the kernel answers each request in turn, before
            # send returns; the wait below is only a guard, and short, since the daemon waits in
            # its event loop's thread.
            self.sock.send(b"".join(_get_fast(orig, base + i) for i, (_, orig) in enumerate(batch)))
            view: list[int | None] = [None] * len(batch)
            ids = [ct_id for ct_id, _ in batch]
            pending = len(batch)
            while pending > 0:
                datagrams, truncated = self.reader.read()
                pending -= truncated  # a reply too large to read: its connection counts as gone
                if not datagrams and not truncated and not select.select([self.sock], [], [], 1.0)[0]:
                    raise OSError(errno.ETIMEDOUT, "conntrack lookup: no reply within 1 s")
                for datagram in datagrams:
                    pending -= _replies(datagram, view, ids, base)
            answers[first : first + len(batch)] = view
        return answers


def lookup(connections: list[tuple[int | None, Tuple]]) -> list[int | None]:
    """:class:`Lookup` on a socket of its own."""
    with Lookup() as looker:
        return looker(connections)


__all__ = [
    "CTA_COUNTERS32_BYTES",
    "CTA_COUNTERS32_PACKETS",
    "CTA_COUNTERS_BYTES",
    "CTA_COUNTERS_ORIG",
    "CTA_COUNTERS_PACKETS",
    "CTA_COUNTERS_REPLY",
    "CTA_ID",
    "CTA_IP_V4_DST",
    "CTA_IP_V4_SRC",
    "CTA_IP_V6_DST",
    "CTA_IP_V6_SRC",
    "CTA_MARK",
    "CTA_MARK_MASK",
    "CTA_PROTOINFO",
    "CTA_PROTO_DST_PORT",
    "CTA_PROTO_ICMP_CODE",
    "CTA_PROTO_ICMP_ID",
    "CTA_PROTO_ICMP_TYPE",
    "CTA_PROTO_NUM",
    "CTA_PROTO_SRC_PORT",
    "CTA_STATUS",
    "CTA_TIMEOUT",
    "CTA_TIMESTAMP",
    "CTA_TIMESTAMP_EVENT",
    "CTA_TIMESTAMP_START",
    "CTA_TIMESTAMP_STOP",
    "CTA_TUPLE_IP",
    "CTA_TUPLE_ORIG",
    "CTA_TUPLE_PROTO",
    "CTA_TUPLE_REPLY",
    "IPCTNL_MSG_CT_DELETE",
    "IPCTNL_MSG_CT_GET",
    "IPCTNL_MSG_CT_NEW",
    "IPS_DST_NAT",
    "IPS_SRC_NAT",
    "NETLINK_ADD_MEMBERSHIP",
    "NETLINK_CAP_ACK",
    "NETLINK_NETFILTER",
    "NFGEN_HDR",
    "NFNLGRP_CONNTRACK_DESTROY",
    "NFNLGRP_CONNTRACK_NEW",
    "NFNL_SUBSYS_CTNETLINK",
    "NLA_F_NESTED",
    "NLA_HDR",
    "NLA_TYPE_MASK",
    "NLMSG_DONE",
    "NLMSG_ERROR",
    "NLMSG_HDR",
    "NLMSG_OVERRUN",
    "NLM_F_CREATE",
    "NLM_F_DUMP",
    "NLM_F_EXCL",
    "NLM_F_MULTI",
    "NLM_F_REQUEST",
    "PROTO_NAMES",
    "SOL_NETLINK",
    "SO_RCVBUFFORCE",
    "U16",
    "U32",
    "U64",
    "Conntrack",
    "Counters",
    "DecodeError",
    "NetlinkError",
    "Tuple",
]
