"""Conntrack over raw netlink (ctnetlink), with the standard library only.

Enough of the protocol to follow connections: subscribe to the NEW and DESTROY event groups, dump the
table, and decode each message into a :class:`Conntrack`. The layouts come from the kernel's uapi headers
(linux/netlink.h, linux/netfilter/nfnetlink.h, nfnetlink_conntrack.h); every number used is named in
:mod:`.constants`. Decoding never trusts lengths: a truncated or malformed message raises
:class:`DecodeError`, which the caller counts instead of crashing on.

One job per module, each importing the names it uses directly (the event decoders run per event, so
no attribute lookups through module objects there):

- ``constants``: the protocol's numbers and header layouts, nothing else;
- ``records``: what decoding returns (Conntrack, Tuple, Counters, NetlinkError) and DecodeError;
- ``walk``: the general attribute walk, any order and layout;
- ``fast``: the kernel's usual IPv4 TCP/UDP event layouts, read in one unpack (the hot path);
- ``decode``: the entry points (datagram, event, message, tuple, lookup replies): fast layout first,
  then the walk;
- ``encode``: dump and lookup requests;
- ``sockets``: the event socket, table dumps and reaping, lookups.

This package re-exports what its users call (the records, the decode and encode entry points, the
sockets) and the private functions the tests reach, so that ``ctnetlink.decode_datagram`` works as it
did when it was one module; the protocol's numbers are read from :mod:`.constants` itself.
Names with an underscore are private to the package: its modules share them, nothing outside should.
"""

from __future__ import annotations

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
from nattrail.ctnetlink.encode import (
    _get_fast as _get_fast,
)
from nattrail.ctnetlink.encode import (
    dump_request,
    encode_tuple,
    get_request,
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
from nattrail.ctnetlink.sockets import (
    REAP_MARK,
    Lookup,
    dump_table,
    event_socket,
    granted_rcvbuf,
    is_enobufs,
    lookup,
    reap_expired,
)
from nattrail.ctnetlink.walk import (
    _walk_tuple as _walk_tuple,
)
from nattrail.ctnetlink.walk import (
    iter_attrs,
)

__all__ = [
    "REAP_MARK",
    "Conntrack",
    "Counters",
    "DecodeError",
    "Lookup",
    "NetlinkError",
    "Tuple",
    "decode_conntrack",
    "decode_datagram",
    "decode_event",
    "decode_tuple",
    "dump_request",
    "dump_table",
    "encode_tuple",
    "event_socket",
    "get_request",
    "granted_rcvbuf",
    "is_enobufs",
    "iter_attrs",
    "lookup",
    "reap_expired",
]
