"""`nattrail accounting`: per-network traffic counters of the router, read from nftables.

The nat_router ruleset holds named counters ``acct_<key>_in`` and ``acct_<key>_out`` in ``table inet
nattrail``, each commented with its network's CIDR (or ``other`` for the catch-all). ``save`` snapshots
them so that the role can re-create them with the same values after a reload.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nattrail import names
from nattrail.jsonlog import utc_timestamp

FAMILIES: tuple[str, ...] = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
COUNTER_NAME = re.compile(r"^acct_(?P<key>\w+?)_(?P<direction>in|out)$")
IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
OTHER = "other"
NFT_TIMEOUT = 30.0

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


class AccountingError(Exception):
    pass


class TableMissing(AccountingError):
    pass


@dataclass(frozen=True)
class Counter:
    name: str
    packets: int
    bytes: int
    comment: str | None = None


@dataclass(frozen=True)
class Traffic:
    packets: int
    bytes: int


@dataclass(frozen=True)
class NetworkRow:
    key: str
    network: str
    inbound: Traffic | None
    outbound: Traffic | None


# --- parsing ------------------------------------------------------------------------------------------


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AccountingError(f"{what}: expected a non-negative integer, got {value!r}")
    return value


def parse_nft_json(
    document: str | Mapping[str, Any], family: str, table: str, names: re.Pattern[str] | None = COUNTER_NAME
) -> dict[str, Counter]:
    """Pick the counters of ``family table`` whose names match ``names`` (default: the accounting
    counters; None: every counter) out of ``nft -j list counters`` output."""
    try:
        data = json.loads(document) if isinstance(document, str) else document
    except json.JSONDecodeError as exc:
        raise AccountingError(f"nft printed invalid JSON: {exc}") from None
    items = data.get("nftables") if isinstance(data, Mapping) else None
    if not isinstance(items, list):
        raise AccountingError('nft JSON lacks the top-level "nftables" list')
    counters: dict[str, Counter] = {}
    for item in items:
        counter = item.get("counter") if isinstance(item, Mapping) else None
        if not isinstance(counter, Mapping):
            continue
        name = counter.get("name")
        if counter.get("family") != family or counter.get("table") != table or not isinstance(name, str):
            continue
        if names is not None and not names.match(name):
            continue
        comment = counter.get("comment")
        counters[name] = Counter(
            name=name,
            packets=_count(counter.get("packets"), f"counter {name} packets"),
            bytes=_count(counter.get("bytes"), f"counter {name} bytes"),
            comment=comment if isinstance(comment, str) else None,
        )
    return counters


def parse_saved(document: str | Mapping[str, Any]) -> tuple[str, str | None, dict[str, Counter]]:
    """Read a file written by ``save``; return (table, saved_at, counters)."""
    try:
        data = json.loads(document) if isinstance(document, str) else document
    except json.JSONDecodeError as exc:
        raise AccountingError(f"saved counters are not valid JSON: {exc}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("counters"), Mapping):
        raise AccountingError('saved counters lack the "counters" object')
    table = data.get("table")
    saved_at = data.get("saved_at")
    counters: dict[str, Counter] = {}
    for name, entry in data["counters"].items():
        if not isinstance(entry, Mapping) or not COUNTER_NAME.match(str(name)):
            raise AccountingError(f"saved counter {name!r} is not an accounting counter entry")
        comment = entry.get("comment")
        counters[name] = Counter(
            name=name,
            packets=_count(entry.get("packets"), f"saved counter {name} packets"),
            bytes=_count(entry.get("bytes"), f"saved counter {name} bytes"),
            comment=comment if isinstance(comment, str) else None,
        )
    return (
        table if isinstance(table, str) else "",
        saved_at if isinstance(saved_at, str) else None,
        counters,
    )


def _sort_key(row: NetworkRow) -> tuple[int, int, int, int, str]:
    if OTHER in (row.network, row.key):
        return (2, 0, 0, 0, row.network)
    try:
        net = ipaddress.ip_network(row.network, strict=False)
    except ValueError:
        # A comment that is not a CIDR still gets a stable place: after the networks, before "other".
        return (1, 0, 0, 0, row.network)
    return (0, net.version, int(net.network_address), net.prefixlen, row.network)


def network_rows(counters: Iterable[Counter]) -> list[NetworkRow]:
    """Pair ``acct_<key>_in`` with ``acct_<key>_out``; sort by network, with "other" last."""
    grouped: dict[str, dict[str, Counter]] = {}
    for counter in counters:
        match = COUNTER_NAME.match(counter.name)
        if match:
            grouped.setdefault(match["key"], {})[match["direction"]] = counter
    rows = []
    for key, pair in grouped.items():
        comments = [c.comment for c in (pair.get("in"), pair.get("out")) if c is not None and c.comment]
        rows.append(
            NetworkRow(
                key=key,
                network=comments[0] if comments else key,
                inbound=Traffic(pair["in"].packets, pair["in"].bytes) if "in" in pair else None,
                outbound=Traffic(pair["out"].packets, pair["out"].bytes) if "out" in pair else None,
            )
        )
    return sorted(rows, key=_sort_key)


# --- presentation -------------------------------------------------------------------------------------


def human_bytes(count: int) -> str:
    """1258291 -> '1.2 MiB' (binary units, one decimal)."""
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        # Compare after rounding, or 1073689396 would print as "1024.0 MiB" instead of "1.0 GiB".
        if round(value, 1) < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} EiB"


def _bytes_cell(traffic: Traffic | None) -> str:
    if traffic is None:
        return "-"
    if traffic.bytes < 1024:
        return str(traffic.bytes)
    return f"{traffic.bytes} ({human_bytes(traffic.bytes)})"


def text_table(header: Sequence[str], body: Sequence[Sequence[str]], left: int = 1) -> str:
    """Columns separated by " | ", a rule under the header; the first ``left`` columns (names) are
    aligned left, the rest (counts) right."""
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        return " | ".join(
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [render(header), "-+-".join("-" * width for width in widths)]
    lines.extend(render(cells) for cells in body)
    return "\n".join(lines) + "\n"


def format_table(rows: Sequence[NetworkRow]) -> str:
    header = ("network", "in packets", "in bytes", "out packets", "out bytes")
    body = [
        (
            row.network,
            "-" if row.inbound is None else str(row.inbound.packets),
            _bytes_cell(row.inbound),
            "-" if row.outbound is None else str(row.outbound.packets),
            _bytes_cell(row.outbound),
        )
        for row in rows
    ]
    return text_table(header, body)


def _traffic_json(traffic: Traffic | None) -> dict[str, int] | None:
    return None if traffic is None else {"packets": traffic.packets, "bytes": traffic.bytes}


def report_json(rows: Sequence[NetworkRow], table: str, read_at: str) -> dict[str, Any]:
    return {
        "table": table,
        "read_at": read_at,
        "networks": [
            {
                "network": row.network,
                "key": row.key,
                "in": _traffic_json(row.inbound),
                "out": _traffic_json(row.outbound),
            }
            for row in rows
        ],
    }


def saved_json(counters: Mapping[str, Counter], table: str, saved_at: str) -> dict[str, Any]:
    return {
        "saved_at": saved_at,
        "table": table,
        "counters": {
            name: {"packets": c.packets, "bytes": c.bytes, "comment": c.comment}
            for name, c in sorted(counters.items())
        },
    }


# --- nft and files ------------------------------------------------------------------------------------


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=NFT_TIMEOUT)


def _nft(runner: Runner, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return runner(argv)
    except FileNotFoundError:
        raise AccountingError(f"{argv[0]} not found; is nftables installed?") from None
    except subprocess.TimeoutExpired:
        raise AccountingError(f"{' '.join(argv)} timed out") from None
    except OSError as exc:
        raise AccountingError(f"cannot run {argv[0]}: {exc}") from None


def table_exists(family: str, table: str, runner: Runner = run_command, nft: str = "nft") -> bool:
    result = _nft(runner, [nft, "-j", "list", "tables", family])
    if result.returncode != 0:
        raise AccountingError(f"nft list tables {family} failed: {result.stderr.strip()}")
    try:
        items = json.loads(result.stdout).get("nftables", [])
    except (json.JSONDecodeError, AttributeError) as exc:
        raise AccountingError(f"nft printed invalid JSON: {exc}") from None
    return any(
        isinstance(item, Mapping)
        and isinstance(item.get("table"), Mapping)
        and item["table"].get("family") == family
        and item["table"].get("name") == table
        for item in items
    )


def read_counters(
    family: str,
    table: str,
    runner: Runner = run_command,
    nft: str = "nft",
    names: re.Pattern[str] | None = COUNTER_NAME,
) -> dict[str, Counter]:
    """Counters (see parse_nft_json for ``names``) from the live ruleset. TableMissing if the table is
    absent, AccountingError otherwise."""
    result = _nft(runner, [nft, "-j", "list", "counters", "table", family, table])
    if result.returncode != 0:
        # nft's error text is localised and terse ("No such file or directory"); ask it directly instead.
        if not table_exists(family, table, runner, nft):
            raise TableMissing(f"table {family} {table} does not exist")
        raise AccountingError(f"nft list counters failed: {result.stderr.strip() or result.returncode}")
    return parse_nft_json(result.stdout, family, table, names)


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` so that readers see the old file or the new one, never a part (even after a crash)."""
    directory = path.parent
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    # The rename itself must reach the disk too, or a crash could bring back the old file.
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --- command line -------------------------------------------------------------------------------------


def _identifier(text: str) -> str:
    if not IDENTIFIER.fullmatch(text):
        raise argparse.ArgumentTypeError(f"not an nftables identifier: {text!r}")
    return text


def add_table_options(parser: argparse.ArgumentParser, default: Any) -> None:  # noqa: ANN401
    parser.add_argument(
        "--family", choices=FAMILIES, default=default or names.FAMILY, help=f"table family ({names.FAMILY})"
    )
    parser.add_argument(
        "--table", type=_identifier, default=default or names.TABLE, help=f"table name ({names.TABLE})"
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "accounting",
        help="per-network traffic counters",
        description="Show or save the per-network traffic counters of the router's nftables ruleset.",
        usage="nattrail accounting [-h] [--json] [--from FILE] [--family F] [--table T] [save --output FILE]",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--from", dest="from_file", metavar="FILE", help="read a saved file instead of nft")
    add_table_options(parser, None)
    parser.set_defaults(func=show, nft="nft")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    save_parser = actions.add_parser("save", help="save the counters atomically to a JSON file")
    save_parser.add_argument("--output", required=True, metavar="FILE", help="file to (over)write")
    # SUPPRESS keeps the subparser from overwriting --family/--table given before "save".
    add_table_options(save_parser, argparse.SUPPRESS)
    save_parser.set_defaults(func=save)


def _error(message: str) -> None:
    print(f"nattrail accounting: {message}", file=sys.stderr)


def show(args: argparse.Namespace, runner: Runner = run_command) -> int:
    label = f"{args.family} {args.table}"
    try:
        if args.from_file:
            table, read_at, counters = parse_saved(Path(args.from_file).read_text(encoding="utf-8"))
            label = table or label
            read_at = read_at or utc_timestamp()
        else:
            read_at = utc_timestamp()
            counters = read_counters(args.family, args.table, runner, args.nft)
    except TableMissing as exc:
        _error(f"{exc}; is the nat_router ruleset loaded?")
        return 1
    except AccountingError as exc:
        _error(f"error: {exc}")
        return 1
    except OSError as exc:
        _error(f"error: cannot read {args.from_file}: {exc.strerror}")
        return 1
    rows = network_rows(counters.values())
    if args.json:
        print(json.dumps(report_json(rows, label, read_at), indent=2))
    else:
        sys.stdout.write(format_table(rows))
    return 0


def save(args: argparse.Namespace, runner: Runner = run_command) -> int:
    label = f"{args.family} {args.table}"
    try:
        saved_at = utc_timestamp()
        counters = read_counters(args.family, args.table, runner, args.nft)
    except TableMissing as exc:
        # First install: nothing to carry over yet, and that is not a failure.
        _error(f"{exc}; nothing to save, {args.output} left as it was")
        return 0
    except AccountingError as exc:
        _error(f"error: {exc}")
        return 1
    document = json.dumps(saved_json(counters, label, saved_at), indent=2) + "\n"
    try:
        write_atomic(Path(args.output), document)
    except OSError as exc:
        _error(f"error: cannot write {args.output}: {exc}")
        return 1
    return 0
