"""The open and close records' JSON: the connection's members and the scalars around them.

Open and close records are the daemon's hot path (one of each per connection), so their members are
formatted from pre-encoded templates, byte for byte what :func:`nattrail.jsonlog.dumps_flat` would write
(a property test in tests/unit/test_masqlog.py holds them to it); anything the templates do not cover
(ICMP, a message without an id or a port) goes to the general encoder.
"""

from __future__ import annotations

from typing import Any

from nattrail import ident
from nattrail.ctnetlink import Conntrack
from nattrail.ctnetlink.constants import PROTO_NAMES
from nattrail.jsonlog import dumps_flat, encode_basestring


def connection_fields(ct: Conntrack) -> dict[str, Any]:
    """Who talked to whom: the original tuple's source is the client; the reply tuple holds the
    server as actually reached (after any DNAT) and the masquerader's address and port."""
    orig, reply = ct.orig, ct.reply
    out: dict[str, Any] = {
        "proto": ct.proto,
        "ct_id": ct.ct_id,
        "client_ip": orig.src,
        "client_port": orig.sport,
        "server_ip": reply.src,
        "server_port": reply.sport,
        "masq_ip": reply.dst,
        "masq_port": reply.dport,
    }
    if orig.icmp_id is not None:
        out.update(icmp_type=orig.icmp_type, icmp_code=orig.icmp_code, icmp_id=orig.icmp_id)
        out["masq_icmp_id"] = reply.icmp_id
    return out


# The members connection_fields gives, for TCP and UDP, pre-encoded: open and close records are
# the daemon's hot path, and formatting them from a template costs a fraction of a dict and an encoder.
_CONN_FMT = (
    '"proto":%s,"ct_id":%d,"client_ip":%s,"client_port":%d,"server_ip":%s,"server_port":%d,'
    '"masq_ip":%s,"masq_port":%d'
)
_PROTO_JSON = {number: encode_basestring(name) for number, name in PROTO_NAMES.items()}


def connection_json(ct: Conntrack) -> str:
    """The JSON members (``"key":value,...``) of :func:`connection_fields`, in the same order."""
    orig, reply = ct.orig, ct.reply
    proto = _PROTO_JSON.get(orig.proto)
    if (
        proto is None
        or ct.ct_id is None
        or orig.sport is None
        or reply.sport is None
        or reply.dport is None
        or orig.icmp_id is not None
    ):
        return dumps_flat(connection_fields(ct))[1:-1]  # ICMP, or a message without an id or a port
    client, server, masq = (
        encode_basestring(orig.src),
        encode_basestring(reply.src),
        encode_basestring(reply.dst),
    )
    return _CONN_FMT % (proto, ct.ct_id, client, orig.sport, server, reply.sport, masq, reply.dport)


# The members a close adds to the connection's (see tracker.MasqLogger._close), as a %-format.
_CLOSE_FULL = (
    '%s,"opened":"%s","closed":"%s","duration":%r,'
    '"orig_packets":%d,"orig_bytes":%d,"reply_packets":%d,"reply_bytes":%d'
)


def _seconds(ns: int) -> float:
    """Nanoseconds as seconds rounded to the microsecond (half up): what ``round(ns / 1e9, 6)``
    gives but on an exact half, in integers, without round()'s decimal conversions (closes are half
    of all records)."""
    return (ns + 500) // 1000 / 1e6


def _json(value: str | float | None) -> str:
    """JSON for the scalars of open and close records, exactly as dumps_flat encodes them."""
    if value is None:
        return "null"
    if type(value) is str:
        return encode_basestring(value)
    return repr(value) if type(value) is float else str(value)


# The members an open record gets when its ident query is skipped, by the limiter's reason.
_SKIPPED = {
    reason: f',"user":null,"ident_error":{encode_basestring(f"skipped:{reason}")}'
    for reason in ident.SKIP_REASONS
}
