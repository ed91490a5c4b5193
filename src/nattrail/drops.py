"""`nattrail drops`: how many packets the router's ruleset dropped or rejected, and why.

The nat_router ruleset counts every reason it drops or rejects a packet in a named counter
``drop_<reason>``, commented with the reason in words. The counters are carried over every reload
like the accounting counters (`nattrail ruleset`), so they count since the first converge.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from nattrail import accounting, names
from nattrail.jsonlog import utc_timestamp

DROP_NAME = re.compile(rf"^{names.DROP_PREFIX}\w+$")


def rows(counters: Iterable[accounting.Counter]) -> list[dict[str, Any]]:
    """One row per reason, most packets first (ties by name, so the order is stable)."""
    ordered = sorted(counters, key=lambda c: (-c.packets, c.name))
    return [
        {"name": c.name, "reason": c.comment or c.name, "packets": c.packets, "bytes": c.bytes}
        for c in ordered
    ]


def format_table(drops: Sequence[dict[str, Any]]) -> str:
    body = [(d["reason"], d["name"], str(d["packets"]), str(d["bytes"])) for d in drops]
    return accounting.text_table(("reason", "counter", "packets", "bytes"), body, left=2)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "drops",
        help="packets dropped or rejected, per reason",
        description="Show the router's drop and reject counters, one per reason, most packets first.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    accounting.add_table_options(parser, None)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace, runner: accounting.Runner = accounting.run_command) -> int:
    read_at = utc_timestamp()
    try:
        counters = accounting.read_counters(args.family, args.table, runner, names=DROP_NAME)
    except accounting.TableMissing as exc:
        print(f"nattrail drops: {exc}; is the nat_router ruleset loaded?", file=sys.stderr)
        return 1
    except accounting.AccountingError as exc:
        print(f"nattrail drops: error: {exc}", file=sys.stderr)
        return 1
    drops = rows(counters.values())
    if args.json:
        print(
            json.dumps({"table": f"{args.family} {args.table}", "read_at": read_at, "drops": drops}, indent=2)
        )
    else:
        sys.stdout.write(format_table(drops))
    return 0
