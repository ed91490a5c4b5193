#!/usr/bin/env python3
"""Benchmark: the Python cost of one event on `nattrail masqlog`'s hot path, without a kernel.

The TCP NEW and DESTROY datagrams captured on the lab router (tests/unit/data/ctnetlink-capture.txt)
are copied N times with other ports and conntrack ids, then timed in this process with the thread's
CPU clock, best of --repeat passes:

- decode: ``ctnetlink.decode_event`` of one datagram;
- open / close: ``MasqLogger.handle`` of the decoded NEW / DESTROY (the record formatted, the
  connection tracked and forgotten; ident on, every query skipped by the per-client rate, as
  nearly all are in the lab benchmark's load);
- batch: ``Daemon.handle_batch`` over batches of 64 datagrams, decode and handle together, and the
  records written to /dev/null.

In the daemon the same code costs more per event than here (its caches are cold after the kernel
and the load ran; see docs/benchmarks.md); this is for comparing two versions of the code, e.g.
this checkout against another one's ``src/``, alternating runs:

  python3 bench/masqlog_hotpath.py
  python3 bench/masqlog_hotpath.py --src /path/to/other/checkout/src

Against a checkout from before masqlog became a package (issue 13), whose names this script no longer
finds, run that checkout's own copy of it instead (the measurement is the same):

  python3 /path/to/other/checkout/bench/masqlog_hotpath.py
"""

from __future__ import annotations

import argparse
import binascii
import gc
import json
import platform
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = ROOT / "tests" / "unit" / "data" / "ctnetlink-capture.txt"
# Offsets in the captured IPv4 TCP events (nlmsghdr, nfgenmsg, then the kernel's fixed layout): the
# original source port, the reply destination port (the masquerader's) and the conntrack id.
ORIG_SPORT, REPLY_DPORT, CT_ID = 60, 120, 128


def captured_tcp() -> tuple[bytes, bytes]:
    """The first TCP NEW and TCP DESTROY datagrams of the capture."""
    found: dict[str, bytes] = {}
    note = ""
    for line in CAPTURE.read_text().splitlines():
        if line.startswith("#"):
            note = line[1:].strip()
        elif line.strip() and note.split()[:2] in (["new", "tcp"], ["destroy", "tcp"]):
            found.setdefault(note.split()[0], binascii.unhexlify(line.strip()))
    return found["new"], found["destroy"]


def variant(datagram: bytes, i: int) -> memoryview:
    data = bytearray(datagram)
    struct.pack_into("!H", data, ORIG_SPORT, 1024 + i)
    struct.pack_into("!H", data, REPLY_DPORT, 1024 + i)
    struct.pack_into("!I", data, CT_ID, 100_000 + i)
    return memoryview(bytes(data))


def best(
    passes: int, items: list[Any], work: Callable[[list[Any]], None], after: Callable[[], None]
) -> float:
    """Lowest thread CPU per item over ``passes`` passes, in microseconds."""
    lowest = float("inf")
    for _ in range(passes):
        start = time.thread_time_ns()
        work(items)
        lowest = min(lowest, (time.thread_time_ns() - start) / len(items) / 1000)
        after()
    return lowest


def measure(count: int, passes: int) -> dict[str, float]:
    from nattrail import ctnetlink  # noqa: PLC0415 - after --src chose the checkout
    from nattrail.jsonlog import JsonLog  # noqa: PLC0415
    from nattrail.masqlog.config import Config  # noqa: PLC0415
    from nattrail.masqlog.daemon import Daemon, Reaping  # noqa: PLC0415
    from nattrail.masqlog.tracker import MasqLogger  # noqa: PLC0415

    new, destroy = captured_tcp()
    news = [variant(new, i) for i in range(count)]
    destroys = [variant(destroy, i) for i in range(count)]
    opened = [ctnetlink.decode_event(v) for v in news]
    closed = [ctnetlink.decode_event(v) for v in destroys]
    assert all(o.ct_id == c.ct_id and o.orig == c.orig for o, c in zip(opened, closed, strict=True))

    sink = open("/dev/null", "w")  # noqa: SIM115 - open for the whole run
    # Ident on, the client's one token spent and none coming back: every open below is skipped by
    # the rate, as nearly all are in the lab's load (a query would need an event loop).
    config = replace(Config(), log="/dev/null", ident_rate=1e-9, ident_burst=1)
    logger = MasqLogger(config, JsonLog(stream=sink, fields={"daemon": "masqlog"}))
    assert logger.limiter.try_acquire(opened[0].orig.src) is None

    class NoSocket:
        size = 0

    daemon = Daemon(logger, None, list, reader=NoSocket(), reaping=Reaping())  # type: ignore[arg-type]

    def reset() -> None:
        logger.pending.clear()
        logger.first_checks.clear()

    def handle_all(events: list[Any]) -> None:
        for event in events:
            logger.handle(event)

    def batches(views: list[memoryview]) -> None:
        for i in range(0, len(views), 64):
            daemon.handle_batch(views[i : i + 64])
            logger.flush()

    decode = ctnetlink.decode_event
    gc.freeze()
    result = {
        "decode_new": best(passes, news, lambda items: [decode(v) for v in items], reset),
        "decode_destroy": best(passes, destroys, lambda items: [decode(v) for v in items], reset),
    }
    open_us = close_us = batch_new = batch_destroy = float("inf")
    for _ in range(passes):
        open_us = min(open_us, best(1, opened, handle_all, lambda: None))
        close_us = min(close_us, best(1, closed, handle_all, reset))
        batch_new = min(batch_new, best(1, news, batches, lambda: None))
        batch_destroy = min(batch_destroy, best(1, destroys, batches, reset))
        assert not logger.tracked, "every connection opened must have been closed"
    result.update(open=open_us, close=close_us, batch_new=batch_new, batch_destroy=batch_destroy)
    return {key: round(value, 2) for key, value in result.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=str(ROOT / "src"), help="the nattrail package's parent directory")
    parser.add_argument("--count", type=int, default=2000, help="connections per pass")
    parser.add_argument("--repeat", type=int, default=100, help="passes; the best is reported")
    args = parser.parse_args()
    sys.path.insert(0, args.src)
    print(json.dumps({"machine": platform.machine(), "python": platform.python_version(), "src": args.src}))
    print(json.dumps({"us_per_event": measure(args.count, args.repeat)}))


if __name__ == "__main__":
    main()
