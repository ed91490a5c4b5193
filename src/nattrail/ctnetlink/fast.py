"""The kernel's usual event layouts, read in one unpack each: the hot path of every NEW and DESTROY.

The kernel sends NEW and DESTROY events for IPv4 TCP and UDP in one layout; reading it with fixed
:mod:`struct` layouts and comparing every attribute header with the expected bytes costs a fraction
of the general walk (:mod:`nattrail.ctnetlink.walk`). Each function here returns None for anything
else, and the caller takes the walk; the tests hold the two to the same answers. The names these
functions use are module globals of this module (no lookups through other modules per event).
"""

from __future__ import annotations

import socket
import struct

from nattrail.ctnetlink import constants
from nattrail.ctnetlink.constants import (
    CTA_COUNTERS_ORIG,
    CTA_TIMESTAMP,
    NLA_HDR,
    NLA_TYPE_MASK,
)
from nattrail.ctnetlink.records import Conntrack, Counters, DecodeError, Tuple
from nattrail.ctnetlink.walk import _counters, _timestamps

# The layout the kernel uses for an IPv4 tuple with ports (TCP, UDP): the fast path reads the
# 48 bytes in one unpack and checks the five attribute-header chunks against the expected ones;
# anything else takes the general walk. Headers are built with NLA_HDR, so in host byte order.
_FAST = struct.Struct("8s4s4s4s8sB3x4s2s2x4s2s2x")
_FAST_HEADERS = (
    NLA_HDR.pack(20, constants.CTA_TUPLE_IP | constants.NLA_F_NESTED)
    + NLA_HDR.pack(8, constants.CTA_IP_V4_SRC),
    NLA_HDR.pack(8, constants.CTA_IP_V4_DST),
    NLA_HDR.pack(28, constants.CTA_TUPLE_PROTO | constants.NLA_F_NESTED)
    + NLA_HDR.pack(5, constants.CTA_PROTO_NUM),
    NLA_HDR.pack(6, constants.CTA_PROTO_SRC_PORT),
    NLA_HDR.pack(6, constants.CTA_PROTO_DST_PORT),
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


# The layout of the kernel's NEW and DESTROY events for IPv4 TCP and UDP (ctnetlink_conntrack_event):
# the original and reply tuples, the id and the status, in that order and at fixed offsets. The fast
# path reads these 120 bytes in one unpack and checks every attribute header against the expected
# bytes; the attributes after them are walked. Anything else takes the general walk.
# nest, ip nest, source header, source, destination header, destination, proto nest, number header,
# number, source port header, source port, destination port header, destination port
_TUPLE_FMT = "4s4s4s4s4s4s4s4sB3x4sH2x4sH2x"
_EVENT_HEAD = struct.Struct("!" + _TUPLE_FMT + _TUPLE_FMT + "4sI4sI")
_TUPLE_HEADERS = (
    NLA_HDR.pack(20, constants.CTA_TUPLE_IP | constants.NLA_F_NESTED),
    NLA_HDR.pack(8, constants.CTA_IP_V4_SRC),
    NLA_HDR.pack(8, constants.CTA_IP_V4_DST),
    NLA_HDR.pack(28, constants.CTA_TUPLE_PROTO | constants.NLA_F_NESTED),
    NLA_HDR.pack(5, constants.CTA_PROTO_NUM),
    NLA_HDR.pack(6, constants.CTA_PROTO_SRC_PORT),
    NLA_HDR.pack(6, constants.CTA_PROTO_DST_PORT),
)
_EVENT_HEADERS = (
    NLA_HDR.pack(52, constants.CTA_TUPLE_ORIG | constants.NLA_F_NESTED),
    *_TUPLE_HEADERS,
    NLA_HDR.pack(52, constants.CTA_TUPLE_REPLY | constants.NLA_F_NESTED),
    *_TUPLE_HEADERS,
    NLA_HDR.pack(8, constants.CTA_ID),
    NLA_HDR.pack(8, constants.CTA_STATUS),
)
# Counters and timestamps: nests of two 64-bit values (start alone while a connection lives).
_PAIR = struct.Struct("!4sQ4sQ")
_COUNTER_HEADERS = (
    NLA_HDR.pack(12, constants.CTA_COUNTERS_PACKETS),
    NLA_HDR.pack(12, constants.CTA_COUNTERS_BYTES),
)
_STAMP_HEADERS = (
    NLA_HDR.pack(12, constants.CTA_TIMESTAMP_START),
    NLA_HDR.pack(12, constants.CTA_TIMESTAMP_STOP),
)
# Attributes the general walk would take from later in the message: their presence there means
# the layout is not the one the fast path knows.
_HEAD_KINDS = frozenset(
    {constants.CTA_TUPLE_ORIG, constants.CTA_TUPLE_REPLY, constants.CTA_STATUS, constants.CTA_ID}
)
# A DESTROY's next 84 bytes: both counter nests and the timestamp nest, read in one unpack as well
# (they are what a close record is made of; three nests walked one by one cost more than decoding
# the tuples).
_DESTROY_TAIL = struct.Struct("!" + "4s4sQ4sQ" * 3)
_DESTROY_HEADERS = (
    NLA_HDR.pack(28, CTA_COUNTERS_ORIG | constants.NLA_F_NESTED),
    *_COUNTER_HEADERS,
    NLA_HDR.pack(28, constants.CTA_COUNTERS_REPLY | constants.NLA_F_NESTED),
    *_COUNTER_HEADERS,
    NLA_HDR.pack(28, CTA_TIMESTAMP | constants.NLA_F_NESTED),
    *_STAMP_HEADERS,
)
_COUNTER_KINDS = frozenset({CTA_COUNTERS_ORIG, constants.CTA_COUNTERS_REPLY})
# What the kernel sends after those, none of it used here, by its length: TCP's NEW (the timeout,
# TCP's state, the event's time stamp), UDP's NEW, TCP's DESTROY (TCP's state), UDP's DESTROY. A
# rest of one of these lengths with exactly these headers needs no walk; anything else is walked.
_REST_TIMEOUT = NLA_HDR.pack(8, constants.CTA_TIMEOUT)
_REST_STAMP = NLA_HDR.pack(12, constants.CTA_TIMESTAMP_EVENT)
_KNOWN_RESTS = {
    68: (
        struct.Struct("!4s4x4s44x4s8x"),
        (_REST_TIMEOUT, NLA_HDR.pack(48, constants.CTA_PROTOINFO | constants.NLA_F_NESTED), _REST_STAMP),
    ),
    20: (struct.Struct("!4s4x4s8x"), (_REST_TIMEOUT, _REST_STAMP)),
    28: (
        struct.Struct("!4s12x4s8x"),
        (NLA_HDR.pack(16, constants.CTA_PROTOINFO | constants.NLA_F_NESTED), _REST_STAMP),
    ),
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
