"""ctnetlink decoding against datagrams captured from the lab router's kernel, and against damage."""

from __future__ import annotations

import binascii
import contextlib
import errno
import json
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import netns_driver_report, refuse_outside_private_netns
from hypothesis import given
from hypothesis import strategies as st

from nattrail import ctnetlink
from nattrail.ctnetlink import Conntrack, DecodeError, NetlinkError, Tuple
from nattrail.ctnetlink.constants import (
    CTA_COUNTERS_ORIG,
    CTA_COUNTERS_REPLY,
    CTA_TIMEOUT,
    CTA_TIMESTAMP,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_REPLY,
    IPCTNL_MSG_CT_DELETE,
    IPS_SRC_NAT,
    NLM_F_MULTI,
    NLMSG_ERROR,
    NLMSG_HDR,
    U32,
)

CAPTURE = Path(__file__).parent / "data" / "ctnetlink-capture.txt"


def captured() -> list[tuple[str, bytes]]:
    """(description, datagram) pairs from the capture file."""
    pairs: list[tuple[str, bytes]] = []
    note = ""
    for line in CAPTURE.read_text().splitlines():
        if line.startswith("#"):
            note = line[1:].strip()
        elif line.strip():
            pairs.append((note, binascii.unhexlify(line.strip())))
    return pairs


def decoded(index: int) -> list[Conntrack | NetlinkError | None]:
    return list(ctnetlink.decode_datagram(captured()[index][1]))


def test_new_tcp_event_names_client_server_and_masquerader() -> None:
    [ct] = decoded(0)
    assert isinstance(ct, Conntrack)
    assert ct.event == "new"
    assert ct.proto == "tcp"
    assert ct.status & IPS_SRC_NAT
    assert (ct.orig.src, ct.orig.sport, ct.orig.dst, ct.orig.dport) == (
        "10.77.0.10",
        37202,
        "203.0.113.10",
        31337,
    )
    assert (ct.reply.src, ct.reply.sport, ct.reply.dst, ct.reply.dport) == (
        "203.0.113.10",
        31337,
        "203.0.113.2",
        37202,
    )
    assert ct.ct_id is not None
    # NEW events carry neither counters nor timestamps: the kernel adds them to DESTROY only.
    assert ct.counters_orig is None and ct.start_ns is None


def test_destroy_event_carries_counters_and_timestamps() -> None:
    [new] = decoded(0)
    [ct] = decoded(2)
    assert isinstance(ct, Conntrack) and isinstance(new, Conntrack)
    assert ct.event == "destroy"
    assert ct.ct_id == new.ct_id and ct.orig == new.orig
    assert ct.counters_orig is not None and ct.counters_reply is not None
    # The client sent "hello from alice" (16 bytes) and got 70 back, over a handshake and an RST.
    assert ct.counters_orig.packets >= 3
    assert ct.counters_orig.bytes >= 16 + 3 * 40
    assert ct.counters_reply.bytes >= 70 + 2 * 40
    assert ct.start_ns is not None and ct.stop_ns is not None
    assert 0 < ct.stop_ns - ct.start_ns < 120 * 10**9


def test_icmp_and_udp_tuples() -> None:
    [icmp] = decoded(1)
    assert isinstance(icmp, Conntrack)
    assert icmp.proto == "icmp"
    assert icmp.orig.sport is None
    assert (icmp.orig.icmp_type, icmp.orig.icmp_code) == (8, 0)
    assert icmp.orig.icmp_id is not None
    [udp] = decoded(4)
    assert isinstance(udp, Conntrack)
    assert (udp.proto, udp.orig.dport, udp.event) == ("udp", 5353, "new")
    [udp_end] = decoded(5)
    assert isinstance(udp_end, Conntrack)
    assert udp_end.event == "destroy" and udp_end.counters_orig is not None


def test_dump_entries_end_with_done() -> None:
    entries = decoded(6)
    assert all(isinstance(e, Conntrack) and e.event == "dump" for e in entries)
    natted = [e for e in entries if isinstance(e, Conntrack) and e.status & IPS_SRC_NAT]
    not_natted = [e for e in entries if isinstance(e, Conntrack) and not e.status & IPS_SRC_NAT]
    # The client's SSH session to the router itself is not masqueraded; the rest are.
    assert [e.orig.dst for e in not_natted] == ["10.77.0.2"]
    assert len(natted) == 3
    assert decoded(7) == [None]


def test_dump_request_layout() -> None:
    request = ctnetlink.dump_request(seq=7)
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", request)
    assert length == len(request) == 20
    assert kind == (1 << 8) | 1  # NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET
    assert flags == 0x1 | 0x300
    assert seq == 7
    assert request[16] == socket.AF_INET


def test_error_message_is_reported_not_raised() -> None:
    message = struct.pack("=IHHII", 36, NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -1) + bytes(16)
    assert list(ctnetlink.decode_datagram(message)) == [NetlinkError(1)]


def test_truncated_datagram_raises_decode_error() -> None:
    data = captured()[2][1]
    with pytest.raises(DecodeError):
        list(ctnetlink.decode_datagram(data[: len(data) - 10]))


def test_attribute_length_past_the_end_raises() -> None:
    good = captured()[0][1]
    damaged = bytearray(good)
    # The first attribute after nlmsghdr (16) and nfgenmsg (4): claim it is huge.
    struct.pack_into("=H", damaged, 20, 0x7FF0)
    with pytest.raises(DecodeError):
        list(ctnetlink.decode_datagram(bytes(damaged)))


@given(st.binary(max_size=400), st.integers(min_value=0, max_value=400))
def test_arbitrary_damage_never_escapes_as_another_error(noise: bytes, cut: int) -> None:
    for _, datagram in captured():
        damaged = datagram[:cut] + noise
        with contextlib.suppress(DecodeError):
            list(ctnetlink.decode_datagram(damaged))


def tuple_blocks() -> list[tuple[bytes, int, int]]:
    """(message, start, end) of every orig/reply tuple in the captured conntrack messages."""
    blocks = []
    for datagram, start, end, _event in conntrack_messages():
        for attr, a, b in ctnetlink.iter_attrs(datagram, start, end):
            if attr in (CTA_TUPLE_ORIG, CTA_TUPLE_REPLY):
                blocks.append((datagram, a, b))
    return blocks


def test_fast_tuple_path_agrees_with_the_general_walk() -> None:
    fast_used = 0
    for datagram, a, b in tuple_blocks():
        walked = ctnetlink._walk_tuple(datagram, a, b)
        fast = ctnetlink._fast_tuple(datagram, a, b)
        if walked.proto in (6, 17):
            assert fast == walked  # the kernel's TCP/UDP layout takes the fast path
            fast_used += 1
        else:
            assert fast is None  # ICMP has no ports: the general walk
    assert fast_used >= 10


def test_fast_tuple_path_falls_back_on_an_unexpected_layout() -> None:
    datagram, a, b = next(blk for blk in tuple_blocks() if ctnetlink._walk_tuple(*blk).proto == 6)
    damaged = bytearray(datagram)
    # Swap the order of source and destination address attributes: valid netlink, other layout.
    src, dst = bytes(damaged[a + 4 : a + 12]), bytes(damaged[a + 12 : a + 20])
    damaged[a + 4 : a + 12], damaged[a + 12 : a + 20] = dst, src
    assert ctnetlink._fast_tuple(bytes(damaged), a, b) is None
    assert ctnetlink.decode_tuple(bytes(damaged), a, b) == ctnetlink._walk_tuple(datagram, a, b)


def conntrack_messages() -> list[tuple[bytes, int, int, str]]:
    """(datagram, attribute start, message end, event) of every captured conntrack message."""
    out = []
    for _, datagram in captured():
        pos = 0
        while pos + 16 <= len(datagram):
            length, kind, flags = struct.unpack_from("=IHH", datagram, pos)
            if kind >> 8 == 1:
                if kind & 0xFF == IPCTNL_MSG_CT_DELETE:
                    event = "destroy"
                else:
                    event = "dump" if flags & NLM_F_MULTI else "new"
                out.append((datagram, pos + 20, pos + length, event))
            pos += (length + 3) & ~3
    return out


def general_or_error(data: bytes, start: int, end: int, event: str) -> Conntrack | str:
    try:
        return ctnetlink._decode_general(data, start, end, event)
    except DecodeError:
        return "DecodeError"


def fast_or_error(data: bytes, start: int, end: int, event: str) -> Conntrack | str:
    try:
        return ctnetlink.decode_conntrack(data, start, end, event)
    except DecodeError:
        return "DecodeError"


def test_fast_event_path_takes_the_kernels_tcp_and_udp_events_and_agrees_with_the_walk() -> None:
    taken = 0
    for data, start, end, event in conntrack_messages():
        general = ctnetlink._decode_general(data, start, end, event)
        fast = ctnetlink._fast_event(data, start, end, event)
        if event in ("new", "destroy") and general.orig.proto in (6, 17):
            assert fast == general
            taken += 1
        else:
            assert fast is None  # ICMP, and dump entries (another attribute order): the general walk
        assert ctnetlink.decode_conntrack(data, start, end, event) == general
    assert taken >= 5  # new and destroy, TCP and UDP


def test_fast_event_path_reads_nests_in_another_order_through_the_walk() -> None:
    data, start, end, event = next(
        m for m in conntrack_messages() if m[3] == "destroy" and ctnetlink._fast_event(*m) is not None
    )
    before = ctnetlink.decode_conntrack(data, start, end, event)
    swapped = bytearray(data)
    # Swap the two members (12 bytes each) of the counter and timestamp nests: valid netlink that
    # the fixed layout does not match.
    for kind, a, b in ctnetlink.iter_attrs(data, start, end):
        if kind in (CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY, CTA_TIMESTAMP):
            assert b - a == 24
            swapped[a : a + 12], swapped[a + 12 : b] = data[a + 12 : b], data[a : a + 12]
    after = ctnetlink.decode_conntrack(bytes(swapped), start, end, event)
    assert after == before == ctnetlink._decode_general(bytes(swapped), start, end, event)
    assert after.counters_orig is not None and after.stop_ns is not None


@given(st.integers(min_value=0, max_value=600), st.integers(min_value=0, max_value=255), st.data())
def test_fast_event_path_and_walk_agree_on_damaged_messages(
    offset: int, value: int, data: st.DataObject
) -> None:
    messages = conntrack_messages()
    datagram, start, end, event = messages[data.draw(st.integers(0, len(messages) - 1))]
    damaged = bytearray(datagram)
    if start + offset < end:
        damaged[start + offset] = value
    cut = data.draw(st.integers(min_value=start, max_value=end))
    damaged_bytes = bytes(damaged[:cut])
    assert fast_or_error(damaged_bytes, start, cut, event) == general_or_error(
        damaged_bytes, start, cut, event
    )


def test_decode_event_is_the_single_message_of_an_event_datagram() -> None:
    singles = 0
    for _, datagram in captured():
        walked = list(ctnetlink.decode_datagram(datagram))
        event = ctnetlink.decode_event(datagram)
        if len(walked) == 1 and isinstance(walked[0], Conntrack):
            assert event == walked[0]
            singles += 1
        else:
            assert event is None  # a dump's batch, NLMSG_DONE: the walk's job
    assert singles >= 6


@given(st.integers(min_value=0, max_value=400), st.binary(max_size=8), st.data())
def test_decode_event_never_disagrees_with_the_walk(cut: int, noise: bytes, data: st.DataObject) -> None:
    pairs = captured()
    datagram = pairs[data.draw(st.integers(0, len(pairs) - 1))][1]
    damaged = datagram[:cut] + noise
    try:
        walked: list[object] | str = list(ctnetlink.decode_datagram(damaged))
    except DecodeError:
        walked = "DecodeError"
    try:
        event = ctnetlink.decode_event(damaged)
    except DecodeError:
        assert walked == "DecodeError"
        return
    if event is not None:
        assert walked == [event]


# --- looking connections up ------------------------------------------------------------------------------


def test_encoded_tuples_are_the_kernels_layout() -> None:
    """The request's tuple nest is byte for byte what the kernel itself sends for the same tuple."""
    for datagram, a, b in tuple_blocks():
        tup = ctnetlink.decode_tuple(datagram, a, b)
        if tup.icmp_id is None:
            assert ctnetlink.encode_tuple(tup) == bytes(datagram[a:b])


@st.composite
def tuples(draw: st.DrawFn) -> Tuple:
    version = draw(st.sampled_from([4, 6]))
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    # Written as the kernel's addresses are decoded (inet_ntop), so that the round trip compares equal.
    src, dst = (
        draw(st.ip_addresses(v=version).map(lambda a: socket.inet_ntop(family, a.packed))) for _ in "sd"
    )
    proto = draw(st.sampled_from([6, 17, 1]))
    if proto == 1:
        icmp_id, icmp_type, icmp_code = (draw(st.integers(0, top)) for top in (65535, 255, 255))
        return Tuple(src, dst, proto, icmp_id=icmp_id, icmp_type=icmp_type, icmp_code=icmp_code)
    return Tuple(src, dst, proto, sport=draw(st.integers(0, 65535)), dport=draw(st.integers(0, 65535)))


@given(tuples())
def test_encoded_tuple_decodes_to_itself(tup: Tuple) -> None:
    data = ctnetlink.encode_tuple(tup)
    assert ctnetlink.decode_tuple(data, 0, len(data)) == tup


@given(tuples(), st.integers(0, 2**32 - 1))
def test_fixed_layout_request_is_the_general_one(tup: Tuple, seq: int) -> None:
    assert ctnetlink._get_fast(tup, seq) == ctnetlink.get_request(tup, seq)


def reply(message: bytes, seq: int) -> bytes:
    """One netlink message with its sequence number replaced."""
    length, kind, flags, _seq, pid = NLMSG_HDR.unpack_from(message, 0)
    return NLMSG_HDR.pack(length, kind, flags, seq, pid) + message[NLMSG_HDR.size : length]


def error(code: int, seq: int) -> bytes:
    body = struct.pack("=i", -code) + NLMSG_HDR.pack(16, 0, 0, seq, 0)
    return NLMSG_HDR.pack(16 + len(body), NLMSG_ERROR, 0x100, seq, 0) + body


def test_lookup_replies_give_time_left_or_gone() -> None:
    dump = captured()[6][1]
    entry = ctnetlink.decode_conntrack(dump, 20, NLMSG_HDR.unpack_from(dump, 0)[0], "dump")
    timeout = next(
        U32.unpack_from(dump, a)[0]
        for kind, a, _ in ctnetlink.iter_attrs(dump, 20, NLMSG_HDR.unpack_from(dump, 0)[0])
        if kind == CTA_TIMEOUT
    )
    answers: list[int | None] = [-1, -1, -1]
    ids = [entry.ct_id, None, (entry.ct_id or 0) + 1]
    # Each reply is its own datagram in practice; one datagram with all three reads the same.
    datagram = reply(dump, 7) + error(errno.ENOENT, 8) + reply(dump, 9)
    assert ctnetlink._replies(datagram, answers, ids, 7) == 3
    # Alive: its seconds left; gone; and a newer connection on the same tuple (another id): gone.
    assert answers == [timeout, None, None]
    assert ctnetlink._replies(error(errno.ENOENT, 99), answers, ids, 7) == 0  # not ours: ignored
    with pytest.raises(OSError, match="conntrack lookup"):
        ctnetlink._replies(error(errno.EINVAL, 8), answers, ids, 7)


def test_lookup_against_the_real_kernel() -> None:
    """In a private network namespace: a live connection reports its time left, the same tuple
    under another id is gone, and an expired entry is deleted by the lookup, its DESTROY following."""
    report = netns_driver_report(
        __file__, "--lookup-driver", untested="conntrack lookups against the real kernel"
    )
    assert report["alive"][0] > 1000  # established: days
    assert report["other_id"] == [None]
    assert report["reset"][0] is not None and report["reset"][0] <= 1  # CLOSE: one second here
    assert report["expired"] == [None]
    assert report["destroyed"] == [report["ct_id"]]
    assert report["alive6"][0] > 1000


def lookup_driver() -> dict[str, Any]:
    """Runs inside ``unshare --net``: SNAT and sysctls here never touch the host."""
    refuse_outside_private_netns()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    Path("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close").write_text("1\n")
    rules = "table ip t {\n chain post {\n  type nat hook postrouting priority 100;\n"
    rules += "  ip daddr 127.0.0.3 snat to 127.0.0.2\n }\n}\n"
    # A ct rule for IPv6, or the kernel does not track IPv6 in this namespace at all.
    rules += (
        "table ip6 t6 {\n chain out {\n  type filter hook output priority 0;\n  ct state new accept\n }\n}\n"
    )
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
    events = ctnetlink.event_socket(1 << 20)
    events.setblocking(False)

    def drain() -> list[Conntrack]:
        out: list[Conntrack] = []
        with contextlib.suppress(BlockingIOError):
            while True:
                out += [e for e in ctnetlink.decode_datagram(events.recv(65536)) if isinstance(e, Conntrack)]
        return out

    with socket.socket() as server, ctnetlink.Lookup() as looker:  # one socket for every call below
        server.bind(("127.0.0.3", 7000))
        server.listen(4)
        client = socket.create_connection(("127.0.0.3", 7000), timeout=5)
        accepted, _ = server.accept()
        time.sleep(0.1)
        new = next(e for e in drain() if e.event == "new" and e.orig.dport == 7000)
        key = (new.ct_id, new.orig)
        report: dict[str, Any] = {"ct_id": new.ct_id, "alive": ctnetlink.lookup([key])}
        report["other_id"] = looker([((new.ct_id or 0) ^ 1, new.orig)])
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        accepted.close()
        time.sleep(0.2)
        report["reset"] = looker([key])
        drain()
        time.sleep(1.5)  # past the CLOSE timeout: expired, but nothing has touched it yet
        report["expired"] = looker([key])
        time.sleep(0.1)
        report["destroyed"] = [e.ct_id for e in drain() if e.event == "destroy" and e.orig.dport == 7000]
    with socket.socket(socket.AF_INET6) as server6:  # IPv6 goes through the general encoder
        server6.bind(("::1", 7006))
        server6.listen(4)
        client6 = socket.create_connection(("::1", 7006), timeout=5)
        time.sleep(0.1)
        new6 = next(e for e in drain() if e.event == "new" and e.orig.dport == 7006)
        report["alive6"] = ctnetlink.lookup([(new6.ct_id, new6.orig)])
        client6.close()
    return report


if __name__ == "__main__":
    if sys.argv[1:] != ["--lookup-driver"]:
        raise SystemExit("usage: test_ctnetlink.py --lookup-driver (inside unshare --net)")
    print(json.dumps(lookup_driver()))


def test_destroy_counters_and_timestamps_have_the_fixed_layout_the_fast_path_reads() -> None:
    # The fast path reads a DESTROY's counter and timestamp nests in one unpack when they have the
    # layout the kernel sends; this pins that layout to the captured events, so a kernel that changes
    # it shows up here rather than as a silent fall back to the slower walk.
    destroys = [m for m in conntrack_messages() if m[3] == "destroy" and ctnetlink._fast_event(*m)]
    assert destroys
    for data, start, _end, _event in destroys:
        pos = start + ctnetlink._EVENT_HEAD.size
        tail = ctnetlink._DESTROY_TAIL.unpack_from(data, pos)
        headers = tuple(value for value in tail if isinstance(value, bytes))
        assert headers == ctnetlink._DESTROY_HEADERS


def test_what_follows_the_fast_layout_is_one_the_decoder_knows_without_a_walk() -> None:
    # Timeout, TCP state and the event's time stamp follow what the fast path reads; the decoder
    # knows their layouts by length and skips them without walking. Pinned to the captured events,
    # TCP and UDP, NEW and DESTROY, as for the counters above.
    kinds = set()
    for data, start, end, event in conntrack_messages():
        fast = ctnetlink._fast_event(data, start, end, event)
        if fast is None:
            continue
        pos = start + ctnetlink._EVENT_HEAD.size
        if event == "destroy":
            pos += ctnetlink._DESTROY_TAIL.size
        layout, headers = ctnetlink._KNOWN_RESTS[end - pos]
        assert layout.unpack_from(data, pos) == headers
        kinds.add((event, fast.orig.proto))
    assert kinds == {("new", 6), ("new", 17), ("destroy", 6), ("destroy", 17)}
