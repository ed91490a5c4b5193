"""The ``nattrail who`` subcommand: its options, where the log is by default, the exit status."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from nattrail import names
from nattrail.who.answer import who
from nattrail.who.logs import WhoError
from nattrail.who.query import Query, canonical_ip, parse_at, parse_port, parse_remote, parse_window
from nattrail.who.report import _filters, _masq, format_human, report_json
from nattrail.who.times import format_time

DEFAULT_LOG = names.MASQ_LOG


def default_log(settings: Path = Path(names.MASQLOG_CONFIG)) -> str:
    """Where the masquerade logger writes, as its settings file says (a router whose nattrail_log_dir
    is elsewhere); the daemon's default when the file is missing or says nothing usable."""
    try:
        log = json.loads(settings.read_text(encoding="utf-8")).get("log")
    except (OSError, ValueError, AttributeError):
        return DEFAULT_LOG
    return log if isinstance(log, str) and log else DEFAULT_LOG


PROTOS: tuple[str, ...] = ("tcp", "udp", "icmp", "any")


def _argtype(parse: Any, what: str) -> Any:  # noqa: ANN401 - wraps parsers of different result types
    """An argparse type whose error names the value (argparse adds the option)."""

    def convert(text: str) -> Any:  # noqa: ANN401
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = what
    return convert


def _value(parse: Callable[[str], object], what: str, metavar: str) -> dict[str, Any]:
    """The settings of an option whose text ``parse`` reads: how it is read, and how --help shows it."""
    return {"type": _argtype(parse, what), "metavar": metavar}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "who",
        help="who used a masquerade port at a given time",
        description="Find the inside host (and ident user) behind a masqueraded connection, from the "
        "masquerade logger's logs (the current file and every rotated one).",
        epilog="A time without an offset is this machine's local time zone; give a remote report's time "
        "with its offset (e.g. '2026-11-21 04:12+01:00') or in UTC with Z.",
    )
    parser.add_argument(
        "--masq-port",
        required=True,
        **_value(parse_port, "port", "PORT"),
        help="the router's translated source port, as the remote side saw it",
    )
    parser.add_argument(
        "--masq-ip",
        **_value(canonical_ip, "IP address", "IP"),
        help="the router's translated source address (default: any)",
    )
    parser.add_argument(
        "--remote",
        **_value(parse_remote, "remote", "IP[:PORT]"),
        help="the remote host (and port) that was contacted",
    )
    parser.add_argument("--proto", choices=PROTOS, default="any", help="protocol (default: any)")
    parser.add_argument(
        "--at",
        required=True,
        **_value(parse_at, "time", "TIME"),
        help="'YYYY-MM-DD HH:MM[:SS]', optionally with Z or +HH:MM (default zone: local), or 'now'",
    )
    parser.add_argument(
        "--window",
        **_value(parse_window, "window", "SPAN"),
        default="5m",
        help="how far around --at to look: 90, 90s, 5m, 2h, 1d (default: 5m)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--log",
        default=None,
        metavar="FILE",
        help=f"current log; rotated files next to it are read too (default: the log {names.MASQLOG_CONFIG} "
        f"names, else {DEFAULT_LOG})",
    )
    parser.set_defaults(func=run)


def _query(args: argparse.Namespace) -> Query:
    remote_ip, remote_port = args.remote if args.remote else (None, None)
    return Query(
        masq_port=args.masq_port,
        at=args.at,
        window=args.window,
        masq_ip=args.masq_ip,
        remote_ip=remote_ip,
        remote_port=remote_port,
        proto=None if args.proto == "any" else args.proto,
    )


def _say(message: str) -> None:
    print(f"nattrail who: {message}", file=sys.stderr)


def run(args: argparse.Namespace, now: datetime | None = None) -> int:
    query = _query(args)
    try:
        result = who(query, Path(args.log or default_log()), now)
    except WhoError as exc:
        _say(f"error: {exc}")
        return 2
    for problem in result.problems:
        _say(f"warning: {problem}")
    if args.json:
        print(json.dumps(report_json(result), indent=2))
    elif result.matches:
        sys.stdout.write(format_human(result))
    if not result.matches:
        if not args.json:
            for warning in result.warnings:
                _say(f"warning: {warning}")
        _say(
            f"no connection through {_masq(query)} ({_filters(query)}) between "
            f"{format_time(query.start)} and {format_time(query.end)}"
        )
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``nattrail who`` on its own: ``argv`` holds the options that follow ``who``."""
    parser = argparse.ArgumentParser(prog="nattrail")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["who", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
