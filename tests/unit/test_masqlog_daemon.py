"""`nattrail masqlog`: the daemon's loop, its signals and timers, its command line and its failure
records, called in-process (the netns test in test_masqlog.py runs the same daemon in a subprocess,
where mutation testing cannot see it).

The whole-daemon test here moves this test's own thread into a new network namespace for the
duration of the test (unshare, then setns back to where it was): SNAT and conntrack events there
never touch the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import gc
import io
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import netns_unavailable
from test_masqlog import NOW_NS, datagram_of, events, make_logger, records, snat_loopback

from nattrail import __version__, ctnetlink, ident
from nattrail.cli import build_parser
from nattrail.cli import main as cli_main
from nattrail.ctnetlink import Conntrack
from nattrail.jsonlog import EpochStamp, JsonLog
from nattrail.masqlog.config import Config, ConfigError, build_config
from nattrail.masqlog.daemon import Daemon, Reaping
from nattrail.masqlog.kernel import shortest_timeout, walk_threshold
from nattrail.masqlog.records import _seconds, connection_fields
from nattrail.masqlog.service import every, run, syslog_sink
from nattrail.masqlog.tracker import MasqLogger, Stats

CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def private_netns() -> Iterator[None]:
    """This thread (and what it starts) in a new network namespace; back in its own afterwards."""
    reason = netns_unavailable("ip")
    if reason:
        pytest.skip(f"!!! MASQLOG DAEMON LOOP NOT CHECKED IN-PROCESS: {reason} !!!")
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
        try:
            yield
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise SystemExit(f"cannot return to the test's network namespace: errno {ctypes.get_errno()}")
    finally:
        os.close(home)


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"not seen within 20 s: {what}"
        await asyncio.sleep(0.01)


def snat_to_127_0_0_2() -> None:
    """In the private namespace: connections to 127.0.0.3 leave as 127.0.0.2, source-NATed as a
    masquerade makes them; conntrack's CLOSE timeout, its shortest, is 1 s."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    Path("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close").write_text("1\n")
    snat_loopback()


def test_the_daemon_logs_signals_timers_and_stops_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "masq.log"
    rotated = tmp_path / "masq.log.1"
    config = Config(
        log=str(path),
        protocols=("tcp",),
        ident_port=1,  # nothing listens: each query is refused at once
        ident_timeout=2.0,
        ident_burst=1,
        ident_rate=0.001,
        reap_interval=0.05,
        skips_interval=0.05,
        stats_interval=0.05,
        rcvbuf=1 << 20,
    )

    async def scenario() -> int:
        log = JsonLog(config.log, fields={"daemon": "masqlog"})
        daemon = asyncio.create_task(run(config, log=log))
        server = await asyncio.start_server(lambda r, w: w.close(), "0.0.0.0", 7000)
        await until(lambda: any(r["event"] == "resync" for r in read_log(path)), "the start-up resync")
        loop = asyncio.get_running_loop()

        def connect() -> None:
            with socket.create_connection(("127.0.0.3", 7000), source_address=("127.0.0.1", 0)):
                pass

        await loop.run_in_executor(None, connect)  # asked of the client's identd
        await loop.run_in_executor(None, connect)  # the same client again at once: skipped
        await until(lambda: any(r["event"] == "ident_skips" for r in read_log(path)), "a skips report")
        # The periodic stats: they show the lookups of the reaping timer once a connection is due
        # (conntrack's shortest timeout is 1 s here).
        await until(
            lambda: any(r["event"] == "stats" and r["lookups"] > 0 for r in read_log(path)), "a lookup"
        )
        path.rename(rotated)
        os.kill(os.getpid(), signal.SIGHUP)
        await until(lambda: any(r["event"] == "reopened" for r in read_log(path)), "the reopen")
        await loop.run_in_executor(None, connect)  # skipped, and stopped before the next report
        os.kill(os.getpid(), signal.SIGTERM)
        status = await daemon
        server.close()
        log.close()
        return status

    with private_netns():
        snat_to_127_0_0_2()
        status = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert status == 0
    check_daemon_records(read_log(rotated) + read_log(path), read_log(path), str(path))


def check_daemon_records(logged: list[dict[str, Any]], current: list[dict[str, Any]], path: str) -> None:
    start = logged[0]
    assert start["event"] == "start" and start["daemon"] == "masqlog"
    assert {k: start[k] for k in ("version", "protocols", "ident", "rcvbuf", "first_check")} == {
        "version": __version__,
        "protocols": ["tcp"],
        "ident": True,
        "rcvbuf": 1 << 20,
        "first_check": 1.0,
    }
    assert start["reader"] in ("recvmmsg", "recvmsg") and start["walk_above"] >= 1
    assert not any(r["event"] == "rcvbuf_capped" for r in logged)
    assert logged[1]["event"] == "resync" and logged[1]["open"] == 0
    opens = [r for r in logged if r["event"] == "open"]
    assert len(opens) == 3 and {r["masq_ip"] for r in opens} == {"127.0.0.2"}
    assert opens[1]["ident_error"] == opens[2]["ident_error"] == "skipped:rate"
    assert [r["ident_error"] for r in logged if r["event"] == "ident"] == ["refused"]
    skips = next(r for r in logged if r["event"] == "ident_skips")
    assert (skips["level"], skips["rate"], skips["concurrency"]) == ("warning", 1, 0)
    assert next(r for r in current if r["event"] == "reopened")["path"] == path
    stop = logged[-1]
    assert stop["event"] == "stop"
    counts = (stop["opens"], stop["ident_skipped"], stop["idents_answered"], stop["ident_errors"])
    assert counts == (3, 2, 0, 1)
    # Every skip is reported by the time the daemon stops, the last ones by the stop itself.
    reported = [r for r in logged if r["event"] == "ident_skips"]
    assert sum(r["rate"] + r["concurrency"] for r in reported) == 2
    assert stop["resyncs"] == 1 and stop["ident_in_flight"] == 0
    # The signal handlers are gone with the daemon.
    restored = (signal.SIG_DFL, signal.default_int_handler)
    assert all(signal.getsignal(s) in restored for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1))


# --- the command line ------------------------------------------------------------------------------------


def test_cli_options_and_their_defaults(cli_help: Callable[..., str]) -> None:
    args = build_parser().parse_args(["masqlog"])
    assert (args.config, args.log, args.check) == (None, None, False)
    args = build_parser().parse_args(["masqlog", "--config", "c.json", "--log", "x.log", "--check"])
    assert (args.config, args.log, args.check) == ("c.json", "x.log", True)
    listing = cli_help()
    assert re.search(r"^ +masqlog +log masqueraded connections and their users \(daemon\)$", listing, re.M)
    text = " ".join(cli_help("masqlog").split())
    assert "log every masqueraded connection, with the user behind it. options:" in text
    assert text.endswith(
        "--config CONFIG JSON settings file (keys as in docs/masq_logger.md) --log LOG log file (overrides "
        "the config file; default /var/log/nattrail/masq.log) --check validate the configuration and exit"
    )


def test_cli_check_prints_the_whole_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["masqlog", "--check"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out) == json.loads(json.dumps(vars(Config())))
    assert list(json.loads(out)) == sorted(vars(Config()))  # keys sorted
    assert cli_main(["masqlog", "--check", "--log", "/tmp/other.log"]) == 0
    assert json.loads(capsys.readouterr().out)["log"] == "/tmp/other.log"


def test_cli_log_option_overrides_the_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"log": str(tmp_path / "a.log"), "ident": False}))
    assert cli_main(["masqlog", "--config", str(config), "--log", str(tmp_path / "b.log"), "--check"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["log"], shown["ident"]) == (str(tmp_path / "b.log"), False)
    assert cli_main(["masqlog", "--config", str(config), "--check"]) == 0
    assert json.loads(capsys.readouterr().out)["log"] == str(tmp_path / "a.log")


def test_cli_cannot_open_the_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "missing" / "masq.log"
    assert cli_main(["masqlog", "--log", str(log)]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"nattrail masqlog: cannot open {log}: No such file or directory\n"
    assert captured.out == ""


def test_config_file_problems_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "masqlog.json"
    cases = {
        None: f"nattrail masqlog: cannot read {path}: No such file or directory\n",
        "{": f"nattrail masqlog: {path} is not valid JSON: Expecting property name enclosed in double "
        "quotes: line 1 column 2 (char 1)\n",
        "[1]": f"nattrail masqlog: {path} must hold a JSON object\n",
        '{"ident": 1}': f"nattrail masqlog: {path}: ident: expected true or false, got 1\n",
    }
    for text, message in cases.items():
        if text is not None:
            path.write_text(text)
        assert cli_main(["masqlog", "--config", str(path), "--check"]) == 2
        assert capsys.readouterr().err == message


def test_build_config_keeps_each_type_and_checks_every_number() -> None:
    config = build_config(
        {"protocols": ["udp", "tcp", "udp"], "rcvbuf": 4096, "ident_rate": 2, "syslog": True, "log": "x"}
    )
    assert config.protocols == ("udp", "tcp")  # duplicates dropped, order kept
    assert config.ident_rate == 2.0 and type(config.ident_rate) is float
    assert config.rcvbuf == 4096 and type(config.rcvbuf) is int
    assert (config.syslog, config.log) == (True, "x")
    assert build_config({"ident_port": 65535}).ident_port == 65535
    assert build_config({"rcvbuf": 100_000}).rcvbuf == 100_000  # only a port stops at 65535
    assert build_config({}) == Config()
    bad = {
        "ident_timeout": ("1", "ident_timeout: expected a number, got '1'"),
        "ident_burst": (True, "ident_burst: expected a number, got True"),
        "stats_interval": (float("inf"), "stats_interval: must be a number above 0, got inf"),
        "reap_interval": (float("nan"), "reap_interval: must be a number above 0, got nan"),
        "rcvbuf": (0, "rcvbuf: must be a number above 0, got 0"),
        "ident_port": (65536, "ident_port: must be a port number (1-65535), got 65536"),
        "protocols": ("tcp", "protocols: expected a non-empty list, got 'tcp'"),
        "syslog": (1, "syslog: expected true or false, got 1"),
        "log": (5, "log: expected a non-empty string, got 5"),
        "max_tracked": (2.0, "max_tracked: expected an integer, got 2.0"),
    }
    for key, (value, message) in bad.items():
        with pytest.raises(ConfigError) as caught:
            build_config({key: value})
        assert str(caught.value) == message
    with pytest.raises(ConfigError) as caught:
        build_config({"zeta": 1, "alpha": 2})
    assert str(caught.value).startswith("unknown settings: alpha, zeta; known: ident, ident_burst, ")
    with pytest.raises(ConfigError) as caught:
        build_config({"protocols": ["tcp", "gre", "sctp"]})
    assert str(caught.value) == "protocols: unknown ['gre', 'sctp']; choose from tcp, udp, icmp"


def test_syslog_copy_only_when_asked() -> None:
    assert syslog_sink(Config()) is None
    assert callable(syslog_sink(Config(syslog=True)))


# --- records the daemon writes besides opens and closes -----------------------------------------------


def test_stats_and_skips_records() -> None:
    logger, stream = make_logger()
    logger.report_skips()  # nothing skipped: nothing written
    assert stream.getvalue() == ""
    for reason in ("rate", "rate", "concurrency"):
        logger.limiter._skips[reason] += 1
    logger.report_skips()
    logger.report_skips()  # counted since the last report
    logger.handle(events()[0])
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        Daemon(logger, sock, list).log_stats()
    skips, _, stats = records(stream)
    assert {k: skips[k] for k in ("event", "level", "rate", "concurrency")} == {
        "event": "ident_skips",
        "level": "warning",
        "rate": 2,
        "concurrency": 1,
    }
    assert stats["event"] == "stats" and stats["level"] == "info"
    assert {k: stats[k] for k in ("events", "opens", "tracked", "ident_in_flight", "closes")} == {
        "events": 1,
        "opens": 1,
        "tracked": 1,
        "ident_in_flight": 0,
        "closes": 0,
    }
    assert set(stats) >= set(vars(Stats()))


def test_events_lost_records_count_the_overruns() -> None:
    logger, stream = make_logger()
    logger.events_lost()
    logger.events_lost()
    logger.flush()
    first, second = records(stream)
    assert first == {
        "ts": first["ts"],
        "level": "warning",
        "event": "events_lost",
        "overruns": 1,
        "note": "the kernel dropped conntrack events (receive buffer full); resyncing from a table dump",
        "daemon": "masqlog",
    }
    assert second["overruns"] == 2 and logger.stats.overruns == 2


def test_flush_copies_each_line_to_the_syslog_sink() -> None:
    logger, stream = make_logger()
    copied: list[str] = []
    logger.sink = copied.append
    logger.emit("a")
    logger.emit("b", "warning", x=1)
    logger.flush()
    logger.flush()  # nothing new: nothing copied twice
    assert copied == stream.getvalue().splitlines()
    assert [json.loads(line)["event"] for line in copied] == ["a", "b"]


def test_ident_answers_and_errors_are_counted_and_logged() -> None:
    replies = [
        ident.IdentReply("alice", None, "UNIX"),
        ident.IdentReply(None, "timeout"),
        ident.IdentReply("bob", None),
        ident.IdentReply(None, "refused"),
    ]
    asked: list[tuple[Any, ...]] = []

    async def query(*args: Any, **kwargs: Any) -> ident.IdentReply:
        asked.append((*args, kwargs))
        return replies.pop(0)

    async def scenario() -> tuple[list[dict[str, Any]], Stats, int]:
        stream = io.StringIO()
        config = replace(Config(), ident_timeout=3.5, ident_port=1113)
        logger = MasqLogger(config, JsonLog(stream=stream), query=query, clock_ns=lambda: NOW_NS)
        tcp_new = events()[0]
        logger.handle(tcp_new)
        for n in (1, 2, 3):
            logger.handle(tcp_new._replace(ct_id=tcp_new.ct_id + n))
        in_flight = logger.limiter.in_flight
        await asyncio.gather(*logger.tasks)
        logger.flush()
        return records(stream), logger.stats, in_flight

    logged, stats, in_flight = asyncio.run(scenario())
    tcp_new = events()[0]
    assert in_flight == 4
    assert (
        asked
        == [(tcp_new.orig.src, tcp_new.orig.sport, tcp_new.orig.dport, {"timeout": 3.5, "port": 1113})] * 4
    )
    idents = [r for r in logged if r["event"] == "ident"]
    assert [(r["user"], r["ident_error"], r.get("ident_os")) for r in idents] == [
        ("alice", None, "UNIX"),
        (None, "timeout", None),
        ("bob", None, None),
        (None, "refused", None),
    ]
    assert idents[0]["client_port"] == tcp_new.orig.sport and idents[0]["ct_id"] == tcp_new.ct_id
    assert (stats.idents_answered, stats.ident_errors) == (2, 2)


def test_a_failed_ident_query_still_frees_its_slot() -> None:
    async def query(*args: Any, **kwargs: Any) -> ident.IdentReply:
        raise RuntimeError("broken")

    async def scenario() -> int:
        logger = MasqLogger(Config(), JsonLog(stream=io.StringIO()), query=query)
        logger.handle(events()[0])
        await asyncio.gather(*logger.tasks, return_exceptions=True)
        return logger.limiter.in_flight + len(logger.tasks)

    assert asyncio.run(scenario()) == 0


def test_a_failed_dump_is_logged_and_the_next_overrun_resyncs_again() -> None:
    async def scenario() -> tuple[list[dict[str, Any]], bool, int]:
        logger, stream = make_logger()
        dumps: list[int] = []

        def dump() -> list[Conntrack]:
            dumps.append(1)
            raise OSError(105, "No buffer space available")

        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            daemon = Daemon(logger, sock, dump)
            daemon.start_resync()
            await until(lambda: not daemon.resyncing, "the failed dump")
            window_left = logger.window is not None
            daemon.start_resync()
            await until(lambda: not daemon.resyncing, "the second dump")
        return records(stream), window_left, len(dumps)

    logged, window_left, dumps = asyncio.run(scenario())
    assert not window_left
    assert dumps == 2
    assert [(r["event"], r["level"], r["error"]) for r in logged] == [
        ("resync_failed", "error", "[Errno 105] No buffer space available")
    ] * 2


def test_a_stopping_daemon_does_not_resync() -> None:
    logger, _ = make_logger()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        daemon = Daemon(logger, sock, lambda: pytest.fail("no dump while stopping"))
        daemon.stopped = True
        daemon.start_resync()
    assert not daemon.resyncing and logger.window is None


def test_reopen_continues_in_a_new_file_or_says_why_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "log"
    directory.mkdir()
    path = directory / "masq.log"
    log = JsonLog(path, fields={"daemon": "masqlog"})
    logger = MasqLogger(replace(Config(), log=str(path), ident=False), log)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.closing(log):
        daemon = Daemon(logger, sock, list)
        path.rename(tmp_path / "masq.log.1")  # logrotate
        daemon.reopen()
        assert [(r["event"], r["path"]) for r in read_log(path)] == [("reopened", str(path))]
        assert read_log(tmp_path / "masq.log.1") == []
        directory.rename(tmp_path / "gone")
        daemon.reopen()
        err = capsys.readouterr().err
        assert err.startswith(f"nattrail masqlog: cannot reopen {path}: [Errno 2] No such file or directory")
        assert err.endswith("\n")
        # Logging carries on into the old file.
        daemon.log_stats()
        assert [r["event"] for r in read_log(tmp_path / "gone" / "masq.log")] == ["reopened", "stats"]


# --- reading the socket ------------------------------------------------------------------------------------


def test_datagrams_that_do_not_fit_or_decode_are_counted_and_logged() -> None:
    tcp_new = events()[0]
    good = datagram_of(tcp_new)

    async def scenario() -> tuple[list[dict[str, Any]], Stats, int]:
        logger, stream = make_logger()
        kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with kernel, ours:
            ours.setblocking(False)
            from nattrail import mmsg  # noqa: PLC0415

            daemon = Daemon(logger, ours, list, reader=mmsg.RecvReader(ours, size=len(good)))
            kernel.send(good + b"\0" * 16)  # larger than the read buffer
            kernel.send(good[:20])  # cut inside a message
            kernel.send(good)
            received = daemon.read_events(10)
        return records(stream), logger.stats, received

    logged, stats, received = asyncio.run(scenario())
    assert received == 3
    cut, bad, opened = logged
    assert cut == {
        "ts": cut["ts"],
        "level": "warning",
        "event": "decode_error",
        "error": "datagram cut short: larger than the read buffer",
        "count": 1,
        "size": len(good),
        "daemon": "masqlog",
    }
    assert (bad["event"], bad["level"], bad["size"]) == ("decode_error", "warning", 20)
    assert bad["error"]
    assert opened["event"] == "open"
    assert (stats.decode_errors, stats.events, stats.opens) == (2, 1, 1)


def test_read_events_stops_at_its_budget_and_when_the_queue_is_empty() -> None:
    good = datagram_of(events()[0])

    async def scenario() -> tuple[int, int, int]:
        logger, _ = make_logger()
        kernel, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with kernel, ours:
            ours.setblocking(False)
            from nattrail import mmsg  # noqa: PLC0415

            daemon = Daemon(logger, ours, list, reader=mmsg.RecvReader(ours))
            for _ in range(3):
                kernel.send(good)
            first = daemon.read_events(2)
            second = daemon.read_events(2)
            third = daemon.read_events(2)
        return first, second, third

    assert asyncio.run(scenario()) == (2, 1, 0)


def test_every_repeats_an_action_and_awaits_what_it_returns() -> None:
    async def scenario() -> list[str]:
        done: list[str] = []

        async def later() -> None:
            done.append("awaited")

        def action() -> Any:
            done.append("called")
            return later() if len(done) < 3 else None

        task = asyncio.create_task(every(0.001, action))
        await until(lambda: len(done) >= 4, "four steps")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return done[:4]

    assert asyncio.run(scenario()) == ["called", "awaited", "called", "called"]


class OverrunReader:
    """The kernel's side of an overrun as the reader sees it: ENOBUFS once, then what was still queued."""

    name = "scripted"
    size = 16384

    def __init__(self, script: list[OSError | list[bytes]]) -> None:
        self.script = script

    def read(self) -> tuple[list[memoryview], int]:
        step = self.script.pop(0) if self.script else []
        if isinstance(step, OSError):
            raise step
        return [memoryview(d) for d in step], 0


def test_an_overrun_is_written_down_and_starts_a_resync_after_the_queue_is_read() -> None:
    tcp_new = events()[0]
    good = datagram_of(tcp_new)

    async def scenario() -> tuple[list[dict[str, Any]], int, int]:
        logger, stream = make_logger()
        dumps: list[int] = []
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            reader = OverrunReader([OSError(errno.ENOBUFS, "No buffer space available"), [good]])
            daemon = Daemon(logger, sock, lambda: dumps.append(1) or [], reader=reader)
            received = daemon.read_events(10)
            await until(lambda: not daemon.resyncing, "the resync")
        return records(stream), received, len(dumps)

    logged, received, dumps = asyncio.run(scenario())
    assert received == 2 and dumps == 1
    # Read on after the overrun (the open), then written down, then reconciled with the (empty) dump:
    # the connection it does not hold closed in the gap.
    assert [r["event"] for r in logged] == ["open", "events_lost", "close", "resync"]
    assert logged[2]["lost"] is True and logged[3]["closed_in_gap"] == 1


def test_a_socket_error_other_than_an_overrun_is_raised_after_flushing() -> None:
    logger, stream = make_logger()
    good = datagram_of(events()[0])
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        reader = OverrunReader([[good], OSError(errno.EBADF, "Bad file descriptor")])
        daemon = Daemon(logger, sock, list, reader=reader)
        with pytest.raises(OSError, match="Bad file descriptor"):
            daemon.read_events(10)
    assert [r["event"] for r in records(stream)] == ["open"]
    assert logger.stats.overruns == 0


# --- when connections are looked up again -------------------------------------------------------------------


def test_a_connection_is_due_exactly_when_its_time_comes() -> None:
    logger, _ = make_logger(reap_interval=2.0)
    logger.monotonic = lambda: 100.0
    tcp_new = events()[0]
    logger.handle(tcp_new)
    key = (tcp_new.ct_id, tcp_new.orig)
    logger.first_checks.clear()
    logger.recheck(key, 105.0)
    assert logger.due(104.999) == []
    assert logger.due(105.0) == [key]
    logger.check_again([key])  # the next pass: reap_interval from now
    assert logger.due(101.999) == []
    assert logger.due(102.0) == [key]
    logger.recheck((1, tcp_new.orig), 1.0)  # not tracked: never queued
    assert logger.due(1000.0) == []


def test_a_live_connection_is_looked_up_again_when_conntrack_says_it_expires() -> None:
    tcp_new = events()[0]

    async def scenario() -> list[tuple[float, list[int | None]]]:
        now = [100.0]
        logger, _ = make_logger()
        logger.monotonic = lambda: now[0]
        asked: list[tuple[float, list[int | None]]] = []
        answers = [[5, 100], [None], [None]]

        def lookup(keys: list[Any]) -> list[int | None]:
            asked.append((now[0], [ct_id for ct_id, _ in keys]))
            return answers.pop(0)

        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            daemon = Daemon(logger, sock, list, reaping=Reaping(lookup=lookup))
            logger.handle(tcp_new)
            logger.handle(tcp_new._replace(ct_id=tcp_new.ct_id + 1))
            for at in (110.0, 115.999, 116.0, 139.999, 140.0):
                now[0] = at
                await daemon.reap()
        return asked

    ct_id = tcp_new.ct_id
    # 5 s left: asked again a second after they end; 100 s left: asked again after RECHECK_MAX (30 s).
    assert asyncio.run(scenario()) == [(110.0, [ct_id, ct_id + 1]), (116.0, [ct_id]), (140.0, [ct_id + 1])]


def test_resyncs_and_the_closes_they_find_are_counted() -> None:
    logger, stream = make_logger()
    tcp_new = events()[0]
    logger.handle(tcp_new)
    logger.handle(tcp_new._replace(ct_id=tcp_new.ct_id + 1))
    logger.resync([])
    logger.resync([])
    logger.flush()
    assert (logger.stats.resyncs, logger.stats.closes) == (2, 2)
    lost = [r for r in records(stream) if r["event"] == "close"]
    assert len(lost) == 2
    for record in lost:
        assert record["lost"] is True and record["closed"] == "2026-11-21T03:12:00.000000Z"
        assert record["opened"] == "2026-11-21T03:12:00.000000Z"
        assert {
            k: record[k] for k in ("duration", "orig_packets", "orig_bytes", "reply_packets", "reply_bytes")
        } == (dict.fromkeys(("duration", "orig_packets", "orig_bytes", "reply_packets", "reply_bytes")))


def test_kernel_settings_that_cannot_be_read_are_left_out(tmp_path: Path) -> None:
    (tmp_path / "nf_conntrack_tcp_timeout_close").write_text("1\n")
    (tmp_path / "nf_conntrack_tcp_timeout_established").mkdir()  # unreadable
    (tmp_path / "nf_conntrack_tcp_timeout_max_retrans").write_text("many\n")
    assert shortest_timeout(("tcp",), tmp_path) == 1.0
    (tmp_path / "nf_conntrack_tcp_timeout_close").write_text("0\n")
    assert shortest_timeout(("tcp",), tmp_path) == 10.0
    for buckets, threshold in ((1000, 15), (64, 1), (10, 1)):
        (tmp_path / "nf_conntrack_buckets").write_text(f"{buckets}\n")
        assert walk_threshold(tmp_path) == threshold
        assert type(walk_threshold(tmp_path)) is int
    assert walk_threshold(tmp_path / "absent") == 4096
    (tmp_path / "nf_conntrack_buckets").write_text("lots\n")
    assert walk_threshold(tmp_path) == 4096


def test_a_daemon_given_no_reaping_reaps_through_ctnetlink_as_for_an_unknown_table(tmp_path: Path) -> None:
    logger, _ = make_logger()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        reaping = Daemon(logger, sock, list).reaping
    assert (reaping.lookup, reaping.walk) == (ctnetlink.lookup, ctnetlink.reap_expired)
    assert reaping.walk_above == walk_threshold(tmp_path / "absent") == 4096


def test_the_command_runs_the_daemon_until_told_to_stop(tmp_path: Path) -> None:
    """`nattrail masqlog --config FILE` in-process: the daemon's records carry its name, SIGTERM
    stops it with status 0, and the log is closed behind it."""
    path = tmp_path / "masq.log"
    config = tmp_path / "masqlog.json"
    config.write_text(json.dumps({"log": str(path), "ident": False, "protocols": ["udp"]}))
    started = threading.Event()

    def stop_once_started() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if any(r["event"] == "resync" for r in read_log(path)):
                started.set()
                os.kill(os.getpid(), signal.SIGTERM)
                return
            started.wait(0.01)

    thresholds = gc.get_threshold()
    watcher = threading.Thread(target=stop_once_started)
    try:
        with private_netns():
            watcher.start()
            status = cli_main(["masqlog", "--config", str(config)])
    finally:
        watcher.join()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    assert started.is_set()
    assert status == 0
    logged = read_log(path)
    assert [r["event"] for r in logged] == ["start", "resync", "stop"]
    assert {r["daemon"] for r in logged} == {"masqlog"}
    assert logged[0]["protocols"] == ["udp"] and logged[0]["ident"] is False


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


@contextlib.contextmanager
def without_net_admin() -> Iterator[None]:
    """This thread without CAP_NET_ADMIN in its effective set (kept permitted, so it comes back)."""
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), data) != 0 or not data[0].effective & (1 << 12):
        pytest.skip("!!! CAP_NET_ADMIN NOT HELD HERE: the refusal path is not checked !!!")
    effective = data[0].effective
    data[0].effective = effective & ~(1 << 12)  # CAP_NET_ADMIN
    assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()
    try:
        yield
    finally:
        data[0].effective = effective
        if libc.capset(ctypes.byref(header), data) != 0:
            raise SystemExit(f"cannot restore CAP_NET_ADMIN: errno {ctypes.get_errno()}")


def test_the_command_says_it_needs_cap_net_admin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    thresholds = gc.get_threshold()
    try:
        with without_net_admin():
            status = cli_main(["masqlog", "--log", str(tmp_path / "masq.log")])
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    assert status == 1
    captured = capsys.readouterr()
    assert (
        captured.err
        == "nattrail masqlog: conntrack events need CAP_NET_ADMIN: [Errno 1] Operation not permitted\n"
    )
    assert captured.out == ""


def test_closes_of_connections_never_seen_opening() -> None:
    """A DESTROY for a connection opened before the daemon knew of it (or past max_tracked) is still
    written in full, from what the event itself holds."""
    logger, stream = make_logger()
    tcp_end = events()[2]
    logger.handle(tcp_end)  # with the kernel's timestamps and counters
    logger.handle(tcp_end._replace(ct_id=tcp_end.ct_id + 1, start_ns=None, stop_ns=None, counters_orig=None))
    logger.flush()
    full, bare = records(stream)
    fields = connection_fields(tcp_end)
    assert fields.items() <= full.items()
    assert full["opened"] == EpochStamp()(tcp_end.start_ns) and full["closed"] == EpochStamp()(
        tcp_end.stop_ns
    )
    assert full["orig_bytes"] == tcp_end.counters_orig.bytes
    assert {**fields, "ct_id": tcp_end.ct_id + 1}.items() <= bare.items()
    assert (bare["opened"], bare["duration"], bare["orig_packets"], bare["orig_bytes"]) == (
        None,
        None,
        None,
        None,
    )
    assert bare["closed"] == "2026-11-21T03:12:00.000000Z"  # when we heard of it
    assert bare["reply_bytes"] == tcp_end.counters_reply.bytes
    assert logger.stats.closes == 2


def test_closes_are_counted_and_timed_by_our_clock_without_kernel_timestamps() -> None:
    logger, stream = make_logger()
    now = [100.0]
    logger.monotonic = lambda: now[0]
    tcp_new, _icmp, tcp_end = events()[:3]
    for n in (0, 1, 2, 3):
        logger.handle(tcp_new._replace(ct_id=tcp_new.ct_id + n))
    now[0] = 100.1234567
    logger.handle(tcp_end._replace(ct_id=tcp_new.ct_id, start_ns=None, stop_ns=None))
    logger.handle(tcp_end._replace(ct_id=tcp_new.ct_id + 1, start_ns=None, stop_ns=None))
    logger.handle(tcp_end._replace(ct_id=tcp_new.ct_id + 2))  # with the kernel's: the fast path
    logger.handle(tcp_end._replace(ct_id=tcp_new.ct_id + 3))
    logger.flush()
    closes = [r for r in records(stream) if r["event"] == "close"]
    assert [r["duration"] for r in closes[:2]] == [0.123457, 0.123457]  # to the microsecond
    assert closes[0]["opened"] == "2026-11-21T03:12:00.000000Z"  # when we saw it open
    assert [r["duration"] for r in closes[2:]] == [_seconds(tcp_end.stop_ns - tcp_end.start_ns)] * 2
    assert logger.stats.closes == 4 and logger.tracked == {}
