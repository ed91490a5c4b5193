"""`nattrail masqlog`: the logger's records from captured kernel events, its configuration, and the whole
daemon against the real kernel inside a private network namespace (real SNAT, real conntrack events,
a real ident exchange, a real receive-buffer overrun). This file is also that namespace's driver script
(``python test_masqlog.py --netns-driver``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import netns_driver_report, refuse_outside_private_netns
from hypothesis import given
from hypothesis import strategies as st
from test_ctnetlink import captured

from nattrail import ctnetlink
from nattrail.ctnetlink import Conntrack, Counters, Tuple
from nattrail.ctnetlink.constants import IPS_SRC_NAT
from nattrail.jsonlog import EpochStamp, JsonLog, dumps_flat
from nattrail.masqlog.config import Config, ConfigError, build_config
from nattrail.masqlog.daemon import Daemon, Reaping
from nattrail.masqlog.kernel import shortest_timeout, walk_threshold
from nattrail.masqlog.records import _seconds, connection_fields
from nattrail.masqlog.service import run
from nattrail.masqlog.tracker import MasqLogger, Stats

NOW_NS = int(datetime(2026, 11, 21, 3, 12, 0, tzinfo=UTC).timestamp()) * 10**9


def events() -> list[Conntrack]:
    out = []
    for _, datagram in captured():
        out.extend(item for item in ctnetlink.decode_datagram(datagram) if isinstance(item, Conntrack))
    return out


def datagram_of(event: Conntrack) -> bytes:
    """The captured datagram the kernel sent ``event`` in."""
    return next(d for _, d in captured() if event in list(ctnetlink.decode_datagram(d)))


def make_logger(**settings: Any) -> tuple[MasqLogger, io.StringIO]:
    stream = io.StringIO()
    config = replace(Config(), ident=False, **settings)
    logger = MasqLogger(config, JsonLog(stream=stream, fields={"daemon": "masqlog"}), clock_ns=lambda: NOW_NS)
    return logger, stream


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_open_and_close_records_from_captured_events() -> None:
    logger, stream = make_logger()
    tcp_new, _icmp, tcp_end = events()[:3]
    logger.handle(tcp_new)
    logger.handle(tcp_end)
    logger.flush()
    opened, closed = records(stream)
    assert opened["event"] == "open"
    assert opened["daemon"] == "masqlog"
    expected = {
        "proto": "tcp",
        "client_ip": "10.77.0.10",
        "client_port": 37202,
        "server_ip": "203.0.113.10",
        "server_port": 31337,
        "masq_ip": "203.0.113.2",
        "masq_port": 37202,
        "ct_id": tcp_new.ct_id,
    }
    assert expected.items() <= opened.items()
    assert opened["opened"] == "2026-11-21T03:12:00.000000Z"
    assert closed["event"] == "close"
    assert expected.items() <= closed.items()
    # Start and end come from the kernel's conntrack timestamps, not from when we heard of them.
    assert closed["opened"] != opened["opened"]
    assert closed["duration"] == pytest.approx((tcp_end.stop_ns - tcp_end.start_ns) / 1e9, abs=1e-6)
    assert closed["orig_bytes"] == tcp_end.counters_orig.bytes
    assert closed["reply_packets"] == tcp_end.counters_reply.packets
    assert logger.tracked == {}


def test_only_configured_protocols_and_only_source_nat() -> None:
    logger, stream = make_logger()
    for ct in events():
        logger.handle(ct)
    logger.flush()
    assert {r["proto"] for r in records(stream)} == {"tcp"}
    logger, stream = make_logger(protocols=("tcp", "udp", "icmp"))
    for ct in events():
        logger.handle(ct)
    logger.flush()
    logged = records(stream)
    assert {r["proto"] for r in logged} == {"tcp", "udp", "icmp"}
    icmp = next(r for r in logged if r["proto"] == "icmp")
    # A ping's record names it by its ICMP fields, the masquerader's id included (captured echo request).
    assert {k: icmp[k] for k in ("client_port", "icmp_type", "icmp_code", "icmp_id", "masq_icmp_id")} == {
        "client_port": None,
        "icmp_type": 8,
        "icmp_code": 0,
        "icmp_id": 54720,
        "masq_icmp_id": 54720,
    }
    # Events of connections that are not source-NATed are counted as ignored, one each.
    assert logger.stats.ignored == sum(1 for ct in events() if not ct.status & IPS_SRC_NAT)
    # The dump holds the client's SSH session to the router itself: not source-NATed, never logged.
    assert all(r["server_ip"] != "10.77.0.2" for r in logged)


def test_ident_past_the_caps_is_marked_skipped_in_the_open_record() -> None:
    async def scenario() -> list[dict[str, Any]]:
        stream = io.StringIO()
        config = replace(Config(), ident_port=1, ident_timeout=0.5, ident_rate=1.0, ident_burst=1)
        logger = MasqLogger(config, JsonLog(stream=stream), clock_ns=lambda: NOW_NS)
        tcp_new = events()[0]
        local = tcp_new._replace(orig=tcp_new.orig._replace(src="127.0.0.1"))
        logger.handle(local)  # asked (and refused: nothing listens on port 1)
        logger.handle(local._replace(ct_id=1))  # same client, burst spent: skipped
        await asyncio.gather(*logger.tasks)
        logger.flush()
        return records(stream)

    logged = asyncio.run(scenario())
    assert [r["event"] for r in logged] == ["open", "open", "ident"]
    assert "ident_error" not in logged[0]
    assert logged[1]["ident_error"] == "skipped:rate" and logged[1]["user"] is None
    assert logged[2]["ident_error"] == "refused"


def test_resync_learns_opens_and_closes_what_vanished() -> None:
    logger, stream = make_logger()
    everything = events()
    tcp_new = everything[0]
    dump = [ct for ct in everything if ct.event == "dump"]
    logger.handle(tcp_new)  # believed open, but absent from the dump: it closed during the gap
    logger.events_lost()
    logger.resync(dump)
    logger.resync(dump)  # a second resync learns nothing new
    logger.flush()
    logged = records(stream)
    assert [r["event"] for r in logged][:2] == ["open", "events_lost"]
    learnt = [r for r in logged if r["event"] == "open" and r.get("resync")]
    assert len(learnt) == 2  # the dump's UDP entry is not logged: only TCP is configured
    assert all(r["opened"] is not None for r in learnt)  # the kernel's start timestamps
    lost = [r for r in logged if r["event"] == "close"]
    assert len(lost) == 1
    assert lost[0]["lost"] is True and lost[0]["masq_port"] == 37202
    resyncs = [r for r in logged if r["event"] == "resync"]
    assert [(r["learnt"], r["closed_in_gap"]) for r in resyncs] == [(2, 1), (0, 0)]
    assert logged[1]["level"] == "warning"


ports = st.integers(min_value=0, max_value=65535)
addresses = st.ip_addresses(v=4).map(str) | st.ip_addresses(v=6).map(str)
maybe_counters = st.none() | st.builds(Counters, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
instants = st.none() | st.integers(min_value=1, max_value=4 * 10**18)


@st.composite
def conntracks(draw: st.DrawFn) -> Conntrack:
    proto = draw(st.sampled_from([6, 17, 1]))
    client, server, masq = draw(addresses), draw(addresses), draw(addresses)
    if proto == 1:
        icmp = (draw(ports), draw(st.integers(0, 255)), draw(st.integers(0, 255)))
        orig = Tuple(client, server, proto, None, None, *icmp)
        reply = Tuple(server, masq, proto, None, None, draw(ports), icmp[1], icmp[2])
    else:
        # A port may be missing (a damaged message the general walk accepted): the general encoder
        # must then be used.
        sport, dport, mport = (draw(ports | st.none()) for _ in range(3))
        icmp_id = draw(st.none() | ports)
        orig = Tuple(client, server, proto, sport, dport, icmp_id)
        reply = Tuple(server, masq, proto, dport, mport)
    start_ns, stop_ns = draw(instants), draw(instants)
    ct_id = draw(st.none() | st.integers(0, 2**32 - 1))
    counters = draw(maybe_counters), draw(maybe_counters)
    return Conntrack("destroy", ct_id, IPS_SRC_NAT, orig, reply, *counters, start_ns, stop_ns)


@given(st.integers(0, 10**15))  # up to 11 days
def test_durations_are_seconds_to_the_nearest_microsecond(ns: int) -> None:
    assert abs(_seconds(ns) * 1e6 - ns / 1000) <= 0.5 + 1e-6
    # What round(ns / 1e9, 6) gives, except on an exact half, where _seconds rounds up.
    assert _seconds(ns) == round(ns / 1e9, 6) or ns % 1000 == 500


@given(conntracks(), st.sampled_from(["plain", "skipped", "resync"]))
def test_open_and_close_lines_are_the_records_the_general_encoder_makes(ct: Conntrack, kind: str) -> None:
    """The hot path formats open and close records from templates; they must be, byte for byte, the
    records made by building the fields and encoding them with the logger's general encoder."""
    stream = io.StringIO()
    config = replace(Config(), protocols=("tcp", "udp", "icmp"), ident=kind == "skipped")
    config = replace(config, ident_rate=1e-9, ident_burst=1)
    log = JsonLog(stream=stream, fields={"daemon": "masqlog"})
    logger = MasqLogger(config, log, clock_ns=lambda: NOW_NS, monotonic=lambda: 100.0)
    stamp = EpochStamp()
    now = stamp(NOW_NS)
    if kind == "skipped":
        logger.limiter.try_acquire(ct.orig.src)  # spends the client's only token
    opening = ct._replace(event="dump" if kind == "resync" else "new")
    logger.handle(opening)
    logger.handle(ct)
    logger.flush()
    conn = connection_fields(ct)
    opened = (stamp(ct.start_ns) if ct.start_ns else None) if kind == "resync" else now
    extra: dict[str, Any] = {"resync": True} if kind == "resync" else {}
    if kind == "skipped" and ct.orig.proto == 6:
        extra = {"user": None, "ident_error": "skipped:rate"}
    expected_open = {"ts": now, "level": "info", "event": "open", **conn, "opened": opened, **extra}
    if ct.start_ns and ct.stop_ns:
        duration: float | None = (ct.stop_ns - ct.start_ns + 500) // 1000 / 1e6  # µs, half up
    else:
        duration = 0.0  # the injected monotonic clock does not move
    c_orig, c_reply = ct.counters_orig, ct.counters_reply
    expected_close = {
        "ts": now, "level": "info", "event": "close", **conn,
        "opened": stamp(ct.start_ns) if ct.start_ns else opened,
        "closed": stamp(ct.stop_ns) if ct.stop_ns else now,
        "duration": duration,
        "orig_packets": c_orig.packets if c_orig else None,
        "orig_bytes": c_orig.bytes if c_orig else None,
        "reply_packets": c_reply.packets if c_reply else None,
        "reply_bytes": c_reply.bytes if c_reply else None,
    }  # fmt: skip
    expected = [
        dumps_flat({**record, "daemon": "masqlog"}) + "\n" for record in (expected_open, expected_close)
    ]
    lines = stream.getvalue().splitlines(keepends=True)
    assert lines == expected
    assert [json.loads(line) for line in lines] == [json.loads(line) for line in expected]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeReaping:
    """Lookups answered from a list; walks that send the given datagrams, as the kernel sends the
    DESTROY events of what a walk drops."""

    def __init__(self, logger: MasqLogger, kernel: socket.socket, answers: list[list[int | None]],
                 walk_sends: list[bytes]) -> None:  # fmt: skip
        self.logger, self.kernel, self.answers, self.walk_sends = logger, kernel, answers, walk_sends
        self.asked: list[list[int | None]] = []
        self.walks: list[int] = []

    def lookup(self, conns: list[tuple[int | None, Tuple]]) -> list[int | None]:
        self.asked.append([ct_id for ct_id, _ in conns])
        return self.answers.pop(0)

    def walk(self) -> int:
        self.walks.append(len(self.logger.tracked))
        if self.walk_sends:
            self.kernel.send(self.walk_sends.pop(0))
        return 0

    def reaping(self) -> Reaping:
        return Reaping(walk=self.walk, lookup=self.lookup, walk_above=1)


def test_expired_connections_are_looked_up_when_due_and_walked_when_many() -> None:
    """Each connection is looked up once it could have expired, again when the kernel says it
    expires; a pass with more connections due than ``walk_above`` walks the table instead, and
    those the walk left open are due again at the next pass."""
    tcp_new, _icmp, tcp_end = events()[:3]
    end_datagram = datagram_of(tcp_end)

    async def scenario() -> tuple[list[list[int | None]], list[int], Stats]:
        clock = Clock()
        logger, _ = make_logger()
        logger.monotonic = clock
        kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        fake = FakeReaping(logger, kernel, answers=[[5], [None], [None], [None]], walk_sends=[end_datagram])
        with kernel, ours:
            ours.setblocking(False)
            daemon = Daemon(logger, ours, list, reaping=fake.reaping())
            await daemon.reap()  # nothing tracked: the kernel is left alone
            logger.handle(tcp_new._replace(ct_id=tcp_new.ct_id + 1))
            clock.now += 9.9
            await daemon.reap()  # younger than conntrack's shortest timeout: cannot have expired
            clock.now += 0.2
            await daemon.reap()  # due: looked up; the kernel says 5 s left
            clock.now += 5.5
            await daemon.reap()  # not yet
            clock.now += 1.0
            await daemon.reap()  # due again: gone (its DESTROY is on its way)
            clock.now += 60
            await daemon.reap()  # not asked again
            logger.handle(tcp_end._replace(ct_id=tcp_end.ct_id + 1))  # the DESTROY
            # Two due at once, above walk_above: one walk instead of two lookups.
            logger.handle(tcp_new)
            logger.handle(tcp_new._replace(ct_id=tcp_new.ct_id + 2))
            clock.now += 10
            await daemon.reap()  # the walk makes one go; the other is due at the next pass
            clock.now += 1.0
            await daemon.reap()  # not yet: the next pass is reap_interval (2 s) after the walk
            clock.now += 1.5
            await daemon.reap()  # the one left is looked up: gone
            # Two due, and the walk closes neither: both come back at the next pass.
            logger.handle(tcp_new._replace(ct_id=tcp_new.ct_id + 3))
            logger.handle(tcp_new._replace(ct_id=tcp_new.ct_id + 4))
            clock.now += 10
            await daemon.reap()  # walks; ct+2 was answered gone, so only the two new ones
            clock.now += 2.5
            logger.handle(tcp_end._replace(ct_id=tcp_end.ct_id + 3))
            await daemon.reap()  # the one left is looked up
        return fake.asked, fake.walks, logger.stats

    asked, walks, stats = asyncio.run(scenario())
    ct_id = tcp_new.ct_id
    assert asked == [[ct_id + 1], [ct_id + 1], [ct_id + 2], [ct_id + 4]]
    assert walks == [2, 3]  # the second walk: ct+2 (still tracked, its DESTROY not seen), ct+3, ct+4
    assert (stats.lookups, stats.walks) == (4, 2)


def test_a_malformed_lookup_reply_is_a_failed_pass_not_the_end_of_reaping() -> None:
    """The kernel's replies are parsed like its events: a reply that does not decode must not end
    the reaping task for good; the pass is logged as failed and its connections come back."""
    tcp_new = events()[0]

    class BadReplyOnce(FakeReaping):
        def lookup(self, conns: list[tuple[int | None, Tuple]]) -> list[int | None]:
            if not self.asked:
                self.asked.append([ct_id for ct_id, _ in conns])
                raise ctnetlink.DecodeError("bad attribute length 2 at offset 20")
            return super().lookup(conns)

    async def scenario() -> tuple[list[list[int | None]], io.StringIO]:
        clock = Clock()
        logger, stream = make_logger()
        logger.monotonic = clock
        kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        fake = BadReplyOnce(logger, kernel, answers=[[None]], walk_sends=[])
        with kernel, ours:
            ours.setblocking(False)
            reaping = replace(fake.reaping(), walk_above=100)
            daemon = Daemon(logger, ours, list, reaping=reaping)
            logger.handle(tcp_new)
            clock.now += 10.1
            await daemon.reap()  # the reply does not decode
            clock.now += 2.1
            await daemon.reap()  # asked again at the next pass
        return fake.asked, stream

    asked, stream = asyncio.run(scenario())
    assert asked == [[tcp_new.ct_id], [tcp_new.ct_id]]
    failed = [r for r in records(stream) if r["event"] == "reap_failed"]
    assert len(failed) == 1
    assert failed[0]["level"] == "warning"
    assert "bad attribute length" in failed[0]["error"]


def test_shortest_timeout_and_walk_threshold_come_from_the_kernel_settings(tmp_path: Path) -> None:
    for name, value in (("tcp_timeout_close", 10), ("tcp_timeout_time_wait", 120), ("udp_timeout", 30),
                        ("sctp_timeout_cookie_wait", 3), ("buckets", 16384)):  # fmt: skip
        (tmp_path / f"nf_conntrack_{name}").write_text(f"{value}\n")
    assert shortest_timeout(("tcp",), tmp_path) == 10.0  # SCTP's 3 s is not ours
    assert shortest_timeout(("udp",), tmp_path) == 30.0
    assert walk_threshold(tmp_path) == 256
    (tmp_path / "nf_conntrack_tcp_timeout_close").write_text("0\n")  # 0 is no timeout, not "at once"
    assert shortest_timeout(("tcp", "udp"), tmp_path) == 30.0
    assert shortest_timeout(("tcp",), tmp_path / "absent") == 10.0


def resync_against(queued: list[bytes], table: list[Conntrack], tracked: list[Conntrack]) -> io.StringIO:
    """A resync whose dump runs while ``queued`` datagrams reach the socket, as the kernel queues the
    events of connections opening and closing meanwhile; the daemon reads them through its real reader."""

    async def scenario() -> io.StringIO:
        logger, stream = make_logger()
        for ct in tracked:
            logger.handle(ct)
        kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with kernel, ours:
            ours.setblocking(False)

            def dump() -> list[Conntrack]:
                for datagram in queued:
                    kernel.send(datagram)
                return table

            daemon = Daemon(logger, ours, dump)
            daemon.start_resync()
            while daemon.resyncing:
                await asyncio.sleep(0.01)
        return stream

    return asyncio.run(scenario())


def test_resync_reads_queued_closes_first_so_each_connection_closes_once() -> None:
    tcp_new, _icmp, tcp_end = events()[:3]
    end_datagram = datagram_of(tcp_end)
    # Gone before the dump walked past it; its DESTROY still waits in the socket when the dump ends.
    logged = records(resync_against([end_datagram], [], tracked=[tcp_new]))
    closes = [r for r in logged if r["event"] == "close"]
    assert len(closes) == 1, closes
    assert "lost" not in closes[0] and closes[0]["orig_bytes"] == tcp_end.counters_orig.bytes
    resync = next(r for r in logged if r["event"] == "resync")
    assert (resync["learnt"], resync["closed_in_gap"]) == (0, 0)

    # In the dump, then closed before the resync reconciled: not learnt again as open.
    logged = records(resync_against([end_datagram], [tcp_new._replace(event="dump")], tracked=[tcp_new]))
    assert [r["event"] for r in logged if r["event"] in ("open", "close")] == ["open", "close"]


def test_resync_keeps_a_connection_opened_while_the_dump_ran() -> None:
    tcp_new = events()[0]
    new_datagram = datagram_of(tcp_new)
    # Opened after the walk passed its place: missing from the dump, yet open.
    logged = records(resync_against([new_datagram], [], tracked=[]))
    assert [r["event"] for r in logged] == ["open", "resync"]
    assert logged[1]["closed_in_gap"] == 0


def test_events_lost_during_a_dump_start_another_resync() -> None:
    async def scenario() -> list[int]:
        logger, _ = make_logger()
        dumps: list[int] = []
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            daemon = Daemon(logger, sock, lambda: dumps.append(1) or [])
            daemon.start_resync()
            daemon.start_resync()  # an overrun while the first dump runs
            while daemon.resyncing or len(dumps) < 2:
                await asyncio.sleep(0.01)
        return dumps

    assert asyncio.run(asyncio.wait_for(scenario(), 10)) == [1, 1]


def test_a_busy_socket_is_read_on_a_timer_and_an_idle_one_watched_again() -> None:
    """Events keep coming: each batch is read by the coalescing timer, and the loop is not asked to
    watch the socket in between. A period with nothing puts the socket back under watch, so the
    next event is read when it comes, not on a timer."""
    tcp_new = events()[0]

    async def until(condition: Any) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline, "condition not met within 10 s"
            await asyncio.sleep(0.001)

    async def scenario() -> list[tuple[int, bool]]:
        logger, _ = make_logger(read_coalesce=0.05)
        kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        seen: list[tuple[int, bool]] = []
        with kernel, ours:
            ours.setblocking(False)
            daemon = Daemon(logger, ours, list)
            polls = 0
            poll = daemon.poll

            def counted_poll() -> None:
                nonlocal polls
                polls += 1
                poll()

            daemon.poll = counted_poll  # type: ignore[method-assign]
            daemon.arm()
            for i in range(1, 4):  # busy: one event per period
                kernel.send(datagram_of(tcp_new))
                await until(lambda i=i: logger.stats.events == i)
                seen.append((polls, daemon.armed))
            await until(lambda: daemon.armed)  # a period with nothing: watched again
            after_idle = polls
            kernel.send(datagram_of(tcp_new))
            await until(lambda: logger.stats.events == 4)
            seen.append((polls - after_idle, daemon.armed))
            daemon.stopped = True
            daemon.disarm()
        return seen

    seen = asyncio.run(scenario())
    # The first event wakes the loop; the next two are read by the timer, the socket unwatched.
    assert [armed for _, armed in seen[:3]] == [False, False, False]
    assert [polls for polls, _ in seen[:3]] == [0, 1, 2]
    # After the idle period the event is read by the watch (no timer ran), which then hands over to
    # the timer again.
    assert seen[3] == (0, False)


def test_config_validation_names_the_setting() -> None:
    assert build_config({"protocols": ["tcp", "udp"], "ident_timeout": 2}).ident_timeout == 2.0
    # The netns test below runs with the default 20 ms coalescing and still sees every event.
    assert build_config({"read_coalesce": 0.05}).read_coalesce == 0.05
    with pytest.raises(ConfigError, match="read_coalesce: must be a number above 0"):
        build_config({"read_coalesce": 0})
    cases = {
        "bogus": ({"bogus": 1}, "unknown settings: bogus"),
        "proto": ({"protocols": ["tcp", "sctp"]}, "protocols: unknown ['sctp']"),
        "empty": ({"protocols": []}, "protocols: expected a non-empty list"),
        "bool": ({"ident": "yes"}, "ident: expected true or false"),
        "negative": ({"ident_timeout": -1}, "ident_timeout: must be a number above 0"),
        "float-int": ({"ident_max_concurrent": 1.5}, "ident_max_concurrent: expected an integer"),
        "port": ({"ident_port": 70000}, "ident_port: must be a port number"),
        "log": ({"log": ""}, "log: expected a non-empty string"),
    }
    for name, (data, message) in cases.items():
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            build_config(data)
        assert name


def test_cli_check_reports_bad_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nattrail.cli import main  # noqa: PLC0415

    path = tmp_path / "masqlog.json"
    path.write_text('{"protocols": ["tcp"], "ident_rate": 0}')
    assert main(["masqlog", "--config", str(path), "--check"]) == 2
    assert f"{path}: ident_rate: must be a number above 0" in capsys.readouterr().err
    path.write_text('{"protocols": ["tcp", "udp"]}')
    assert main(["masqlog", "--config", str(path), "--check"]) == 0
    assert json.loads(capsys.readouterr().out)["protocols"] == ["tcp", "udp"]


# --- the whole daemon against the real kernel ------------------------------------------------------------


def test_daemon_in_a_network_namespace(tmp_path: Path) -> None:
    report = netns_driver_report(
        __file__, "--netns-driver", str(tmp_path), timeout=120, untested="masqlog against the real kernel"
    )

    logged = [json.loads(line) for line in (tmp_path / "masq.log").read_text().splitlines()]
    by_port: dict[int, list[dict[str, Any]]] = {}
    for record in logged:
        by_port.setdefault(record.get("client_port"), []).append(record)

    # The flood later may reuse alice's source port: keep the records of her connection only.
    first = next(r for r in by_port[report["alice_port"]] if r["event"] == "open")
    alice = {r["event"]: r for r in by_port[report["alice_port"]] if r["ct_id"] == first["ct_id"]}
    assert set(alice) == {"open", "ident", "close"}
    assert alice["open"]["masq_ip"] == "127.0.0.2" and alice["open"]["server_port"] == report["server_port"]
    assert alice["ident"]["user"] == "alice" and alice["ident"]["ident_error"] is None
    # Payload both ways, plus headers: the counters come from nf_conntrack_acct.
    assert alice["close"]["orig_bytes"] >= 300 and alice["close"]["reply_bytes"] >= 200
    assert alice["close"]["duration"] > 0
    assert len({r["ct_id"] for r in alice.values()}) == 1

    # Closed before the query arrived: the client's identd knows no such connection.
    gone_open = next(r for r in by_port[report["gone_port"]] if r["event"] == "open")
    gone = {r["event"]: r for r in by_port[report["gone_port"]] if r["ct_id"] == gone_open["ct_id"]}
    assert gone["ident"]["user"] is None and gone["ident"]["ident_error"] == "ERROR:NO-USER"

    udp = [r for r in by_port[report["udp_port"]] if r["event"] == "open"]
    assert udp and udp[0]["proto"] == "udp"
    assert not any(r["event"] == "ident" for r in by_port[report["udp_port"]])

    # The overrun: written down, then every connection open across the gap is known again.
    lost = [r for r in logged if r["event"] == "events_lost"]
    assert lost, "the tiny receive buffer should have overflowed"
    assert any(r["event"] == "resync" for r in logged[logged.index(lost[0]) :])
    known = {r.get("client_port") for r in logged if r["event"] == "open"}
    assert set(report["flood_ports"]) <= known
    assert any(r.get("resync") for r in logged if r.get("client_port") in report["flood_ports"])
    # Those reset during the overrun are closed, and no connection is closed twice (once as lost by
    # the resync, once more by its DESTROY read later).
    closes = [r["ct_id"] for r in logged if r["event"] == "close"]
    assert len(closes) == len(set(closes))
    assert opened_reset(logged, report["reset_ports"]) <= closed_ports(logged)
    assert closed_ports(logged) & set(report["reset_ports"]), "no reset connection was logged at all"
    assert logged[-1]["event"] == "stop"
    # Closes came from the kernel's own lookups (conntrack's CLOSE timeout is 1 s here, and the
    # daemon knows it), not from its garbage collector.
    assert logged[0]["first_check"] == 1.0
    assert logged[-1]["lookups"] > 0
    for line in (tmp_path / "masq.log").read_text().splitlines():
        json.loads(line)  # every line whole


class FakeIdentd:
    """An identd on 127.0.0.1 that knows the users of the connections the driver registered."""

    def __init__(self) -> None:
        self.users: dict[int, str] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode()
        client_port, server_port = (int(p) for p in line.split(","))
        user = self.users.get(client_port)
        answer = "USERID : UNIX : " + user if user else "ERROR : NO-USER"
        writer.write(f"{client_port} , {server_port} : {answer}\r\n".encode())
        await writer.drain()
        writer.close()


def connect(
    port: int, payload: bytes = b"", linger0: bool = False, user: tuple[FakeIdentd, str] | None = None
) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind(("127.0.0.1", 0))
    if user is not None:  # known to the identd before the router can ask
        user[0].users[sock.getsockname()[1]] = user[1]
    sock.connect(("127.0.0.3", port))
    if linger0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if payload:
        sock.sendall(payload)
    return sock


def closed_ports(lines: list[dict[str, Any]]) -> set[int]:
    return {r["client_port"] for r in lines if r["event"] == "close"}


def opened_reset(lines: list[dict[str, Any]], reset: list[int]) -> set[int]:
    return {r["client_port"] for r in lines if r["event"] == "open" and r["client_port"] in reset}


async def wait_for(path: Path, predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        if predicate(lines):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting on {path}")


async def overrun(path: Path) -> tuple[list[socket.socket], list[int], list[int]]:
    # Block the loop while 300 connections open and every other one is reset at once: the kernel
    # overruns the 16 KiB buffer with their NEW and DESTROY events.
    flood: list[socket.socket] = []
    reset: list[int] = []

    def open_and_reset() -> None:
        for i in range(300):
            sock = connect(7000, linger0=i % 2 == 1)
            if i % 2:
                reset.append(sock.getsockname()[1])
                sock.close()
            else:
                flood.append(sock)

    opener = threading.Thread(target=open_and_reset)
    opener.start()
    time.sleep(1.5)
    opener.join()
    flood_ports = [s.getsockname()[1] for s in flood]
    reset = [port for port in reset if port not in flood_ports]  # a freed port may be taken again
    await wait_for(path, lambda lines: any(r["event"] == "resync" and r["learnt"] > 0 for r in lines))
    # Every reset connection whose open was logged is closed (its NEW and DESTROY may both have been
    # lost to the overrun, which the events_lost record says).
    await wait_for(path, lambda lines: opened_reset(lines, reset) <= closed_ports(lines))
    return flood, flood_ports, reset


async def netns_scenario(tmp: Path) -> dict[str, Any]:
    identd = FakeIdentd()
    ident_server = await asyncio.start_server(identd.handle, "127.0.0.1", 1113)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionResetError):  # the flood resets half its connections
            await reader.read(300)
            writer.write(b"r" * 200)
            await writer.drain()
            await reader.read()
        writer.close()

    server = await asyncio.start_server(serve, "0.0.0.0", 7000, backlog=1024)
    path = tmp / "masq.log"
    # A small receive buffer, so that blocking the loop below overruns it.
    config = Config(
        log=str(path),
        protocols=("tcp", "udp"),
        ident_port=1113,
        ident_timeout=3,
        rcvbuf=16384,
        reap_interval=0.5,
    )
    log = JsonLog(config.log, fields={"daemon": "masqlog"})
    daemon = asyncio.create_task(run(config, log=log))
    await wait_for(path, lambda lines: any(r["event"] == "resync" for r in lines))
    loop = asyncio.get_running_loop()

    def alice() -> int:
        sock = connect(7000, b"a" * 300, user=(identd, "alice"))
        port = sock.getsockname()[1]
        sock.recv(200)
        time.sleep(0.5)  # the ident query happens while the connection is up
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        return port

    alice_port = await loop.run_in_executor(None, alice)
    gone = connect(7000, linger0=True)
    gone_port = gone.getsockname()[1]
    gone.close()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.sendto(b"x", ("127.0.0.3", 7001))
    udp_port = udp.getsockname()[1]
    udp.close()
    await wait_for(
        path, lambda lines: any(r["event"] == "close" and r["client_port"] == alice_port for r in lines)
    )

    flood, flood_ports, reset = await overrun(path)
    os.kill(os.getpid(), signal.SIGTERM)
    await daemon
    for sock in flood:
        sock.close()
    server.close()
    ident_server.close()
    log.close()
    return {
        "alice_port": alice_port,
        "gone_port": gone_port,
        "udp_port": udp_port,
        "server_port": 7000,
        "flood_ports": flood_ports,
        "reset_ports": reset,
    }


def snat_loopback() -> None:
    """Source NAT on loopback: connections to 127.0.0.3 leave as 127.0.0.2, so conntrack marks them
    source-NATed exactly as a masquerade on a router does. Only inside a private namespace."""
    subprocess.run(
        ["nft", "-f", "-"],
        input="table ip t {\n  chain post {\n    type nat hook postrouting priority 100;\n"
        "    ip daddr 127.0.0.3 snat to 127.0.0.2\n  }\n}\n",
        text=True,
        check=True,
    )


def netns_driver(tmp: Path) -> None:
    """Runs inside ``unshare --net``: SNAT and sysctls here never touch the host."""
    refuse_outside_private_netns()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for name, value in (("nf_conntrack_acct", 1), ("nf_conntrack_timestamp", 1),
                        ("nf_conntrack_tcp_timeout_close", 1)):  # fmt: skip
        Path(f"/proc/sys/net/netfilter/{name}").write_text(f"{value}\n")
    snat_loopback()
    report = asyncio.run(asyncio.wait_for(netns_scenario(tmp), 90))
    print(json.dumps(report))


if __name__ == "__main__":
    if sys.argv[1:2] != ["--netns-driver"] or len(sys.argv) != 3:
        raise SystemExit("usage: test_masqlog.py --netns-driver DIR (inside unshare --net)")
    netns_driver(Path(sys.argv[2]))
