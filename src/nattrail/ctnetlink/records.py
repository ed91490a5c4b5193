"""What the decoders return and the daemon keeps: connections, their tuples and counters, netlink
errors, and the one exception decoding raises.

Apart from the rest so that code holding connections (the logger, the tests) needs no decoder, and
the decoders, the encoder and the sockets share one definition of each.
"""

from __future__ import annotations

from typing import NamedTuple

from nattrail.ctnetlink import constants

# Bound by assignment, not ``from … import``: CPython 3.11 compiles a method call on a name an import
# bound (``PROTO_NAMES.get``) as an attribute load that builds a bound method each time (see walk.py).
PROTO_NAMES = constants.PROTO_NAMES


class DecodeError(ValueError):
    """A netlink message that does not parse: counted and skipped, never fatal."""


# NamedTuples rather than dataclasses: the logger builds three per event, and these are the
# cheapest immutable, hashable records Python has.
class Tuple(NamedTuple):
    src: str
    dst: str
    proto: int
    sport: int | None = None  # TCP/UDP ports; None for ICMP
    dport: int | None = None
    icmp_id: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None


class Counters(NamedTuple):
    packets: int
    bytes: int


class Conntrack(NamedTuple):
    """One ctnetlink message: ``event`` is "new", "destroy" or "dump" (a table dump entry)."""

    event: str
    ct_id: int | None
    status: int
    orig: Tuple
    reply: Tuple
    counters_orig: Counters | None = None
    counters_reply: Counters | None = None
    start_ns: int | None = None  # CLOCK_REALTIME nanoseconds, with nf_conntrack_timestamp
    stop_ns: int | None = None

    @property
    def proto(self) -> str:
        return PROTO_NAMES.get(self.orig.proto, str(self.orig.proto))


class NetlinkError(NamedTuple):
    """An NLMSG_ERROR reply (code 0 is an acknowledgement)."""

    code: int
