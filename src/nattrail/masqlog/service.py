"""The daemon's run from start to stop: its parts put together from the settings and the kernel's,
the start-up resync, the signals (stop, reopen the log, stats) and timers (reaping, skip counts,
stats), and the stop that logs what is still queued.
"""

from __future__ import annotations

import asyncio
import signal
import syslog
from collections.abc import Awaitable, Callable

from nattrail import __version__, ctnetlink
from nattrail.jsonlog import JsonLog
from nattrail.masqlog.config import Config
from nattrail.masqlog.daemon import Daemon, Reaping
from nattrail.masqlog.kernel import shortest_timeout, walk_threshold
from nattrail.masqlog.tracker import MasqLogger


def syslog_sink(config: Config) -> Callable[[str], None] | None:
    if not config.syslog:
        return None
    syslog.openlog("nattrail-masqlog", syslog.LOG_PID, syslog.LOG_DAEMON)

    def sink(line: str) -> None:
        syslog.syslog(syslog.LOG_INFO, line)

    return sink


async def every(interval: float, action: Callable[[], Awaitable[None] | None]) -> None:
    while True:
        await asyncio.sleep(interval)
        result = action()
        if result is not None:
            await result


async def run(config: Config, *, log: JsonLog) -> int:
    loop = asyncio.get_running_loop()
    logger = MasqLogger(config, log, sink=syslog_sink(config), first_check=shortest_timeout(config.protocols))
    sock = ctnetlink.event_socket(config.rcvbuf)
    looker = ctnetlink.Lookup()
    daemon = Daemon(
        logger, sock, ctnetlink.dump_table, reaping=Reaping(lookup=looker, walk_above=walk_threshold())
    )
    stop = asyncio.Event()
    handlers: dict[signal.Signals, Callable[[], None]] = {
        signal.SIGTERM: stop.set,
        signal.SIGINT: stop.set,
        signal.SIGHUP: daemon.reopen,
        signal.SIGUSR1: daemon.log_stats,
    }
    for signum, handler in handlers.items():
        loop.add_signal_handler(signum, handler)
    granted = ctnetlink.granted_rcvbuf(sock)
    logger.emit("start", version=__version__, protocols=list(config.protocols), ident=config.ident,
                rcvbuf=granted, reader=daemon.reader.name, first_check=logger.first_check,
                walk_above=daemon.reaping.walk_above)  # fmt: skip
    if granted < config.rcvbuf:
        logger.emit("rcvbuf_capped", "warning", asked=config.rcvbuf, granted=granted)
    logger.flush()
    # Connections that were open before the daemon started (or restarted) are learnt first.
    logger.resync(await loop.run_in_executor(None, daemon.dump))
    logger.flush()
    daemon.arm()
    timers = [
        loop.create_task(every(config.reap_interval, daemon.reap)),
        loop.create_task(every(config.skips_interval, logger.report_skips)),
        loop.create_task(every(config.stats_interval, daemon.log_stats)),
    ]
    try:
        await stop.wait()
    finally:
        daemon.stopped = True
        daemon.disarm()
        daemon.on_readable()  # what is already queued is still logged
        for task in [*timers, *logger.tasks]:
            task.cancel()
        await asyncio.gather(*timers, *logger.tasks, return_exceptions=True)
        logger.report_skips()
        logger.emit("stop", **logger.stats_fields())
        logger.flush()
        sock.close()
        looker.close()
        for signum in handlers:
            loop.remove_signal_handler(signum)
    return 0
