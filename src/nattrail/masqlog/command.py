"""`nattrail masqlog`: log every masqueraded connection, with the user behind it.

The subcommand: its options, its settings file (or ``--check`` of it), the log opened, the collector
set for a daemon that keeps many objects alive, then the service until a signal stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import sys

from nattrail.masqlog.config import Config, ConfigError, load_config
from nattrail.masqlog.service import run
from nattrail.masqlog.tunables import GC_THRESHOLDS
from nattrail.startup import open_log


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "masqlog",
        help="log masqueraded connections and their users (daemon)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--config", help="JSON settings file (keys as in docs/masq_logger.md)")
    parser.add_argument(
        "--log", help="log file (overrides the config file; default /var/log/nattrail/masq.log)"
    )
    parser.add_argument("--check", action="store_true", help="validate the configuration and exit")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config) if args.config else Config()
    except ConfigError as exc:
        print(f"nattrail masqlog: {exc}", file=sys.stderr)
        return 2
    if args.log:
        config = Config(**{**vars(config), "log": args.log})
    if args.check:
        print(json.dumps(vars(config), sort_keys=True))
        return 0
    log = open_log(config.log, "masqlog", "nattrail masqlog: cannot open {path}: {reason}")
    if log is None:
        return 1
    # Each open connection keeps a few small records alive until it closes, and the collector
    # re-walks them all on a busy router. Start-up objects are frozen out of collections, and the
    # young generation is collected per 10,000 allocations rather than 700; cycles, rare here, are
    # still collected. What each part saves is in docs/benchmarks.md.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    with contextlib.closing(log):
        try:
            return asyncio.run(run(config, log=log))
        except PermissionError as exc:
            print(f"nattrail masqlog: conntrack events need CAP_NET_ADMIN: {exc}", file=sys.stderr)
            return 1
