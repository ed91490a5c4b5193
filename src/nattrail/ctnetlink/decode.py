"""Decoding what the kernel sends: datagrams, their netlink messages, conntrack messages, tuples.

The entry points callers use. Each tries the kernel's usual layout first
(:mod:`nattrail.ctnetlink.fast`) and falls back to the general walk (:mod:`nattrail.ctnetlink.walk`).
Decoding never trusts lengths: a truncated or malformed message raises :class:`DecodeError`, which
the caller counts instead of crashing on.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator

from nattrail.ctnetlink import constants
from nattrail.ctnetlink.constants import (
    CTA_COUNTERS_ORIG,
    CTA_COUNTERS_REPLY,
    CTA_ID,
    CTA_STATUS,
    CTA_TIMEOUT,
    CTA_TIMESTAMP,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_REPLY,
    IPCTNL_MSG_CT_DELETE,
    IPCTNL_MSG_CT_NEW,
    NFGEN_HDR,
    NFNL_SUBSYS_CTNETLINK,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_MULTI,
    NLMSG_DONE,
    NLMSG_ERROR,
)
from nattrail.ctnetlink.fast import _fast_event, _fast_tuple
from nattrail.ctnetlink.records import Conntrack, DecodeError, NetlinkError, Tuple
from nattrail.ctnetlink.walk import _counters, _exact, _timestamps, _walk_tuple, iter_attrs

# The layouts this module calls methods on (``NLA_HDR.unpack_from(...)``), bound by assignment and not
# by ``from … import``: CPython 3.11 compiles a method call on a name an import bound as an attribute
# load plus a call (it expects a module there), which builds a bound method at every call (50-80 ns
# more per unpack_from, measured); an assigned name keeps the LOAD_METHOD fast path, as when defined here.
NLMSG_HDR, U32 = constants.NLMSG_HDR, constants.U32


def decode_tuple(data: bytes | memoryview, start: int, end: int) -> Tuple:
    if end > len(data):
        raise DecodeError(f"tuple runs past the message ({end} > {len(data)})")
    fast = _fast_tuple(data, start, end)
    return fast if fast is not None else _walk_tuple(data, start, end)


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
