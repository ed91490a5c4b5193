"""Building requests for the kernel: table dumps and lookups of one connection by its tuple.

The general encoder lays attributes out as the kernel does, so that :func:`decode_tuple` reads back
what :func:`encode_tuple` wrote (the tests check both ways). Lookups of IPv4 TCP and UDP connections,
hundreds per reaping pass, take a fixed layout packed in one call instead (:func:`_get_fast`),
built from the same attribute headers the fast event decoder expects.
"""

from __future__ import annotations

import socket
import struct

from nattrail.ctnetlink import constants
from nattrail.ctnetlink.constants import (
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
    CTA_TUPLE_IP,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_PROTO,
    IPCTNL_MSG_CT_GET,
    NFNL_SUBSYS_CTNETLINK,
    NLA_F_NESTED,
    NLM_F_DUMP,
    NLM_F_REQUEST,
)
from nattrail.ctnetlink.fast import _FAST_PROTOS, _TUPLE_HEADERS
from nattrail.ctnetlink.records import Tuple

# The layouts this module calls methods on (``NLA_HDR.unpack_from(...)``), bound by assignment and not
# by ``from … import``: CPython 3.11 compiles a method call on a name an import bound as an attribute
# load plus a call (it expects a module there), which builds a bound method at every call (50-80 ns
# more per unpack_from, measured); an assigned name keeps the LOAD_METHOD fast path, as when defined here.
NFGEN_HDR, NLA_HDR, NLMSG_HDR, U16, U32 = (
    constants.NFGEN_HDR,
    constants.NLA_HDR,
    constants.NLMSG_HDR,
    constants.U16,
    constants.U32,
)


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
