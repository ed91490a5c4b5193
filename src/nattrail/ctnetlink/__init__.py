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
from nattrail.ctnetlink.decode import (
    _decode_general as _decode_general,
)
from nattrail.ctnetlink.decode import (
    _replies as _replies,
)
from nattrail.ctnetlink.decode import (
    decode_conntrack,
    decode_datagram,
    decode_event,
    decode_tuple,
)
from nattrail.ctnetlink.fast import (
    _DESTROY_HEADERS as _DESTROY_HEADERS,
)
from nattrail.ctnetlink.fast import (
    _DESTROY_TAIL as _DESTROY_TAIL,
)
from nattrail.ctnetlink.fast import (
    _EVENT_HEAD as _EVENT_HEAD,
)
from nattrail.ctnetlink.fast import _FAST_PROTOS, _TUPLE_HEADERS
from nattrail.ctnetlink.fast import (
    _KNOWN_RESTS as _KNOWN_RESTS,
)
from nattrail.ctnetlink.fast import (
    _fast_event as _fast_event,
)
from nattrail.ctnetlink.fast import (
    _fast_tuple as _fast_tuple,
)
from nattrail.ctnetlink.records import (
    Conntrack,
    Counters,
    DecodeError,
    NetlinkError,
    Tuple,
)
from nattrail.ctnetlink.walk import (
    _walk_tuple as _walk_tuple,
)
from nattrail.ctnetlink.walk import (
    iter_attrs,
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
    "decode_conntrack",
    "decode_datagram",
    "decode_event",
    "decode_tuple",
    "iter_attrs",
]
